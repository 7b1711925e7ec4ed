"""The seed's simple CNN example: PBT over the learning rate of a population of CNNs."""

"""A population of CNNs trained as one vmapped, jitted step (see ``train.py``)."""

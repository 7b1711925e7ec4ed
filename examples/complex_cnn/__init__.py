"""The seed's complex CNN example: many hyperparameters evolved against validation loss."""

"""The seed's synthetic example: one worker tunes one hyperparameter of a quadratic online.

Run it with ``python -m examples.synthetic``; the code is in :mod:`examples.synthetic.train`.
"""

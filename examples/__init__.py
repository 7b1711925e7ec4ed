"""Runnable examples of jaxpop; run one with ``python -m examples.<name>`` from the repo root."""

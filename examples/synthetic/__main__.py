"""``python -m examples.synthetic [--steps N] [--seed S] [--no-progress]``."""

from examples.synthetic.train import main

if __name__ == "__main__":
    main()

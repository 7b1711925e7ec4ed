"""``python -m jaxpop report LOGDIR``: the same as the ``jaxpop`` console script."""

import sys

from jaxpop.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())

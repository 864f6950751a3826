"""Entry point of `python -m data_recipes`."""

import sys

from data_recipes.cli import main

if __name__ == "__main__":
    sys.exit(main())

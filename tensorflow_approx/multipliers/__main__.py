"""python -m tensorflow_approx.multipliers: see tensorflow_approx/multipliers/cli.py."""

import sys

from tensorflow_approx.multipliers.cli import main

if __name__ == "__main__":
    sys.exit(main())

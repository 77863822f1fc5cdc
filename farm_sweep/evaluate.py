"""Evaluate an exported model: `python -m farm_sweep.evaluate` (farm_sweep.export.evaluate)."""

import sys

from farm_sweep.export.evaluate import main

if __name__ == "__main__":
    sys.exit(main())

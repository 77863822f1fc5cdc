"""The paper's Table 1: `python -m farm_sweep.table1` (farm_sweep.evaluation.table1)."""

import sys

from farm_sweep.evaluation.table1 import main

if __name__ == "__main__":
    sys.exit(main())

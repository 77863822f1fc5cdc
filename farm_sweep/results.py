"""Print or convert a study's tables: `python -m farm_sweep.results` (farm_sweep.sweep.results_command)."""

import sys

from farm_sweep.sweep.results_command import main

if __name__ == "__main__":
    sys.exit(main())

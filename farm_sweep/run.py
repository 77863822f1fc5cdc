"""Run a study: `python -m farm_sweep.run STUDY.yaml` (farm_sweep.sweep.runner)."""

import sys

from farm_sweep.sweep.runner import main

if __name__ == "__main__":
    sys.exit(main())

"""Train one configuration without Ray: `python -m farm_sweep.train` (farm_sweep.training.loop)."""

import sys

from farm_sweep.training.loop import main

if __name__ == "__main__":
    sys.exit(main())

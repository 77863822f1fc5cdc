"""Run a study: `python -m farm_sweep.run STUDY.yaml` (farm_sweep.sweep.runner)."""

import sys

from farm_sweep.sweep.command_start import before_imports

if __name__ == "__main__":
    before_imports(sys.argv[1:])

from farm_sweep.sweep.runner import main  # noqa: E402 (after the lines above)

if __name__ == "__main__":
    sys.exit(main())

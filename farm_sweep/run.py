"""Run a study: `python -m farm_sweep.run STUDY.yaml` (farm_sweep.sweep.runner)."""

import sys

from farm_sweep.sweep.cluster import keep_embedded_ray_local

if __name__ == "__main__":
    keep_embedded_ray_local(sys.argv[1:])  # before the runner imports Ray

from farm_sweep.sweep.runner import main  # noqa: E402 (after the line above)

if __name__ == "__main__":
    sys.exit(main())

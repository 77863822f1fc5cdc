import sys

from farm_sweep.export.command import main

sys.exit(main())

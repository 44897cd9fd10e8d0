"""``python -m pypit.worker``: the worker process a pool starts."""

import sys

from pypit.worker._runtime import main

sys.exit(main())

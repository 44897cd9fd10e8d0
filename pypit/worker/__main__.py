"""``python -m pypit.worker``: the worker process a pool starts."""

import sys

from pypit.worker._main import main

sys.exit(main())

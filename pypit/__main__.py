"""``python -m pypit``: the command line (see ``pypit._cli``)."""

import sys

from pypit._cli import main

sys.exit(main())

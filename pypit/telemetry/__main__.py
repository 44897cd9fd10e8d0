"""``python -m pypit.telemetry``: print the events page (docs/events.md) from the catalog."""

import sys

from pypit.telemetry._catalog import render_markdown

sys.stdout.write(render_markdown())

"""pypit's loggers.

pypit logs through structlog and never configures logging for the host
application: whatever the application set up with ``structlog.configure()``
(or structlog's defaults) renders pypit's records. Each logger is bound to one
category -- ``pool``, ``worker``, ``rpc`` or ``telemetry`` -- so an
application can route or filter them.
"""

from __future__ import annotations

from typing import Any

import structlog


def get_logger(category: str, **initial_values: Any) -> Any:
    """A structlog logger named ``pypit.<category>`` with ``category`` bound."""
    return structlog.get_logger(f"pypit.{category}", category=category, **initial_values)

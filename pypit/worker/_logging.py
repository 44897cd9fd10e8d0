"""Log levels inside a worker process, changed live by the pool.

``set_worker_level`` in the pool arrives here: the worker's stdlib root
logger and structlog's filtering are set to that level; ``None`` restores
what the worker started with. Workers print their logs to stdout and stderr,
which the pool turns into its own records, so a level changed here shows in
the pool's logs.
"""

from __future__ import annotations

from typing import Any, Final

# The stdlib's numbers; logging itself is imported only when a level is set.
LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "none": 60}

_initial: tuple[int, Any] | None = None
_applied: str | None = None


def apply_level(level: str | None) -> None:
    """Set this worker's log level (``debug`` ... ``none``), or restore it with None."""
    global _initial, _applied
    if level == _applied:
        return
    import logging

    import structlog

    root = logging.getLogger()
    if _initial is None:
        _initial = (root.level, structlog.get_config()["wrapper_class"])
    if level is None:
        root.setLevel(_initial[0])
        structlog.configure(wrapper_class=_initial[1])
    else:
        numeric = LEVELS[level]
        root.setLevel(numeric)
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(numeric))
    _applied = level

"""pypit's loggers.

pypit logs through structlog and never configures logging for the host
application: whatever the application set up with ``structlog.configure()``
(or structlog's defaults) renders pypit's records. Each record carries its
category -- ``pool``, ``worker``, ``rpc`` or ``telemetry`` -- and pypit's own
levels (``log_level`` and ``log_categories`` of ``open_pool``) decide which
records pypit hands to structlog at all. A filtered call costs one comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import structlog

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "none": 100}
CATEGORIES: Final = ("pool", "worker", "rpc", "telemetry")

_default_level = LEVELS["info"]
_thresholds: dict[str, int] = dict.fromkeys(CATEGORIES, _default_level)


def check_level(level: str) -> int:
    try:
        return LEVELS[level]
    except KeyError:
        raise ValueError(f"a log level is one of {', '.join(LEVELS)}, not {level!r}") from None


def set_levels(level: str | None = None, categories: Mapping[str, str] | None = None) -> None:
    """Set pypit's log level, and per-category levels that override it (process-wide)."""
    global _default_level
    if level is not None:
        _default_level = check_level(level)
        for category in CATEGORIES:
            _thresholds[category] = _default_level
    for category, category_level in (categories or {}).items():
        if category not in CATEGORIES:
            raise ValueError(f"a log category is one of {', '.join(CATEGORIES)}, not {category!r}")
        _thresholds[category] = check_level(category_level)


class _Logger:
    """A structlog logger for one category, filtered by pypit's levels first, or by a
    threshold of its own."""

    __slots__ = ("_category", "_initial", "_logger", "_threshold")

    def __init__(
        self, category: str, initial_values: dict[str, Any], threshold: int | None = None
    ) -> None:
        self._category = category
        self._initial = initial_values
        self._threshold = threshold
        self._logger = structlog.get_logger(
            f"pypit.{category}", category=category, **initial_values
        )

    def with_threshold(self, threshold: int | None) -> _Logger:
        """The same logger, filtered at ``threshold`` (None: by pypit's levels)."""
        return _Logger(self._category, self._initial, threshold)

    def _enabled(self, level: int) -> bool:
        threshold = self._threshold
        if threshold is None:
            threshold = _thresholds.get(self._category, _default_level)
        return level >= threshold

    def log(self, level: int, event: str, /, **kw: Any) -> None:
        """Log at a level given as the stdlib's number (a worker's record)."""
        if self._enabled(level):
            if level < 20:
                self._logger.debug(event, **kw)
            elif level < 30:
                self._logger.info(event, **kw)
            elif level < 40:
                self._logger.warning(event, **kw)
            elif level < 50:
                self._logger.error(event, **kw)
            else:
                self._logger.critical(event, **kw)

    def debug(self, event: str, **kw: Any) -> None:
        if self._enabled(10):
            self._logger.debug(event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        if self._enabled(20):
            self._logger.info(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        if self._enabled(30):
            self._logger.warning(event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        if self._enabled(40):
            self._logger.error(event, **kw)


def get_logger(category: str, **initial_values: Any) -> _Logger:
    """A logger named ``pypit.<category>`` with ``category`` bound."""
    return _Logger(category, initial_values)

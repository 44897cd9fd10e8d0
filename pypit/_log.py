"""pypit's loggers.

pypit logs through structlog and never configures logging for the host
application: whatever the application set up with ``structlog.configure()``
(or structlog's defaults) renders pypit's records. Each record carries its
category -- ``pool``, ``worker``, ``rpc`` or ``telemetry`` -- and pypit's own
levels decide which records pypit hands to structlog at all. A filtered call
costs one comparison.

Levels belong to the pool given them (``log_level`` and ``log_categories`` of
``open_pool``, as :class:`Levels`): a pool's loggers carry its name and filter
at its levels, whatever other pools were given. Where a pool was given no
level, and for records that belong to no pool, the process-wide levels of
:func:`set_levels` apply (info by default).
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


def check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"a log category is one of {', '.join(CATEGORIES)}, not {category!r}")


def set_levels(level: str | None = None, categories: Mapping[str, str] | None = None) -> None:
    """Set pypit's process-wide log level, and per-category levels that override it: they
    apply where a pool was given no level of its own."""
    global _default_level
    for category, category_level in (categories or {}).items():
        check_category(category)
        check_level(category_level)
    if level is not None:
        _default_level = check_level(level)
        for category in CATEGORIES:
            _thresholds[category] = _default_level
    for category, category_level in (categories or {}).items():
        _thresholds[category] = check_level(category_level)


class Levels:
    """The levels one pool was given: ``level`` for every category, ``categories`` over it.
    A category given no level follows the process-wide one."""

    __slots__ = ("_thresholds",)

    def __init__(
        self, level: str | None = None, categories: Mapping[str, str] | None = None
    ) -> None:
        default = None if level is None else check_level(level)
        self._thresholds: dict[str, int | None] = dict.fromkeys(CATEGORIES, default)
        for category, category_level in (categories or {}).items():
            check_category(category)
            self._thresholds[category] = check_level(category_level)

    def threshold(self, category: str) -> int | None:
        """The pool's threshold for ``category``; None where it follows the process's."""
        return self._thresholds[category]


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

    def bind(self, **values: Any) -> _Logger:
        """The same logger, with ``values`` in each of its records."""
        return _Logger(self._category, {**self._initial, **values}, self._threshold)

    def with_threshold(self, threshold: int | None) -> _Logger:
        """The same logger, filtered at ``threshold`` (None: at the process-wide levels)."""
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


def get_logger(category: str, levels: Levels | None = None, **initial_values: Any) -> _Logger:
    """A logger named ``pypit.<category>`` with ``category`` bound, filtered at the levels
    of its pool, if it has one, else at the process-wide levels."""
    return _Logger(category, initial_values, None if levels is None else levels.threshold(category))

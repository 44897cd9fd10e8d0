"""pypit's loggers.

pypit logs through structlog and never configures logging for the host
application: whatever the application set up with ``structlog.configure()``
(or structlog's defaults) renders pypit's records. Each record carries its
category -- ``pool``, ``worker``, ``rpc`` or ``telemetry`` -- and pypit's own
levels decide which records pypit hands to structlog at all. A filtered call
costs one comparison.

Levels belong to the pool given them (``log_level`` and ``log_categories`` of
``open_pool``, as :class:`Levels`): a pool's loggers carry its name and filter
at its levels, whatever other pools were given. Records that belong to no pool
(a failing telemetry handler) pass at info and above; the application's
structlog configuration filters further. There is no process-wide level to
change: nothing one part of an application sets can silence another's pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import structlog

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "none": 100}
CATEGORIES: Final = ("pool", "worker", "rpc", "telemetry")

DEFAULT_LEVEL: Final = "info"


def check_level(level: object, option: str = "log_level") -> int:
    """``level``'s number; a one-line error naming ``option`` if it is not a level."""
    if not isinstance(level, str):
        raise TypeError(f"{option} must be one of {', '.join(LEVELS)} (a str), not {level!r}")
    try:
        return LEVELS[level]
    except KeyError:
        raise ValueError(f"{option} must be one of {', '.join(LEVELS)}, not {level!r}") from None


def check_category(category: object) -> None:
    if category not in CATEGORIES:
        raise ValueError(
            f"log_categories' keys must be among {', '.join(CATEGORIES)}, not {category!r}"
        )


class Levels:
    """The levels one pool was given: ``level`` for every category, ``categories`` over it."""

    __slots__ = ("_thresholds",)

    def __init__(
        self, level: str = DEFAULT_LEVEL, categories: Mapping[str, str] | None = None
    ) -> None:
        self._thresholds = dict.fromkeys(CATEGORIES, check_level(level))
        for category, category_level in (categories or {}).items():
            check_category(category)
            self._thresholds[category] = check_level(
                category_level, f"log_categories[{category!r}]"
            )

    def threshold(self, category: str) -> int:
        """The pool's threshold for ``category``."""
        return self._thresholds[category]


class _Logger:
    """A structlog logger for one category, filtered by a threshold first."""

    __slots__ = ("_category", "_initial", "_logger", "_threshold")

    def __init__(
        self, category: str, initial_values: dict[str, Any], threshold: int = LEVELS[DEFAULT_LEVEL]
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

    def with_threshold(self, threshold: int) -> _Logger:
        """The same logger, filtered at ``threshold``."""
        return _Logger(self._category, self._initial, threshold)

    def _enabled(self, level: int) -> bool:
        return level >= self._threshold

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
    of its pool, if it has one, else at info."""
    if levels is None:
        return _Logger(category, initial_values)
    return _Logger(category, initial_values, levels.threshold(category))

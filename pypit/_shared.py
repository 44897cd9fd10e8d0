"""What the pool and its workers both apply to worker events, and the correlation id.

Workers import this module at start-up, so it stays small and imports nothing
heavy: the names of the catalog's ``python.*`` events, the patterns of an
allowlist, the bounds of an event's metadata, and the context variable that
holds the correlation id of the current call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any, Final

MAX_METADATA_KEYS: Final = 32
MAX_KEY_LENGTH: Final = 128
MAX_STRING_LENGTH: Final = 1024
SCALARS: Final = (str, int, float, bool, type(None))

# The python.* events of the catalog, as workers name them (a test keeps
# this in step with pypit.telemetry.CATALOG, which workers do not import).
CATALOG_NAMES: Final = frozenset(
    {
        "call.start",
        "call.stop",
        "call.exception",
        "tool.execution.start",
        "tool.execution.stop",
        "tool.execution.exception",
        "memory.sampled",
        "cpu.sampled",
    }
)

DROP_REASONS: Final = frozenset(
    {"unknown_event", "invalid_measurements", "invalid_metadata", "buffer_full"}
)
"""Why a worker may say it dropped events; it reports nothing else."""

correlation_id_var: ContextVar[str | None] = ContextVar("pypit_correlation_id", default=None)
"""The correlation id of the current context: set by the caller, or by a worker around
each call it serves."""


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` matches one of ``patterns``: exact names, ``"prefix.*"`` or ``"*"``."""
    for pattern in patterns:
        if pattern == "*" or pattern == name:
            return True
        if pattern.endswith(".*") and name.startswith(pattern[:-1]):
            return True
    return False


def check_pattern(option: str, pattern: object) -> None:
    """Refuse what is not a pattern :func:`matches` understands, naming ``option``."""
    if pattern == "*":
        return
    name = pattern.removesuffix(".*") if isinstance(pattern, str) else None
    if name is None or not valid_name(name) or "*" in name:
        raise ValueError(
            f"{option} holds event name patterns: an exact name ('inference.stop'), a "
            f"prefix ending in '.*' ('inference.*') or '*', not {pattern!r}"
        )


def valid_name(name: object) -> bool:
    """Whether ``name`` is a dotted event name: non-empty segments."""
    return isinstance(name, str) and bool(name) and all(name.split("."))


def invalid_metadata(metadata: Mapping[str, Any]) -> bool:
    """Whether metadata breaks the bounds: at most 32 str keys, scalar values, short strings."""
    if len(metadata) > MAX_METADATA_KEYS:
        return True
    for key, value in metadata.items():
        if type(key) is not str or len(key) > MAX_KEY_LENGTH or not isinstance(value, SCALARS):
            return True
        if type(value) is str and len(value) > MAX_STRING_LENGTH:
            return True
    return False

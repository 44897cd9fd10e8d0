"""Checks of arguments shared by the pool, the bus and the metrics.

Each raises the plain ``TypeError`` or ``ValueError`` of misuse, in one line naming the
argument, the value and what it takes (see :mod:`pypit._errors`).
"""

from __future__ import annotations

from typing import Any, Final, Literal, overload

MAX_SECONDS: Final = 1e9
"""The longest duration any option or argument takes, in seconds (about 31 years). Every
place a duration ends up holds it: a thread's wait (``threading.TIMEOUT_MAX`` is about
9.2e9 s), a socket's timeout, and the duration as an int of nanoseconds."""


@overload
def check_seconds(
    name: str, value: Any, *, positive: bool, optional: Literal[False] = False
) -> float: ...


@overload
def check_seconds(
    name: str, value: Any, *, positive: bool, optional: Literal[True]
) -> float | None: ...


@overload
def check_seconds(name: str, value: Any, *, positive: bool, optional: bool) -> float | None: ...


def check_seconds(name: str, value: Any, *, positive: bool, optional: bool = False) -> float | None:
    """``value`` as a float: a number of seconds (any int or float, a subclass such as
    numpy's float64 included, but not a bool) from 0, or above 0 if ``positive``, to
    :data:`MAX_SECONDS`; None too if ``optional``."""
    if value is None and optional:
        return None
    expected = (
        "a number of seconds > 0 and <= 1e9" if positive else "a number of seconds from 0 to 1e9"
    )
    expected += " or None" if optional else ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be {expected}, not {value!r}")
    if not ((value > 0 if positive else value >= 0) and value <= MAX_SECONDS):
        raise ValueError(f"{name} must be {expected}, not {value!r}")
    return float(value)


@overload
def exact_str(name: str, value: Any, *, optional: Literal[False] = False) -> str: ...


@overload
def exact_str(name: str, value: Any, *, optional: Literal[True]) -> str | None: ...


def exact_str(name: str, value: Any, *, optional: bool = False) -> str | None:
    """``value`` as an exact ``str``: a subclass of str (an enum's ``StrEnum`` member, a
    tagged id) is converted, since the wire carries only exact strs; anything else is
    refused. None too if ``optional``."""
    if type(value) is str or (value is None and optional):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    raise TypeError(f"{name} must be a str{' or None' if optional else ''}, not {value!r}")

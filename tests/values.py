"""Values of every kind the wire's rules name, for tests of what travels (kept apart from the
test adapters so that a worker imports these modules only when a test asks for them)."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import pathlib
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import attrs


@dataclasses.dataclass
class Point:
    x: int
    y: int


@attrs.define
class Box:
    size: int


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Mode(enum.StrEnum):
    FAST = "fast"


class Pair(NamedTuple):
    a: int
    b: int


class Text(str):
    """A str subclass, as markupsafe's Markup is."""


class Count(int):
    """An int subclass."""


class Real(float):
    """A float subclass, as numpy's float64 is."""


class Tensor:
    """Stands in for a numpy array or scalar (not installed here): it has ``tolist()``."""

    def tolist(self) -> list[float]:
        return [1.0, 2.0]


WIRE_VALUES: dict[str, Callable[[], Any]] = {
    "dict": lambda: {"a": 1, "b": "two"},
    "list": lambda: [1, "two", 3.0],
    "str": lambda: "text",
    "bytes": lambda: b"\x00\xff",
    "int": lambda: [-(2**63), 0, 2**64 - 1],
    "float": lambda: [1.5, float("inf")],
    "bool": lambda: [True, False],
    "None": lambda: None,
    "nested": lambda: {"rows": [{"id": 1, "tags": ["a"], "blob": b"x"}], "next": None},
    "scalar keys": lambda: {1: "one", 2.5: "two and a half", None: "none", b"k": "bytes"},
    "tuple keys": lambda: {(1, "a"): 1, (2, (3, "b")): 2},
    "tuple": lambda: (1, "two"),
    "tuples within": lambda: {"pairs": [(1, 2), (3, (4, 5))]},
    "bytearray": lambda: bytearray(b"ab"),
    "memoryview": lambda: memoryview(b"ab"),
    "set": lambda: {1, 2},
    "frozenset": lambda: frozenset({1}),
    "set within": lambda: {"ids": [1, {2, 3}]},
    "datetime": lambda: datetime.datetime(2024, 5, 1, 12, 30),
    "aware datetime": lambda: datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC),
    "date": lambda: datetime.date(2024, 5, 1),
    "time": lambda: datetime.time(12, 30),
    "timedelta": lambda: datetime.timedelta(seconds=90),
    "Decimal": lambda: decimal.Decimal("1.10"),
    "UUID": lambda: uuid.UUID(int=1),
    "Path": lambda: pathlib.Path("/tmp/model.bin"),
    "dataclass": lambda: Point(1, 2),
    "attrs class": lambda: Box(3),
    "Enum": lambda: Color.RED,
    "IntEnum": lambda: Level.HIGH,
    "StrEnum": lambda: Mode.FAST,
    "named tuple": lambda: Pair(1, 2),
    "OrderedDict": lambda: collections.OrderedDict(a=1),
    "Counter": lambda: collections.Counter("aab"),
    "str subclass": lambda: Text("text"),
    "int subclass": lambda: Count(1),
    "float subclass": lambda: Real(1.5),
    "numpy-like": lambda: Tensor(),
    "Fraction": lambda: fractions.Fraction(1, 3),
    "complex": lambda: 1j,
    "object": lambda: object(),
    "int over 64 bits": lambda: 2**64,
    "frozenset key": lambda: {frozenset({1}): "a"},
}
"""Values of every kind the wire's rules name (docs/configuration.md, "What travels"), made
by name so that a worker can return them too."""


def typed(value: Any) -> list[Any]:
    """``value`` with the exact type of each part, so that ``==`` tells a tuple from a list
    and ``True`` from ``1``: ``[type name, value]``, a container's items typed in turn."""
    kind = type(value).__name__
    if type(value) is dict:
        return [kind, [[typed(k), typed(v)] for k, v in value.items()]]
    if type(value) is list or type(value) is tuple:
        return [kind, [typed(item) for item in value]]
    return [kind, value]

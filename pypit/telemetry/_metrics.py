"""Metric definitions, with the rules of Elixir's ``Telemetry.Metrics``.

A definition says which event and which measurement feed a metric, how to
convert the value, and which metadata become tags. It holds no data: a
reporter (console, Prometheus) attaches handlers and aggregates.

``"pypit.pool.status.queue_depth"`` means event ``("pypit", "pool",
"status")``, measurement ``"queue_depth"``. ``event_name`` and
``measurement`` may be given explicitly; ``measurement`` may also be a
function of ``(measurements, metadata)``. A counter counts events and ignores
the measurement.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from pypit.telemetry._registry import EventName, Measurements, Metadata, event_name

# Conversion factors to a common base per dimension. "native" is the unit of
# pypit's durations: integer nanoseconds of a monotonic clock.
_TIME: Final = {
    "native": 1,
    "nanosecond": 1,
    "microsecond": 1_000,
    "millisecond": 1_000_000,
    "second": 1_000_000_000,
}
_SIZE: Final = {"byte": 1, "kilobyte": 1_000, "megabyte": 1_000_000, "gigabyte": 1_000_000_000}
_UNITLESS: Final = ("1", "count", "percent", "unit")

MeasurementSpec = str | Callable[[Measurements, Metadata], Any]
TagValues = Callable[[Metadata], Mapping[str, Any]]
Predicate = Callable[[Metadata], bool]
Unit = str | tuple[str, str]


def _factor(unit: str | tuple[str, str] | None) -> float:
    if unit is None or isinstance(unit, str):
        if unit is not None and unit not in _TIME and unit not in _SIZE and unit not in _UNITLESS:
            raise ValueError(f"unknown unit {unit!r}")
        return 1.0
    if not (isinstance(unit, tuple) and len(unit) == 2):
        raise ValueError(f"a unit is a name or a (from, to) pair, not {unit!r}")
    source, target = unit
    for table in (_TIME, _SIZE):
        if source in table and target in table:
            return table[source] / table[target]
    raise ValueError(f"cannot convert {source!r} to {target!r}")


def _buckets(value: Any) -> list[float]:
    """A distribution's bucket bounds: a non-empty list of increasing numbers, none NaN."""
    expected = "a list of increasing numbers (no NaN) such as [0.1, 1, 10]"
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"buckets must be {expected}, not {value!r}")
    bounds = list(value)
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
        raise TypeError(f"buckets must be {expected}, not {value!r}")
    if (
        not bounds
        or any(math.isnan(b) for b in bounds)
        or not all(low < high for low, high in itertools.pairwise(bounds))
    ):
        raise ValueError(f"buckets must be {expected}, not {value!r}")
    return bounds


def unit_name(unit: str | tuple[str, str] | None) -> str | None:
    """The unit the metric's values are in, after conversion."""
    if unit is None:
        return None
    target = unit if isinstance(unit, str) else unit[1]
    return "nanosecond" if target == "native" else target


@attrs.frozen(eq=False)
class Metric:
    """One metric definition. Build it with :func:`counter`, :func:`sum`,
    :func:`last_value`, :func:`summary` or :func:`distribution`."""

    kind: str
    name: tuple[str, ...]
    event_name: EventName
    measurement: MeasurementSpec | None
    tags: tuple[str, ...]
    tag_values: Callable[[Metadata], Mapping[str, Any]] | None
    keep: Callable[[Metadata], bool] | None
    description: str | None
    unit: str | tuple[str, str] | None
    reporter_options: Mapping[str, Any]
    factor: float

    def value(self, measurements: Measurements, metadata: Metadata) -> float | None:
        """The converted value this event contributes, or None when it has none."""
        if self.kind == "counter":
            return 1
        spec = self.measurement
        raw = spec(measurements, metadata) if callable(spec) else measurements.get(spec)  # type: ignore[arg-type]
        if raw is None:
            return None
        value: float = raw * self.factor if self.factor != 1.0 else raw
        return value

    def tag_set(self, metadata: Metadata) -> dict[str, Any]:
        """The tags of this event (after ``tag_values``), each tag present (None if absent)."""
        source = self.tag_values(metadata) if self.tag_values is not None else metadata
        return {tag: source.get(tag) for tag in self.tags}

    def accepts(self, metadata: Metadata) -> bool:
        return self.keep is None or bool(self.keep(metadata))


def _define(
    kind: str,
    name: str | Iterable[str],
    *,
    event_name_: EventName | list[str] | str | None,
    measurement: MeasurementSpec | None,
    tags: Iterable[str],
    tag_values: Callable[[Metadata], Mapping[str, Any]] | None,
    keep: Callable[[Metadata], bool] | None,
    drop: Callable[[Metadata], bool] | None,
    description: str | None,
    unit: str | tuple[str, str] | None,
    reporter_options: Mapping[str, Any] | None,
) -> Metric:
    parts = tuple(name.split(".")) if isinstance(name, str) else tuple(name)
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"a metric name is dot-separated non-empty segments, not {name!r}")
    if event_name_ is None:
        if len(parts) < 2:
            raise ValueError(
                f"metric {'.'.join(parts)!r} needs an event and a measurement (or event_name=...)"
            )
        event = parts[:-1]
    else:
        event = event_name(
            tuple(event_name_.split(".")) if isinstance(event_name_, str) else event_name_
        )
    if measurement is None:
        measurement = parts[-1]
    elif not (isinstance(measurement, str) or callable(measurement)):
        raise TypeError(f"measurement is a key or a function, not {measurement!r}")
    if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
        # A str is iterable, and would become one tag per letter.
        raise TypeError(f"tags must be a list of metadata keys such as ['pool_name'], not {tags!r}")
    given, tags = tags, tuple(tags)
    if not all(isinstance(t, str) and t for t in tags):
        raise TypeError(
            f"tags must be a list of metadata keys such as ['pool_name'], not {given!r}"
        )
    if keep is not None and drop is not None:
        raise ValueError("give keep or drop, not both")
    for function, label in ((tag_values, "tag_values"), (keep, "keep"), (drop, "drop")):
        if function is not None and not callable(function):
            raise TypeError(f"{label} is a function of the metadata, not {function!r}")
    if drop is not None:
        dropping = drop

        def keep(metadata: Metadata) -> bool:
            return not dropping(metadata)

    if reporter_options is not None and not isinstance(reporter_options, Mapping):
        raise TypeError(f"reporter_options must be a mapping, not {reporter_options!r}")
    options = dict(reporter_options or {})
    if kind == "distribution" and options.get("buckets") is not None:
        options["buckets"] = _buckets(options["buckets"])
    return Metric(
        kind=kind,
        name=parts,
        event_name=event,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        description=description,
        unit=unit,
        reporter_options=options,
        factor=_factor(unit),
    )


def counter(
    name: str | Iterable[str],
    *,
    event_name: EventName | list[str] | str | None = None,
    measurement: MeasurementSpec | None = None,
    tags: Iterable[str] = (),
    tag_values: TagValues | None = None,
    keep: Predicate | None = None,
    drop: Predicate | None = None,
    description: str | None = None,
    unit: Unit | None = None,
    reporter_options: Mapping[str, Any] | None = None,
) -> Metric:
    """A counter metric: the number of events (no measurement is read).

    Args:
        name: ``"event.segments.measurement"`` (a str with dots, or its segments):
            ``"pypit.pool.status.queue_depth"`` is event ``("pypit", "pool",
            "status")``, measurement ``"queue_depth"``.
        event_name: the event, when the name does not say it (a tuple, a list
            or a dotted str).
        measurement: the measurement key, or a function ``(measurements,
            metadata) -> value``, when the name does not say it.
        tags: metadata keys that label the metric's values, a list (one str is refused:
            it is not split into letters).
        tag_values: a function ``metadata -> mapping`` the tags are read from.
        keep: a function ``metadata -> bool``: only events it accepts count.
        drop: the opposite of ``keep`` (give one of the two).
        description: a line of text for the reporter.
        unit: the unit the values are in (``"millisecond"``), or a conversion
            ``(from, to)`` such as ``("native", "millisecond")``.
        reporter_options: passed to the reporter.

    Raises:
        TypeError, ValueError: a definition that cannot work.
    """
    return _define(
        "counter",
        name,
        event_name_=event_name,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        description=description,
        unit=unit,
        reporter_options=reporter_options,
    )


def sum(
    name: str | Iterable[str],
    *,
    event_name: EventName | list[str] | str | None = None,
    measurement: MeasurementSpec | None = None,
    tags: Iterable[str] = (),
    tag_values: TagValues | None = None,
    keep: Predicate | None = None,
    drop: Predicate | None = None,
    description: str | None = None,
    unit: Unit | None = None,
    reporter_options: Mapping[str, Any] | None = None,
) -> Metric:
    """A sum metric: the running sum of a measurement.

    Takes the arguments of :func:`counter`.
    """
    return _define(
        "sum",
        name,
        event_name_=event_name,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        description=description,
        unit=unit,
        reporter_options=reporter_options,
    )


def last_value(
    name: str | Iterable[str],
    *,
    event_name: EventName | list[str] | str | None = None,
    measurement: MeasurementSpec | None = None,
    tags: Iterable[str] = (),
    tag_values: TagValues | None = None,
    keep: Predicate | None = None,
    drop: Predicate | None = None,
    description: str | None = None,
    unit: Unit | None = None,
    reporter_options: Mapping[str, Any] | None = None,
) -> Metric:
    """A last-value metric: the last value of a measurement (a gauge).

    Takes the arguments of :func:`counter`.
    """
    return _define(
        "last_value",
        name,
        event_name_=event_name,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        description=description,
        unit=unit,
        reporter_options=reporter_options,
    )


def summary(
    name: str | Iterable[str],
    *,
    event_name: EventName | list[str] | str | None = None,
    measurement: MeasurementSpec | None = None,
    tags: Iterable[str] = (),
    tag_values: TagValues | None = None,
    keep: Predicate | None = None,
    drop: Predicate | None = None,
    description: str | None = None,
    unit: Unit | None = None,
    reporter_options: Mapping[str, Any] | None = None,
) -> Metric:
    """A summary metric: the count and the sum of a measurement.

    Takes the arguments of :func:`counter`.
    """
    return _define(
        "summary",
        name,
        event_name_=event_name,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        description=description,
        unit=unit,
        reporter_options=reporter_options,
    )


def distribution(
    name: str | Iterable[str],
    *,
    event_name: EventName | list[str] | str | None = None,
    measurement: MeasurementSpec | None = None,
    tags: Iterable[str] = (),
    tag_values: TagValues | None = None,
    keep: Predicate | None = None,
    drop: Predicate | None = None,
    description: str | None = None,
    unit: Unit | None = None,
    reporter_options: Mapping[str, Any] | None = None,
) -> Metric:
    """A distribution metric: a histogram of a measurement.

    Takes the arguments of :func:`counter`; the buckets are
    ``reporter_options={"buckets": [...]}``, increasing numbers (no NaN).
    """
    return _define(
        "distribution",
        name,
        event_name_=event_name,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        description=description,
        unit=unit,
        reporter_options=reporter_options,
    )

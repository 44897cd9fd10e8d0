"""What the dashboard keeps between two frames: metric values, recent events, worker samples.

Handlers write here on the emitters' threads; the dashboard's threads read. Nothing
takes a lock: handlers change dictionaries and bounded deques, readers copy them in one
call each (the tail is read whole in one C call). A frame is built from those copies,
off the emitters' threads.

Counters and sums keep running totals, and a frame reports their rate since the
previous frame; last values keep the last value; summaries and distributions keep a
count, a sum and the values since the previous frame (at most :data:`WINDOW` of them,
the latest), from which a frame reports percentiles and, for a distribution, the counts
per bucket.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from pypit.telemetry._metrics import Metric, unit_name
from pypit.telemetry._registry import EventName, Measurements, Metadata

WINDOW: Final = 1024
"""Values of a summary or distribution kept per tag set between two frames (the latest):
enough for percentiles, and little work for the thread that builds the frame."""

MAX_SERIES: Final = 500
"""Tag sets kept per metric: the events of a new tag set beyond them are counted as
dropped, so that a tag of many values (a request id) cannot make the dashboard grow."""

TAIL: Final = 4096
"""Recent events kept for the tail."""

TAIL_SPACING: Final = 0.02
"""Seconds between two events of one name kept for the tail: a name emitted on every call
fills no more than its share of the tail, and costs little more than a clock read."""

PERCENTILES: Final = (50, 90, 99)

# A 1-2-5 sequence over twelve decades: where a distribution says nothing of its buckets.
DEFAULT_BUCKETS: Final = tuple(
    m * 10.0**e for e in range(-3, 9) for m in (1, 2, 5) if m * 10.0**e <= 1e9
)

TagKey = tuple[Any, ...]


def describe(index: int, metric: Metric) -> dict[str, Any]:
    """A definition as the page and the endpoints show it."""
    measurement = metric.measurement
    described: dict[str, Any] = {
        "id": index,
        "name": ".".join(metric.name),
        "kind": metric.kind,
        "event": ".".join(metric.event_name),
        "measurement": measurement if isinstance(measurement, str) else None,
        "unit": unit_name(metric.unit),
        "tags": list(metric.tags),
        "description": metric.description,
    }
    if metric.kind == "distribution":
        described["buckets"] = list(buckets(metric))
    return described


def buckets(metric: Metric) -> tuple[float, ...]:
    given = metric.reporter_options.get("buckets")
    return tuple(given) if given else DEFAULT_BUCKETS


class _Cells:
    """One metric's values, by tag set."""

    __slots__ = ("counts", "dropped", "last", "metric", "sums", "tags", "window")

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.dropped = 0
        """Events not recorded: their tag set was new once :data:`MAX_SERIES` were kept."""
        self.tags: dict[TagKey, dict[str, Any]] = {}
        self.sums: dict[TagKey, float] = {}
        self.counts: dict[TagKey, int] = {}
        self.last: dict[TagKey, float] = {}
        self.window: dict[TagKey, deque[float]] = {}


class MetricStore:
    """The values of the dashboard's metrics, fed by the reporter's handler.

    Each metric records through a function made for it once (:meth:`recorder`), which
    takes no lock: an event costs a few dictionary operations per metric. Readers copy
    each dictionary in one call and drain the windows value by value, so they never see
    one half-changed; two threads emitting the same metric at the same instant may lose
    one update of a counter, which a dashboard can afford.
    """

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.max_series = MAX_SERIES
        self._cells = {metric: _Cells(metric) for metric in metrics}
        self._order = list(self._cells)
        self._previous: dict[Metric, dict[TagKey, float]] = {}
        self._previous_time: float | None = None

    def recorder(self, metric: Metric) -> Callable[[Measurements, Metadata], None]:
        """The function that records one event's contribution to ``metric``.

        A metric's event is recorded on the caller's thread, for every call, so the
        function is made for its metric's shape: the usual one (a measurement by name,
        tags read from the metadata, no filter) takes a few dictionary operations; any
        other goes through :meth:`_general`."""
        cells = self._cells[metric]
        names, spec, factor, kind = metric.tags, metric.measurement, metric.factor, metric.kind
        if metric.keep is not None or metric.tag_values is not None or callable(spec):
            return self._general(metric)
        sums, counts, windows = cells.sums, cells.counts, cells.window
        first = names[0] if len(names) == 1 else None
        general = self._general(metric)
        if kind not in ("counter", "summary", "distribution"):
            return general
        counter = kind == "counter"

        def record(measurements: Measurements, metadata: Metadata) -> None:
            # The tag set, inline: a helper's call would cost as much as the rest.
            if first is not None:
                key: TagKey = (metadata.get(first),)
            elif names:
                key = tuple(map(metadata.get, names))
            else:
                key = ()
            try:
                if counter:
                    sums[key] += 1
                    return
                value = measurements[spec]  # type: ignore[index]
                if factor != 1.0:
                    value *= factor
                sums[key] += value
                counts[key] += 1
                windows[key].append(value)
            except (KeyError, TypeError):
                # A tag set seen first (or that cannot be a key), or no such measurement:
                # the general recording makes room for it, or skips the event.
                general(measurements, metadata)

        return record

    def _general(self, metric: Metric) -> Callable[[Measurements, Metadata], None]:
        """The recording of any metric; it also makes room for a tag set seen first."""
        cells = self._cells[metric]
        names, tag_values, keep = metric.tags, metric.tag_values, metric.keep
        max_series = self.max_series
        spec, factor, kind = metric.measurement, metric.factor, metric.kind
        measure = spec if callable(spec) else None
        tags, sums, counts, last, windows = (
            cells.tags, cells.sums, cells.counts, cells.last, cells.window
        )  # fmt: skip

        def record(measurements: Measurements, metadata: Metadata) -> None:
            if keep is not None and not keep(metadata):
                return
            if kind == "counter":
                value: Any = 1
            else:
                value = measure(measurements, metadata) if measure else measurements.get(spec)  # type: ignore[arg-type]
                if value is None:
                    return
                if factor != 1.0:
                    value *= factor
            source = metadata if tag_values is None else tag_values(metadata)
            key = tuple(map(source.get, names))
            try:
                known = key in tags
            except TypeError:
                # A value that cannot be a key (a list) counts by its text.
                key = tuple(_hashable(value) for value in key)
                known = key in tags
            if not known:
                if len(tags) >= max_series:
                    cells.dropped += 1
                    return
                tags[key] = dict(zip(names, key, strict=True))
            if kind == "last_value":
                last[key] = value
                return
            sums[key] = sums.get(key, 0) + value
            if kind in ("counter", "sum"):
                return
            counts[key] = counts.get(key, 0) + 1
            window = windows.get(key)
            if window is None:
                window = windows[key] = deque(maxlen=WINDOW)
            window.append(value)

        return record

    def dropped(self) -> list[int]:
        """Each metric's events not recorded for want of room for their tag set."""
        return [self._cells[metric].dropped for metric in self._order]

    def totals(self) -> list[list[dict[str, Any]]]:
        """Each metric's values since it started: totals of counters and sums, last values,
        count and sum of summaries and distributions (no rates: see :meth:`frame`)."""
        shown: list[list[dict[str, Any]]] = []
        for metric in self._order:
            cells = self._cells[metric]
            last, sums, counts = dict(cells.last), dict(cells.sums), dict(cells.counts)
            series = []
            for key, tags in dict(cells.tags).items():
                if metric.kind == "last_value":
                    series.append({"tags": tags, "value": last.get(key)})
                elif metric.kind in ("counter", "sum"):
                    series.append({"tags": tags, "total": sums.get(key, 0)})
                else:
                    count, total = counts.get(key, 0), sums.get(key, 0)
                    mean = total / count if count else None
                    series.append({"tags": tags, "count": count, "sum": total, "mean": mean})
            shown.append(series)
        return shown

    def frame(self) -> list[list[dict[str, Any]]]:
        """Each metric's series for one frame: the rate of counters and sums since the
        previous frame (per second), last values, and the percentiles (and bucket counts
        of distributions) of the values since the previous frame."""
        now = time.monotonic()
        elapsed = None if self._previous_time is None else now - self._previous_time
        self._previous_time = now
        taken: list[tuple[Metric, dict[TagKey, dict[str, Any]], dict[TagKey, Any]]] = []
        for metric in self._order:
            cells = self._cells[metric]
            if metric.kind == "last_value":
                values: dict[TagKey, Any] = dict(cells.last)
            elif metric.kind in ("counter", "sum"):
                values = dict(cells.sums)
            else:
                values = {key: _drain(window) for key, window in dict(cells.window).items()}
            taken.append((metric, dict(cells.tags), values))
        shown = []
        for metric, tags, values in taken:
            if metric.kind in ("counter", "sum"):
                previous = self._previous.get(metric, {})
                self._previous[metric] = values
                series = [
                    {
                        "tags": tags[key],
                        "total": total,
                        "value": None
                        if not elapsed
                        else max(0.0, total - previous.get(key, 0)) / elapsed,
                    }
                    for key, total in values.items()
                ]
            elif metric.kind == "last_value":
                series = [{"tags": tags[key], "value": value} for key, value in values.items()]
            else:
                series = [
                    {"tags": tags[key], **_spread(metric, window)} for key, window in values.items()
                ]
            shown.append(series)
        return shown


def _hashable(value: object) -> object:
    try:
        hash(value)
    except TypeError:
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__name__}>"
    return value


def _drain(window: deque[float]) -> list[float]:
    """The values in ``window``, taken out one by one: one appended meanwhile is left for
    the next frame, never lost."""
    values = []
    with contextlib.suppress(IndexError):
        for _ in range(len(window)):
            values.append(window.popleft())
    return values


def _spread(metric: Metric, values: list[float]) -> dict[str, Any]:
    """Percentiles of ``values`` (None each when there are none), and bucket counts for a
    distribution."""
    values.sort()
    count = len(values)
    spread: dict[str, Any] = {"count": count}
    for p in PERCENTILES:
        spread[f"p{p}"] = values[min(count - 1, math.ceil(p / 100 * count) - 1)] if count else None
    spread["max"] = values[-1] if count else None
    spread["mean"] = math.fsum(values) / count if count else None
    if metric.kind == "distribution":
        # The values are sorted: each bucket's count is the distance between two cuts.
        cuts = [0, *(bisect.bisect_right(values, bound) for bound in buckets(metric)), count]
        spread["counts"] = [high - low for low, high in itertools.pairwise(cuts)]
    return spread


class Tail:
    """Recent events, for the tail: at most one per name every :data:`TAIL_SPACING`
    seconds, the latest :data:`TAIL` of them."""

    def __init__(self) -> None:
        self._entries: deque[tuple[int, float, EventName, dict[str, Any], dict[str, Any]]] = deque(
            maxlen=TAIL
        )
        self._due: dict[EventName, float] = {}
        self._sequence = itertools.count(1)

    def record(
        self, event: EventName, measurements: Measurements, metadata: Metadata, config: Any
    ) -> None:
        now = time.monotonic()
        if now < self._due.get(event, 0.0):
            return
        self._due[event] = now + TAIL_SPACING
        # Copies: an emitter may reuse or change its dicts once the dispatch is over.
        self._entries.append(
            (next(self._sequence), time.time(), event, dict(measurements), dict(metadata))
        )

    def since(self, sequence: int, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """The events after ``sequence`` whose dotted name starts with ``prefix``, the
        latest ``limit`` of them, oldest first."""
        chosen: list[dict[str, Any]] = []
        for number, when, event, measurements, metadata in reversed(list(self._entries)):
            if number <= sequence or len(chosen) == limit:
                break
            name = ".".join(event)
            if name.startswith(prefix):
                chosen.append(
                    {
                        "seq": number,
                        "time": when,
                        "name": name,
                        "measurements": measurements,
                        "metadata": metadata,
                    }
                )
        chosen.reverse()
        return chosen


class Samples:
    """The latest memory and CPU sample of each worker, from the workers' samplers."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}

    def record(
        self, event: EventName, measurements: Measurements, metadata: Metadata, config: Any
    ) -> None:
        key = (metadata.get("pool_name"), metadata.get("worker_id"))
        sample = self._latest.get(key)  # type: ignore[arg-type]
        pid = metadata.get("python_pid")
        if sample is None or sample.get("pid") != pid:
            sample = {"pid": pid}
        if event[-2] == "memory":
            sample = {**sample, "rss_bytes": measurements.get("rss_bytes")}
        else:
            sample = {**sample, "cpu_percent": measurements.get("cpu_percent")}
        self._latest[key] = sample  # type: ignore[index]

    def of(self, pool_name: str, worker_id: str, pid: int | None) -> Mapping[str, Any]:
        """The worker's latest sample, if it is of the process in its slot now."""
        sample = self._latest.get((pool_name, worker_id))
        if sample is None or sample.get("pid") != pid:
            return {}
        return sample

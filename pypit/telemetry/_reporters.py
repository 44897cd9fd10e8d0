"""Reporters that turn events into metrics: console, Prometheus; and the poller.

A reporter attaches one handler per event its metrics need. A metric whose
own functions fail (a ``keep`` or ``tag_values`` that raises) is reported in
the log and skipped for that event; the other metrics of the event, and the
reporter's handler, stay in place.
"""

from __future__ import annotations

import itertools
import re
import sys
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import IO, Any, Final

from pypit._checks import check_seconds
from pypit._log import get_logger
from pypit.telemetry._metrics import Metric, unit_name
from pypit.telemetry._registry import EventName, Measurements, Metadata, attach_many, detach

_log = get_logger("telemetry")
_ids = itertools.count(1)


class _Reporter:
    """Attaches a handler to the events of ``metrics`` while started."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        expected = "a list of metric definitions (counter(...), summary(...), ...)"
        if not isinstance(metrics, Iterable):
            raise TypeError(f"a reporter takes {expected}, not {metrics!r}")
        self.metrics = tuple(metrics)
        if not all(isinstance(m, Metric) for m in self.metrics):
            raise TypeError(f"a reporter takes {expected}, not {metrics!r}")
        self._by_event: dict[EventName, list[Metric]] = {}
        for metric in self.metrics:
            self._by_event.setdefault(metric.event_name, []).append(metric)
        self._handler_id = f"pypit.{type(self).__name__}.{next(_ids)}"
        self._started = False

    def start(self) -> None:
        """Create what the metrics need and attach the handler: all of it, or, when a
        step fails, none of it (the error is raised and ``start`` may be called again)."""
        if self._started:
            return
        self._prepare()
        try:
            # A reporter without metrics (a dashboard of pools alone) has nothing to attach.
            if self._by_event:
                attach_many(self._handler_id, list(self._by_event), self._handle)
        except BaseException:
            self._release()
            raise
        self._started = True

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._by_event:
            detach(self._handler_id)
        self._release()

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _prepare(self) -> None:
        """Create what the metrics need before the first event; undo what it did before
        raising."""

    def _release(self) -> None:
        """Undo :meth:`_prepare`."""

    def _handle(
        self, event: EventName, measurements: Measurements, metadata: Metadata, config: Any
    ) -> None:
        for metric in self._by_event.get(event, ()):
            try:
                if not metric.accepts(metadata):
                    continue
                value = metric.value(measurements, metadata)
                if value is None:
                    continue
                self._update(metric, value, metric.tag_set(metadata))
            except Exception as exc:
                _log.error(
                    "metric failed on an event; skipped",
                    metric=".".join(metric.name),
                    event_name=".".join(event),
                    error=repr(exc),
                )

    def _update(self, metric: Metric, value: float, tags: dict[str, Any]) -> None:
        raise NotImplementedError


class ConsoleReporter(_Reporter):
    """Prints every metric update, for development."""

    def __init__(self, metrics: Iterable[Metric], stream: IO[str] | None = None) -> None:
        super().__init__(metrics)
        self._stream = stream

    def _update(self, metric: Metric, value: float, tags: dict[str, Any]) -> None:
        unit = unit_name(metric.unit)
        shown_tags = ", ".join(f"{k}={v}" for k, v in tags.items()) or "-"
        print(
            f"[pypit.metrics] {'.'.join(metric.name)} ({metric.kind}) "
            f"event={'.'.join(metric.event_name)} value={value}{' ' + unit if unit else ''} "
            f"tags: {shown_tags}",
            file=self._stream or sys.stdout,
        )


_INVALID: Final = re.compile(r"[^a-zA-Z0-9_]")
_UNIT_SUFFIX: Final = {
    "nanosecond": "nanoseconds",
    "microsecond": "microseconds",
    "millisecond": "milliseconds",
    "second": "seconds",
    "byte": "bytes",
    "kilobyte": "kilobytes",
    "megabyte": "megabytes",
    "gigabyte": "gigabytes",
    "percent": "percent",
}


def prometheus_name(metric: Metric) -> str:
    """The metric's Prometheus name: segments joined by ``_``, the unit as a suffix.

    Counters drop a final ``count`` segment (prometheus_client adds ``_total``).
    """
    parts = list(metric.name)
    if metric.kind == "counter" and len(parts) > 1 and parts[-1] == "count":
        parts.pop()
    name = _INVALID.sub("_", "_".join(parts))
    suffix = _UNIT_SUFFIX.get(unit_name(metric.unit) or "")
    if suffix and not name.endswith(suffix):
        name = f"{name}_{suffix}"
    return name


class PrometheusReporter(_Reporter):
    """Keeps the metrics in a prometheus_client registry and serves them on ``/metrics``.

    ``registry``: the application's own ``CollectorRegistry`` to register with
    (default: a new one, so nothing else ends up in it). ``port``: serve the
    registry over HTTP on ``address:port`` (0 picks a free port, see
    :attr:`port`); None serves nothing. Needs the ``prometheus`` extra.

    Types: counter and sum become Prometheus counters (``_total``), last_value
    a gauge, summary a summary (``_count`` and ``_sum``), distribution a
    histogram (``reporter_options={"buckets": [...]}``).
    """

    def __init__(
        self,
        metrics: Iterable[Metric],
        *,
        registry: Any = None,
        port: int | None = None,
        address: str = "127.0.0.1",
    ) -> None:
        super().__init__(metrics)
        import prometheus_client

        self._prometheus = prometheus_client
        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        self._requested_port = port
        self._address = address
        self._collectors: dict[Metric, Any] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def _prepare(self) -> None:
        try:
            self._register()
            self._serve()
        except BaseException:
            # A collector of that name already in the application's registry, or
            # the port taken: leave nothing behind, so that the application can
            # fix it and start again.
            self._release()
            raise

    def _register(self) -> None:
        client = self._prometheus
        kinds = {
            "counter": client.Counter,
            "sum": client.Counter,
            "last_value": client.Gauge,
            "summary": client.Summary,
            "distribution": client.Histogram,
        }
        for metric in self.metrics:
            options: dict[str, Any] = {}
            if metric.kind == "distribution" and "buckets" in metric.reporter_options:
                options["buckets"] = metric.reporter_options["buckets"]
            self._collectors[metric] = kinds[metric.kind](
                prometheus_name(metric),
                metric.description or f"{metric.kind} of {'.'.join(metric.name)}",
                labelnames=metric.tags,
                registry=self.registry,
                **options,
            )

    def _serve(self) -> None:
        if self._requested_port is None:
            return
        try:
            self._server, self._thread = self._prometheus.start_http_server(
                self._requested_port, addr=self._address, registry=self.registry
            )
        except OSError as exc:
            where = f"{self._address}:{self._requested_port}"
            message = f"PrometheusReporter cannot serve /metrics on {where}: {exc.strerror or exc}"
            raise (OSError(exc.errno, message) if exc.errno else OSError(message)) from exc
        self.port = self._server.server_address[1]

    def _release(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None
            self.port = None
        for collector in self._collectors.values():
            self.registry.unregister(collector)
        self._collectors.clear()

    def _update(self, metric: Metric, value: float, tags: dict[str, Any]) -> None:
        collector = self._collectors[metric]
        if tags:
            collector = collector.labels(
                **{k: "" if v is None else str(v) for k, v in tags.items()}
            )
        if metric.kind in ("counter", "sum"):
            if value >= 0:
                collector.inc(value)
        elif metric.kind == "last_value":
            collector.set(value)
        else:
            collector.observe(value)


class Poller:
    """Calls measurement functions every ``period`` seconds (above 0, up to 1e9) on a
    background thread.

    Each function usually emits an event (with :func:`~pypit.telemetry.execute`).
    One that raises is removed and logged, as ``telemetry_poller`` does; the
    others go on.
    """

    def __init__(self, measurements: Iterable[Callable[[], object]], period: float = 5.0) -> None:
        expected = "a list of functions without arguments"
        if not isinstance(measurements, Iterable):
            raise TypeError(f"a poller takes {expected}, not {measurements!r}")
        self.measurements = list(measurements)
        if not all(callable(m) for m in self.measurements):
            raise TypeError(f"a poller takes {expected}, not {measurements!r}")
        self.period = check_seconds("period", period, positive=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Run every measurement once, now."""
        for measurement in list(self.measurements):
            try:
                measurement()
            except Exception as exc:
                self.measurements.remove(measurement)
                _log.error(
                    "poller measurement failed and was removed",
                    measurement=getattr(measurement, "__qualname__", repr(measurement)),
                    error=repr(exc),
                )

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pypit-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.poll()

    def __enter__(self) -> Poller:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

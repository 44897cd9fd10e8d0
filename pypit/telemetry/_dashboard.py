"""The dashboard reporter: live charts of the application's metrics, its pools' workers and
a tail of events, served from the application's process (docs/dashboard.md).

Three feeds, each as cheap as it can be when nobody looks:

- the metric definitions, through the reporter's handler, always (as any reporter);
- the workers' memory and CPU samples, always (a few events per worker per sample
  interval);
- the pools the application hands to :meth:`DashboardReporter.watch`, read with
  ``status()`` and ``worker_status()`` on the pool's own event loop, and the tail of
  events, only while a page (or any reader of the stream) is open, or a snapshot was
  asked for in the last few seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import attrs

from pypit._checks import check_seconds
from pypit._log import get_logger
from pypit.telemetry._catalog import CATALOG
from pypit.telemetry._dashboard_http import Feed, Routes, Server, host_port
from pypit.telemetry._dashboard_state import MetricStore, Samples, Tail, describe
from pypit.telemetry._metrics import Metric
from pypit.telemetry._registry import (
    EventName,
    Measurements,
    Metadata,
    attach_many,
    detach,
    list_handlers,
)
from pypit.telemetry._reporters import _Reporter

if TYPE_CHECKING:
    from pypit.pool import Pool, PoolStatus, SyncPool, WorkerStatus

_log = get_logger("telemetry")
_ids = itertools.count(1)

_SAMPLED: Final = [("pypit", "python", "memory", "sampled"), ("pypit", "python", "cpu", "sampled")]
MIN_INTERVAL: Final = 0.05
"""The shortest interval between two frames: twenty a second."""
_ASKED_FOR: Final = 10.0
"""Seconds the pools keep being read after a snapshot was asked for."""
_COUNTERS: Final = ("requests", "completed", "failed", "rejected")
_FREQUENT: Final = (
    ("pypit", "python"),
    ("pypit", "rpc", "call"),
    ("pypit", "rpc", "stream", "message"),
    ("pypit", "pool", "queue"),
)
"""Events emitted for every call: the tail takes them only when they have a listener."""


@attrs.define(eq=False)
class _Watched:
    """One pool handed to the dashboard, and what was last read of it."""

    name: str
    pool: object
    read: Callable[[], tuple[PoolStatus, tuple[WorkerStatus, ...]]]
    blocking: bool
    """A blocking pool is read from the dashboard's threads; an async one by a task on its
    own event loop."""
    status: PoolStatus | None = None
    workers: tuple[WorkerStatus, ...] = ()
    read_at: float = 0.0
    previous: dict[str, Any] = attrs.field(factory=dict)
    rates: dict[Any, float | None] = attrs.field(factory=dict)

    def refresh(self) -> None:
        self.status, self.workers = self.read()
        self.read_at = time.monotonic()


class PoolWatch:
    """A pool shown by the dashboard while this context is entered: ``async with`` for a
    pool from ``open_pool``, ``with`` for one from ``start_pool``."""

    def __init__(self, dashboard: DashboardReporter, pool: Pool | SyncPool) -> None:
        from pypit.pool import Pool, SyncPool

        if not isinstance(pool, Pool | SyncPool):
            raise TypeError(f"the dashboard watches a pool (open_pool, start_pool), not {pool!r}")
        self._dashboard = dashboard
        self._watched = _Watched(
            pool.name,
            pool,
            lambda: (pool.status(), pool.worker_status()),
            blocking=isinstance(pool, SyncPool),
        )
        self._tasks: anyio.abc.TaskGroup | None = None

    def __enter__(self) -> PoolWatch:
        if not self._watched.blocking:
            raise TypeError(
                "a pool from open_pool is watched with `async with dashboard.watch(pool)`"
            )
        self._show()
        return self

    def _show(self) -> None:
        """Add the pool to the dashboard, read at once (nothing is added if the read
        fails)."""
        self._dashboard._add(self._watched)
        try:
            self._watched.refresh()
        except BaseException:
            self._dashboard._remove(self._watched)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._dashboard._remove(self._watched)

    async def __aenter__(self) -> PoolWatch:
        if self._watched.blocking:
            raise TypeError("a pool from start_pool is watched with `with dashboard.watch(pool)`")
        self._show()
        tasks = anyio.create_task_group()
        await tasks.__aenter__()
        tasks.start_soon(self._read_periodically)
        self._tasks = tasks
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tasks is not None
        try:
            self._tasks.cancel_scope.cancel()
            await self._tasks.__aexit__(None, None, None)
        finally:
            self._tasks = None
            self._dashboard._remove(self._watched)

    async def _read_periodically(self) -> None:
        """Read the pool on its loop each interval while someone looks."""
        while True:
            await anyio.sleep(self._dashboard.interval)
            if self._dashboard.looked_at():
                self._watched.refresh()


class DashboardReporter(_Reporter):
    """Serves a live dashboard of ``metrics``, of the pools handed to :meth:`watch` and of
    recent events, on ``http://address:port/``.

    The page draws one chart per definition, as Phoenix LiveDashboard does for its kind
    (counter and sum: the rate per second; last_value: the value; summary: percentiles;
    distribution: a histogram), one line per tag set, in the definition's unit; a table
    of each watched pool's workers, its queue and a tail of recent events.
    ``/api/snapshot`` and ``/api/stream`` (server-sent events) give the same data to other
    tools. Every asset is in the package: the page loads nothing from elsewhere.

    ``address`` is ``127.0.0.1`` unless given: the page shows metadata of events and the
    pool's state to whoever reaches the port, with no authentication. ``port=0`` picks a
    free port (see :attr:`port` and :attr:`url`); an IPv6 address (``"::1"``) is served
    over IPv6. ``interval`` is the seconds between two frames of the stream, at least
    :data:`MIN_INTERVAL`.

    With no page open, it costs the application its metric handlers and a read of each
    watched pool's state per interval skipped at the cost of a clock read.
    """

    def __init__(
        self,
        metrics: Iterable[Metric] = (),
        *,
        port: int = 9569,
        address: str = "127.0.0.1",
        interval: float = 1.0,
    ) -> None:
        super().__init__(metrics)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, not {port!r}")
        if not isinstance(address, str) or not address:
            raise TypeError(f"address must be a host name or an IP address, not {address!r}")
        self.interval = check_seconds("interval", interval, positive=True)
        if self.interval < MIN_INTERVAL:
            raise ValueError(
                f"interval must be at least {MIN_INTERVAL} seconds (twenty frames a "
                f"second), not {interval!r}"
            )
        self._requested_port = port
        self._address = address
        self._store = MetricStore(self.metrics)
        self._recorders = {
            event: [(metric, self._store.recorder(metric)) for metric in metrics]
            for event, metrics in self._by_event.items()
        }
        self._tail = Tail()
        self._samples = Samples()
        self._pools: list[_Watched] = []
        self._pools_lock = threading.Lock()
        self._asked_at = -_ASKED_FOR
        number = next(_ids)
        self._tail_id = f"pypit.DashboardReporter.{number}.tail"
        self._samples_id = f"pypit.DashboardReporter.{number}.samples"
        self._feed: Feed | None = None
        self._server: Server | None = None
        self.port: int | None = None

    @property
    def url(self) -> str | None:
        """The page's address while started (None before)."""
        if self.port is None:
            return None
        return f"http://{host_port(self._address, self.port)}/"

    def watch(self, pool: Pool | SyncPool) -> PoolWatch:
        """Show ``pool`` (its status, its workers) while the returned context is entered.

        ``async with dashboard.watch(pool):`` for a pool from ``open_pool``, on the pool's
        event loop; ``with dashboard.watch(pool):`` for one from ``start_pool``.
        """
        return PoolWatch(self, pool)

    def looked_at(self) -> bool:
        """Whether a page or a stream is open, or a snapshot was asked for lately."""
        feed = self._feed
        open_streams = feed is not None and feed.open_streams > 0
        return open_streams or time.monotonic() - self._asked_at < _ASKED_FOR

    # -- the reporter --------------------------------------------------------------------

    def _prepare(self) -> None:
        feed = Feed(self._frame, self.interval, self._tail_on, self._tail_off)
        routes = Routes(feed, self._tail, self._snapshot, self._hello)
        self._server = Server(routes, self._address, self._requested_port)
        self._feed = feed
        self.port = self._server.port
        try:
            attach_many(self._samples_id, _SAMPLED, self._samples.record)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._feed is not None:
            self._feed.close()
        if self._server is not None:
            self._server.close()
        self._feed = self._server = None
        self.port = None
        for handler_id in (self._samples_id, self._tail_id):
            with contextlib.suppress(LookupError):
                detach(handler_id)

    def _handle(
        self, event: EventName, measurements: Measurements, metadata: Metadata, config: Any
    ) -> None:
        # The reporters' loop, with each metric's recording made once, at construction.
        for metric, record in self._recorders.get(event, ()):
            try:
                record(measurements, metadata)
            except Exception as exc:
                _log.error(
                    "metric failed on an event; skipped",
                    metric=".".join(metric.name),
                    event_name=".".join(event),
                    error=repr(exc),
                )

    def _tail_on(self) -> None:
        attach_many(self._tail_id, self._tail_events(), self._tail.record)

    def _tail_events(self) -> list[EventName]:
        """The events of the catalog and the metrics' own, except those emitted for every
        call (or shipped from the workers) that nobody listens to yet: their emitters
        build them only for a listener, and a page open must not make every call cost
        more."""
        listened = {handler.event_name for handler in list_handlers()}
        names = [spec.name for spec in CATALOG] + list(self._by_event)

        def frequent(name: EventName) -> bool:
            return any(name[: len(prefix)] == prefix for prefix in _FREQUENT)

        return [name for name in dict.fromkeys(names) if name in listened or not frequent(name)]

    def _tail_off(self) -> None:
        with contextlib.suppress(LookupError):
            detach(self._tail_id)

    # -- pools ---------------------------------------------------------------------------

    def _add(self, watched: _Watched) -> None:
        with self._pools_lock:
            if any(w.pool is watched.pool for w in self._pools):
                raise ValueError(f"the dashboard already watches the pool {watched.name!r}")
            self._pools = [*self._pools, watched]

    def _remove(self, watched: _Watched) -> None:
        with self._pools_lock:
            self._pools = [w for w in self._pools if w is not watched]

    def _read_blocking_pools(self) -> list[_Watched]:
        pools = self._pools
        for watched in pools:
            if watched.blocking:
                try:
                    watched.refresh()
                except Exception as exc:
                    _log.warning("the dashboard could not read a pool", pool_name=watched.name,
                                 error=repr(exc))  # fmt: skip
        return pools

    def _pool_view(self, watched: _Watched, *, rates: bool) -> dict[str, Any] | None:
        status = watched.status
        if status is None:
            return None
        if rates:
            self._rates(watched)
        workers = []
        for worker in watched.workers:
            row = attrs.asdict(worker)
            sample = self._samples.of(worker.pool_name, worker.worker_id, worker.pid)
            row["rss_bytes"] = sample.get("rss_bytes")
            row["cpu_percent"] = sample.get("cpu_percent")
            if rates:
                row["calls_per_s"] = watched.rates.get((worker.worker_id, worker.pid))
            workers.append(row)
        view: dict[str, Any] = {
            "name": watched.name,
            "status": attrs.asdict(status),
            "saturation": status.queue_depth / status.max_queue_size
            if status.max_queue_size
            else None,
            "workers": workers,
        }
        if rates:
            view["rates"] = {name: watched.rates.get(name) for name in _COUNTERS}
        return view

    def _rates(self, watched: _Watched) -> None:
        """The pool's and its workers' calls per second between its last two reads (kept
        until it is read again)."""
        status, previous = watched.status, watched.previous
        if status is None or watched.read_at == previous.get("at"):
            return
        counters = {name: getattr(status, name) for name in _COUNTERS}
        calls = {(w.worker_id, w.pid): w.calls for w in watched.workers}
        rates: dict[Any, float | None] = {}
        if previous:
            elapsed = watched.read_at - previous["at"]
            for name, value in counters.items():
                rates[name] = max(0, value - previous["counters"][name]) / elapsed
            for key, value in calls.items():
                before = previous["calls"].get(key)
                rates[key] = None if before is None else max(0, value - before) / elapsed
        watched.rates = rates
        watched.previous = {"at": watched.read_at, "counters": counters, "calls": calls}

    # -- what the endpoints serve --------------------------------------------------------

    def _definitions(self) -> list[dict[str, Any]]:
        return [describe(index, metric) for index, metric in enumerate(self.metrics)]

    def _hello(self) -> dict[str, Any]:
        return {
            "version": 1,
            "interval": self.interval,
            "max_series": self._store.max_series,
            "metrics": self._definitions(),
        }

    def _frame(self) -> dict[str, Any]:
        pools = self._read_blocking_pools()
        views = [self._pool_view(watched, rates=True) for watched in pools]
        return {
            "time": time.time(),
            "metrics": self._store.frame(),
            "dropped": self._store.dropped(),
            "pools": [view for view in views if view is not None],
        }

    def _snapshot(self, prefix: str) -> dict[str, Any]:
        self._asked_at = time.monotonic()
        # An async pool is read on its own loop: the snapshot holds its latest read, at
        # once, and its loop reads it each interval from now on.
        pools = self._read_blocking_pools()
        definitions = self._definitions()
        for definition, series, dropped in zip(
            definitions, self._store.totals(), self._store.dropped(), strict=True
        ):
            definition["series"] = series
            definition["dropped"] = dropped
        views = [self._pool_view(watched, rates=False) for watched in pools]
        return {
            "version": 1,
            "time": time.time(),
            "interval": self.interval,
            "metrics": definitions,
            "pools": [view for view in views if view is not None],
            "events": self._tail.since(0, prefix),
        }

"""The pool: worker slots, the queue, calls, streams, status and shutdown.

Everything here runs on one event loop, so the scheduler needs no locks: a
worker's ``in_flight`` and the queue change only between awaits. A call is
encoded once (a :class:`~pypit.pool._worker.Request`) and goes to a worker
directly when one has a free slot and nobody is queued. Otherwise it waits:
calls of a command known to be quick may wait in a busy worker (prefetch),
the others in a FIFO queue, and whoever frees capacity -- usually the answer
of another call -- sends the first queued request on its behalf, so its
caller wakes only once, with the result. Wherever it waits, a call counts as
queued until it starts. A caller that is cancelled takes its request out of
the queue at once, or has its worker drop it, and the dispatcher skips a
request whose queue deadline has passed: none of these ever runs.

The second half of the class supervises the workers: one task per slot
spawns, hand-shakes, watches and replaces its worker (see docs/supervision.md).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import anyio
import anyio.abc
import attrs

from pypit import _wire
from pypit._errors import (
    PoolClosedError,
    PoolDegradedError,
    PoolSaturatedError,
    ProtocolError,
    QueueTimeoutError,
    SessionUnavailableError,
    UnknownCommandError,
    WorkerCrashedError,
    WorkerStartError,
    WorkerTimeoutError,
)
from pypit._log import check_level, get_logger, set_levels
from pypit.pool._channel import Connection, Server, signal_factory
from pypit.pool._config import PoolConfig
from pypit.pool._stream import Stream
from pypit.pool._worker import Request, WorkerHandle, crash_error
from pypit.telemetry import _registry
from pypit.telemetry._registry import _dispatch, execute, has_handlers
from pypit.worker._telemetry import (
    CATALOG_NAMES,
    correlation_id_var,
    invalid_metadata,
    matches,
    valid_name,
)

_log = get_logger("pool")
_NODE: Final = socket.gethostname()
_request_ids = itertools.count(1)

INITIALIZED: Final = ("pypit", "pool", "initialized")
STATUS: Final = ("pypit", "pool", "status")
ENQUEUED: Final = ("pypit", "pool", "queue", "enqueued")
DEQUEUED: Final = ("pypit", "pool", "queue", "dequeued")
QUEUE_TIMEOUT: Final = ("pypit", "pool", "queue", "timeout")
SATURATED: Final = ("pypit", "pool", "saturated")
SPAWN_STARTED: Final = ("pypit", "pool", "worker", "spawn_started")
SPAWNED: Final = ("pypit", "pool", "worker", "spawned")
SPAWN_FAILED: Final = ("pypit", "pool", "worker", "spawn_failed")
TERMINATED: Final = ("pypit", "pool", "worker", "terminated")
RESTARTED: Final = ("pypit", "pool", "worker", "restarted")
RECYCLED: Final = ("pypit", "pool", "worker", "recycled")
RECONNECTED: Final = ("pypit", "rpc", "connection", "reconnected")
DROPPED: Final = ("pypit", "telemetry", "dropped")
_EXIT_GRACE: Final = 0.2
# How long a caller whose call waits in a worker waits for the worker to confirm that it
# dropped the call, when the call's deadline passed or its caller was cancelled: the
# confirmation takes a round trip.
_WITHDRAW_GRACE: Final = 0.25
CALL_START: Final = ("pypit", "rpc", "call", "start")
CALL_STOP: Final = ("pypit", "rpc", "call", "stop")
CALL_EXCEPTION: Final = ("pypit", "rpc", "call", "exception")


@attrs.frozen
class ToolDescription:
    """A tool the workers serve, as they reported it."""

    name: str
    description: str
    stream: bool


@attrs.frozen
class PoolStatus:
    """A snapshot of a pool, from :meth:`Pool.status`.

    ``available_workers`` are ready and idle, ``busy_workers`` ready with at
    least one call in flight; together they are ``total_workers``. ``in_flight``
    counts the calls running in workers, ``queue_depth`` the calls accepted and
    not started, wherever they wait (the pool's queue, or a worker that will run
    them next); a call is in one or the other.
    """

    pool_name: str
    queue_depth: int
    available_workers: int
    busy_workers: int
    total_workers: int
    in_flight: int
    max_queue_size: int
    size: int
    closed: bool
    degraded: bool
    requests: int
    completed: int
    failed: int
    rejected: int
    queue_timeouts: int
    timeouts: int
    crashes: int
    restarts: int


@attrs.define(eq=False)
class _Slot:
    """One place in the pool, kept across the workers that fill it."""

    index: int
    worker_id: str
    restarts: int = 0
    recent: deque[float] = attrs.field(factory=deque)
    down: bool = False
    failed_starts: int = 0
    previous_pid: int | None = None
    lost_at: int = 0
    lost_reason: str = ""


@attrs.define(eq=False)
class _Session:
    slot: int
    worker_pid: int
    calls: int = 1
    rehomed: int = 0


@attrs.frozen
class SessionInfo:
    """Where a session lives, from :meth:`Pool.session`."""

    session_id: str
    worker_id: str
    worker_pid: int
    calls: int
    rehomed: int


class _Greeting:
    __slots__ = ("arrived", "connection")

    def __init__(self) -> None:
        self.arrived = anyio.Event()
        self.connection: Connection | None = None


class TraceHook(Protocol):
    """What a tracing bridge needs from the pool (see pypit.telemetry.otel)."""

    def capture(self, request_id: int) -> None:
        """Called in the caller's context when the call is made."""

    def inject(self, request_id: int) -> dict[str, str] | None:
        """Called once ``rpc.call.start`` was emitted: headers to send to the worker."""


trace_hook: TraceHook | None = None
"""The installed tracing bridge, if any."""


# A correlation id is this process's random prefix and a counter: unique across
# processes and restarts, and a tenth of the cost of fresh random bytes per call.
_correlation_prefix = secrets.token_hex(6)
_correlation_counter = itertools.count(1)


def _new_correlation_id() -> str:
    return f"{_correlation_prefix}-{next(_correlation_counter):x}"


class Pool:
    """A pool of worker processes serving one adapter. Open it with :func:`open_pool`."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.name = config.name
        self._workers: list[WorkerHandle | None] = [None] * config.size
        self._queue: deque[Request] = deque()
        self._tools: dict[str, ToolDescription] = {}
        self._expected: dict[str, _Greeting] = {}
        self._reconnecting: dict[str, WorkerHandle] = {}
        self._closed = False
        self._rotation = 0
        self._generation = -1
        self._listened: list[str] = []
        self._seq = 0
        self._telemetry_settings: dict[str, Any] = {
            "enabled": True,
            "sampling_rate": 1.0,
            "allow": tuple(config.telemetry_allow),
            "deny": (),
        }
        self._worker_settings: dict[str, dict[str, Any]] = {}
        self._allowed: dict[tuple[str, str], bool] = {}
        self._started = 0
        self._startup_reports = 0
        self._startup_done = anyio.Event()
        self._slots = [_Slot(i, f"{config.name}_worker_{i + 1}") for i in range(config.size)]
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._targeted = 0  # queued requests that wait for one worker (strict affinity)
        # What each command costs a worker (ns, moving average of its own time): only
        # commands known to be quick are prefetched.
        self._cost: dict[str, float] = {}
        self._quick_below = int(config.prefetch_below * 1e9)
        self._counters = dict.fromkeys(
            (
                "requests",
                "completed",
                "failed",
                "rejected",
                "queue_timeouts",
                "timeouts",
                "crashes",
            ),
            0,
        )
        self._directory = ""
        self._socket_path = ""
        self._task_group: anyio.abc.TaskGroup | None = None
        self._signal: Callable[[], Any] = anyio.Event

    # -- public API --------------------------------------------------------------

    async def execute(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
        affinity: str | None = None,
        idempotent: bool = False,
    ) -> Any:
        """Run ``command`` on a worker and return its result.

        ``args``: a dict is passed as keyword arguments, ``None`` as none,
        anything else as one positional argument; values must be msgpack
        types. ``timeout`` bounds the whole call, queueing included.
        ``session_id`` routes the call to the worker that served the session
        last, as ``affinity`` (default: the pool's) says. ``idempotent=True``
        allows one retry on another worker if the worker crashes with the
        call in flight; other calls never run twice.

        Raises:
            UnknownCommandError: no tool of that name (before anything is sent).
            PoolSaturatedError: the queue is full.
            QueueTimeoutError: no worker came free in time; the call never ran.
            WorkerTimeoutError: the worker did not answer in time.
            WorkerCrashedError: the worker died with the call in flight.
            ToolError: the tool raised; it carries the remote traceback.
            SerializationError, FrameTooLargeError: arguments or result cannot travel.
            PoolClosedError: the pool is closing.
            PoolDegradedError: every worker is down after too many restarts.
            SessionUnavailableError: ``strict_fail_fast`` and the session's worker is busy.
        """
        request = self._request(command, args, timeout, session_id, correlation_id, stream=False)
        if not idempotent:
            return await self._call(request, affinity, None)
        try:
            return await self._call(request, affinity, None)
        except WorkerCrashedError as crash:
            _log.warning(
                "retrying an idempotent call on another worker after a crash",
                pool_name=self.name,
                command=command,
                worker_id=crash.worker_id,
            )
            retry = self._request(
                command, args, None, session_id, request.correlation_id, stream=False
            )
            retry.deadline = retry.queue_deadline = request.deadline
            return await self._call(retry, affinity, crash.worker_id)

    async def _call(self, request: Request, affinity: str | None, avoid: str | None) -> Any:
        self._submit(request, affinity or self.config.affinity, avoid)
        try:
            await self._wait(request)
        except BaseException as exc:
            self._abandon(request)
            self._failed(request, exc)
            if request.withdrawn:
                # It waited in its worker: resume the caller once the worker dropped it
                # (or, if a slot freed before the cancel arrived, started it).
                with anyio.move_on_after(_WITHDRAW_GRACE, shield=True):
                    await request.done.wait()
            raise
        if not request.done.is_set():
            self._abandon(request)
            error = self._timed_out(request)
            self._failed(request, error)
            raise error
        if request.error is not None:
            if isinstance(request.error, QueueTimeoutError):
                # Its worker dropped it before it started: the pool closed, or the call
                # waited too long.
                request.error = (
                    PoolClosedError(f"pool {self.name!r} closed while the call was queued")
                    if self._closed
                    else self._queue_timeout(request)
                )
            self._failed(request, request.error)
            raise request.error
        self._counters["completed"] += 1
        if request.started and (entries := _registry._table.get(CALL_STOP)):
            now = time.monotonic_ns()
            _dispatch(
                entries,
                CALL_STOP,
                {
                    "duration": now - request.started,
                    "monotonic_time": now,
                    "request_bytes": len(request.frame),
                    "response_bytes": request.size,
                },
                request.metadata,
            )
        return request.value

    async def _wait(self, request: Request) -> None:
        """Wait for the answer while the call's deadlines allow.

        A call waiting for a worker has its queue deadline; once it runs, its
        deadline. A call waiting inside a worker (prefetched) is withdrawn when
        its queue deadline passes: the worker drops it and says so, unless it
        started meanwhile, and then the call runs on to its deadline.
        """
        waiting = request.worker is None or request.prefetched
        deadline = request.queue_deadline if waiting else request.deadline
        if deadline == math.inf:
            await request.done.wait()
            return
        with anyio.CancelScope(deadline=deadline) as scope:
            request.scope = scope
            await request.done.wait()
        request.scope = None
        worker = request.worker
        if request.done.is_set() or worker is None or not request.prefetched:
            return
        if worker.waiting(request):
            worker.cancel(request.request_id, if_waiting=True)
            deadline = max(request.deadline, anyio.current_time() + _WITHDRAW_GRACE)
        elif request.deadline > deadline:
            deadline = request.deadline
        else:
            return
        with anyio.CancelScope(deadline=deadline):
            await request.done.wait()

    def stream(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Stream:
        """The chunks a generator tool yields, as a :class:`~pypit.pool.Stream`::

            async with pool.stream("generate", {"prompt": "hi"}) as chunks:
                async for chunk in chunks:
                    ...

        The call is sent when the block starts. Leaving the block, however, cancels the
        generator in the worker at once; iterating without ``async with`` raises
        ``TypeError``. ``timeout`` bounds the wait for a worker and then each wait for a
        chunk. The worker runs at most ``stream_window`` chunks ahead of the consumer.
        """
        return Stream(
            self,
            command,
            args,
            timeout=timeout,
            session_id=session_id,
            correlation_id=correlation_id,
        )

    def status(self) -> PoolStatus:
        """A snapshot of the queue, the workers and the counters."""
        ready = [w for w in self._workers if w is not None and w.accepting]
        busy = sum(1 for w in ready if w.in_flight)
        return PoolStatus(
            pool_name=self.name,
            queue_depth=self._queue_depth(),
            available_workers=len(ready) - busy,
            busy_workers=busy,
            total_workers=len(ready),
            in_flight=sum(
                min(w.in_flight, w.max_concurrency) for w in self._workers if w is not None
            ),
            max_queue_size=self.config.max_queue_size,
            size=self.config.size,
            closed=self._closed,
            restarts=sum(slot.restarts for slot in self._slots),
            degraded=any(slot.down for slot in self._slots),
            **self._counters,
        )

    def emit_status(self) -> None:
        """Emit ``("pypit", "pool", "status")`` now."""
        if not has_handlers(STATUS):
            return
        status = self.status()
        execute(
            STATUS,
            {
                "queue_depth": status.queue_depth,
                "available_workers": status.available_workers,
                "busy_workers": status.busy_workers,
                "total_workers": status.total_workers,
                "in_flight": status.in_flight,
            },
            {"pool_name": self.name},
        )

    def tools(self) -> dict[str, ToolDescription]:
        """The tools the workers reported, by name."""
        return dict(self._tools)

    def workers(self) -> dict[str, int]:
        """The workers serving now (started and not stopping): worker id to process id."""
        return {w.worker_id: w.pid for w in self._workers if w is not None and w.accepting}

    # -- scheduling --------------------------------------------------------------

    def _check(self, command: str, *, stream: bool) -> None:
        if self._closed:
            raise PoolClosedError(f"pool {self.name!r} is closed")
        tool = self._tools.get(command)
        if tool is None:
            raise UnknownCommandError(command, tuple(sorted(self._tools)))
        if tool.stream != stream:
            how = "pool.stream()" if tool.stream else "pool.execute()"
            raise TypeError(f"{command!r} is a {'stream' if tool.stream else 'call'}; use {how}")

    def _request(
        self,
        command: str,
        args: Any,
        timeout: float | None,
        session_id: str | None,
        correlation_id: str | None,
        *,
        stream: bool,
    ) -> Request:
        """Check and encode a call; nothing is sent or queued yet."""
        self._check(command, stream=stream)
        request_id = next(_request_ids)
        correlation_id = correlation_id or correlation_id_var.get() or _new_correlation_id()
        message = _wire.Call(request_id, command, args, correlation_id, timeout, stream)
        frame = _wire.encode(message, self.config.max_frame_size)
        if trace_hook is not None:
            trace_hook.capture(request_id)
        request = Request(command, self._signal, stream)
        request.message = message
        request.request_id = request_id
        request.correlation_id = correlation_id
        request.session_id = session_id
        request.frame = frame
        if timeout is not None:
            request.deadline = request.queue_deadline = anyio.current_time() + timeout
        return request

    def _submit(self, request: Request, affinity: str, avoid: str | None) -> None:
        """Start the request on a worker with a free slot, or let it wait: in a worker
        that will run it next (prefetch, for quick commands) or in the pool's queue. A
        request that would wait is refused when ``max_queue_size`` requests already do."""
        self._counters["requests"] += 1
        if self._generation != _registry.generation:
            self._push_configuration()
        request.quick = request.chunks is None and self._is_quick(request.command)
        target = None if request.session_id is None else self._session_worker(request)
        wait_for = None
        if target is not None:
            if target.accepting and target.in_flight < target.max_concurrency:
                if affinity != "hint" or not self._queue:
                    self._send(target, request)
                    return
            elif affinity == "strict_fail_fast":
                self._counters["rejected"] += 1
                raise SessionUnavailableError(
                    f"session {request.session_id!r} is served by {target.worker_id}, "
                    "which cannot take another call now"
                )
            if affinity == "strict":
                wait_for = target
                if target.accepting and not self._queue and self._has_room(target, request.quick):
                    self._prefetch(target, request)
                    return
        if wait_for is None and not self._queue:
            worker = self._pick(avoid, request.quick)
            if worker is not None:
                if worker.in_flight < worker.max_concurrency:
                    self._send(worker, request)
                else:
                    self._prefetch(worker, request)
                return
        if all(slot.down for slot in self._slots):
            self._counters["rejected"] += 1
            raise self._degraded_error()
        self._refuse_if_saturated(request)
        self._enqueued(request)
        self._queue.append(request)
        if wait_for is not None:
            request.target = wait_for
            self._targeted += 1

    def _prefetch(self, worker: WorkerHandle, request: Request) -> None:
        """Send a request to wait in a busy worker; it counts as queued until it starts."""
        self._refuse_if_saturated(request)
        self._enqueued(request)
        self._send(worker, request)

    def _refuse_if_saturated(self, request: Request) -> None:
        depth = self._queue_depth()
        if depth < self.config.max_queue_size:
            return
        self._counters["rejected"] += 1
        if has_handlers(SATURATED):
            status = self.status()
            execute(
                SATURATED,
                {"queue_depth": depth, "max_queue_size": status.max_queue_size},
                {
                    "pool_name": self.name,
                    "command": request.command,
                    "available_workers": status.available_workers,
                    "busy_workers": status.busy_workers,
                },
            )
        raise PoolSaturatedError(
            f"pool {self.name!r} is saturated: {depth} calls waiting "
            f"(max_queue_size={self.config.max_queue_size})"
        )

    def _enqueued(self, request: Request) -> None:
        """The request cannot start at once and is about to wait: its queue time and queue
        deadline start now."""
        request.enqueued = time.monotonic_ns()
        if self.config.queue_timeout is not None:
            request.queue_deadline = min(
                request.deadline, anyio.current_time() + self.config.queue_timeout
            )
        if entries := _registry._table.get(ENQUEUED):
            _dispatch(
                entries,
                ENQUEUED,
                {"queue_depth": self._queue_depth() + 1, "system_time": time.time_ns()},
                {
                    "pool_name": self.name,
                    "command": request.command,
                    "request_id": request.request_id,
                    "correlation_id": request.correlation_id,
                    "session_id": request.session_id,
                },
            )

    def _queue_depth(self) -> int:
        """Requests accepted and not started: in the pool's queue, or waiting in a worker
        behind ``max_concurrency`` calls sent before them."""
        depth = len(self._queue)
        for worker in self._workers:
            if worker is not None:
                waiting = worker.in_flight - worker.withdrawn - worker.max_concurrency
                if waiting > 0:
                    depth += waiting
        return depth

    def _is_quick(self, command: str) -> bool:
        """Whether calls of ``command`` may wait in a busy worker: it is known to take less
        than ``prefetch_below`` (with ``prefetch_below=0``, any command)."""
        if not self.config.prefetch:
            return False
        if not self._quick_below:
            return True
        cost = self._cost.get(command)
        return cost is not None and cost < self._quick_below

    def _has_room(self, worker: WorkerHandle, quick: bool) -> bool:
        """A free slot, or, for a quick command, room to wait behind quick calls only."""
        if worker.in_flight < worker.max_concurrency:
            return True
        return (
            quick
            and not worker.slow
            and worker.in_flight < worker.max_concurrency + self.config.prefetch
        )

    def _send(self, worker: WorkerHandle, request: Request) -> None:
        request.prefetched = worker.in_flight >= worker.max_concurrency
        request.sent_at = time.monotonic_ns()
        worker.in_flight += 1
        if not request.quick:
            worker.slow += 1
        worker.pending[request.request_id] = request
        request.worker = worker
        if request.session_id is not None:
            self._remember_session(request.session_id, worker)
        self._call_started(worker, request)
        if trace_hook is not None and request.message is not None:
            headers = trace_hook.inject(request.request_id)
            if headers:
                request.message.trace_context = headers
                request.frame = _wire.encode(request.message, self.config.max_frame_size)
        worker.send(request.frame)

    def _call_started(self, worker: WorkerHandle, request: Request) -> None:
        # Per-call events look their handlers up once and dispatch directly:
        # with handlers attached, this is most of what telemetry costs a call.
        table = _registry._table
        if request.chunks is not None:
            return  # a stream: it has rpc.stream.* instead
        if CALL_START in table or CALL_STOP in table or CALL_EXCEPTION in table:
            request.started = now = request.sent_at
            request.metadata = {
                "pool_name": self.name,
                "worker_id": worker.worker_id,
                "command": request.command,
                "request_id": request.request_id,
                "correlation_id": request.correlation_id,
                "session_id": request.session_id,
                "telemetry_span_context": request.request_id,
            }
            entries = table.get(CALL_START)
            if entries:
                _dispatch(
                    entries,
                    CALL_START,
                    {"monotonic_time": now, "system_time": time.time_ns()},
                    request.metadata,
                )

    def _pick(self, avoid: str | None = None, quick: bool = False) -> WorkerHandle | None:
        """The least loaded worker with room (see :meth:`_has_room`), idle ones in rotation.

        ``avoid`` names a worker never picked in a pool of more than one (the call
        queues when only that worker is free).
        """
        best: WorkerHandle | None = None
        workers = self._workers
        count = len(workers)
        start = self._rotation
        for offset in range(count):
            worker = workers[(start + offset) % count]
            if worker is None or not worker.accepting or not self._has_room(worker, quick):
                continue
            if worker.worker_id == avoid and count > 1:
                continue
            if worker.in_flight == 0:
                self._rotation = (start + offset + 1) % count
                return worker
            if best is None or worker.in_flight < best.in_flight:
                best = worker
        return best

    def _release(
        self,
        worker: WorkerHandle,
        request: Request,
        answer: _wire.Result | _wire.Error | _wire.End | None,
    ) -> None:
        """A call's answer came: free its place, learn what its command costs, and report
        when a call that waited in the worker started."""
        worker.in_flight -= 1
        if not request.quick:
            worker.slow -= 1
        if request.withdrawn:
            worker.withdrawn -= 1
        # Times the worker reports are checked: a negative one says the call never ran
        # (or lies), and counts for nothing.
        if answer is not None and answer.took > 0:
            if request.chunks is None and not request.abandoned:
                cost = self._cost.get(request.command)
                took = answer.took
                self._cost[request.command] = took if cost is None else (cost + took) / 2
                if len(self._cost) > 10_000:
                    self._cost.clear()
            if request.prefetched:
                queue_time = request.sent_at - request.enqueued + max(0, answer.waited)
                self._dequeued(worker, request, queue_time)
        if worker.recycle_reason is not None:
            if not worker.in_flight and not worker._closing:
                worker.request_stop()
        elif (
            self.config.max_requests is not None
            and worker.total_commands >= self.config.max_requests
        ):
            self._recycle(worker, "max_requests")
        if self._queue:
            self._dispatch_queue()

    def _dispatch_queue(self) -> None:
        """Hand free capacity to queued requests, first come first served."""
        if self._targeted:
            self._dispatch_targeted()
            return
        queue = self._queue
        while queue:
            worker = self._pick(None, queue[0].quick)
            if worker is None:
                return
            request = queue.popleft()
            self._dispatch(worker, request)

    def _dispatch_targeted(self) -> None:
        """The queue holds requests waiting for one worker (strict affinity): each free
        worker takes the first request that is for it or for anyone. A session whose
        worker is gone is re-homed first: any worker will do."""
        for waiting in self._queue:
            target = waiting.target
            if target is not None and self._workers[target.slot] is not target:
                waiting.target = None
                self._targeted -= 1
        if not self._targeted:
            self._dispatch_queue()
            return
        for worker in self._workers:
            while worker is not None and worker.accepting and self._queue:
                request = next(
                    (r for r in self._queue if r.target is None or r.target is worker), None
                )
                if request is None or not self._has_room(worker, request.quick):
                    break
                self._queue.remove(request)
                if request.target is not None:
                    request.target = None
                    self._targeted -= 1
                self._dispatch(worker, request)

    def _dispatch(self, worker: WorkerHandle, request: Request) -> None:
        """Send a request taken from the queue, unless its queue deadline passed."""
        late = request.queue_deadline
        if late != math.inf and anyio.current_time() >= late:
            return  # its caller is about to raise QueueTimeoutError; it must not run
        starts = worker.in_flight < worker.max_concurrency
        self._send(worker, request)
        if starts:
            self._dequeued(worker, request, time.monotonic_ns() - request.enqueued)
            if request.scope is not None:
                request.scope.deadline = request.deadline
        if request.arrived is not None:
            request.arrived.set()

    def _dequeued(self, worker: WorkerHandle, request: Request, queue_time: int) -> None:
        if entries := _registry._table.get(DEQUEUED):
            _dispatch(
                entries,
                DEQUEUED,
                {"queue_time": queue_time, "queue_depth": self._queue_depth()},
                {
                    "pool_name": self.name,
                    "command": request.command,
                    "request_id": request.request_id,
                    "correlation_id": request.correlation_id,
                    "worker_id": worker.worker_id,
                },
            )

    # -- sessions --------------------------------------------------------------------

    def _session_worker(self, request: Request) -> WorkerHandle | None:
        """The live worker that served the request's session, or None (it is re-homed)."""
        assert request.session_id is not None
        session = self._sessions.get(request.session_id)
        if session is None:
            return None
        self._sessions.move_to_end(request.session_id)
        worker = self._workers[session.slot]
        if worker is None or worker.pid != session.worker_pid:
            return None
        return worker

    def _remember_session(self, session_id: str, worker: WorkerHandle) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            self._sessions[session_id] = _Session(worker.slot, worker.pid)
            if len(self._sessions) > self.config.max_sessions:
                self._sessions.popitem(last=False)
            return
        if session.worker_pid != worker.pid:
            session.rehomed += 1
            _log.info(
                "session re-homed",
                pool_name=self.name,
                session_id=session_id,
                worker_id=worker.worker_id,
                previous_pid=session.worker_pid,
                worker_pid=worker.pid,
            )
            session.slot, session.worker_pid = worker.slot, worker.pid
        session.calls += 1

    def session(self, session_id: str) -> SessionInfo | None:
        """Where ``session_id`` lives: its worker, and how often it had to move.

        ``rehomed`` counts the times the session's calls went to a different
        worker process than the one before (its worker died or, with
        ``affinity="hint"``, was busy): state the worker kept for the session
        was not there.
        """
        session = self._sessions.get(session_id)
        if session is None:
            return None
        return SessionInfo(
            session_id=session_id,
            worker_id=self._slots[session.slot].worker_id,
            worker_pid=session.worker_pid,
            calls=session.calls,
            rehomed=session.rehomed,
        )

    def _abandon(self, request: Request) -> None:
        """The caller stops waiting: unqueue the request, or cancel it on its worker."""
        worker = request.worker
        if worker is None:
            with contextlib.suppress(ValueError):
                self._queue.remove(request)
                if request.target is not None:
                    request.target = None
                    self._targeted -= 1
        elif not request.done.is_set():
            request.abandoned = True
            if request.prefetched and not request.withdrawn and worker.waiting(request):
                request.withdrawn = True
                worker.withdrawn += 1
            if request.request_id in worker.pending:
                worker.cancel(request.request_id)
                if self._task_group is not None and not self._closed:
                    self._task_group.start_soon(self._enforce_cancel, worker, request.request_id)

    def _timed_out(self, request: Request) -> Exception:
        if request.worker is not None:
            self._counters["timeouts"] += 1
            return WorkerTimeoutError(
                f"{request.command!r} got no answer from {request.worker.worker_id} "
                "before its deadline"
            )
        if self._closed:
            return PoolClosedError(f"pool {self.name!r} closed while the call was queued")
        return self._queue_timeout(request)

    def _queue_timeout(self, request: Request) -> QueueTimeoutError:
        """The error of a request that waited too long and never ran; counted, reported."""
        self._counters["queue_timeouts"] += 1
        queue_time = time.monotonic_ns() - request.enqueued
        if has_handlers(QUEUE_TIMEOUT):
            execute(
                QUEUE_TIMEOUT,
                {"queue_time": queue_time, "queue_depth": self._queue_depth()},
                {
                    "pool_name": self.name,
                    "command": request.command,
                    "request_id": request.request_id,
                    "correlation_id": request.correlation_id,
                },
            )
        return QueueTimeoutError(
            f"{request.command!r} waited {queue_time / 1e9:.3f}s in the queue of pool "
            f"{self.name!r} without a free worker; it was not run"
        )

    def _failed(self, request: Request, exc: BaseException) -> None:
        self._counters["failed"] += 1
        if request.started and has_handlers(CALL_EXCEPTION):
            now = time.monotonic_ns()
            execute(
                CALL_EXCEPTION,
                {"duration": now - request.started, "monotonic_time": now},
                {
                    **request.metadata,
                    "kind": "error" if isinstance(exc, Exception) else "exit",
                    "reason": exc,
                    "stacktrace": exc.__traceback__,
                    "error_type": type(exc).__name__,
                },
            )

    # -- worker telemetry and logging -------------------------------------------------

    def _configure_message(self, worker_id: str, seq: int = 0) -> _wire.Configure:
        """The settings of ``worker_id``: the pool's, then its own overrides."""
        settings = {**self._telemetry_settings, **self._worker_settings.get(worker_id, {})}
        return _wire.Configure(
            seq=seq,
            listened=self._listened,
            enabled=settings["enabled"],
            sampling_rate=settings["sampling_rate"],
            allow=list(settings["allow"]),
            deny=list(settings["deny"]),
            log_level=settings.get("log_level", self.config.log_level),
            sample_interval=self.config.sample_interval,
        )

    def _refresh_listened(self) -> None:
        """Which python events have handlers: workers ship only those."""
        self._generation = _registry.generation
        self._listened = sorted(
            {".".join(h.event_name[2:]) for h in _registry.list_handlers(("pypit", "python"))}
        )

    def _push_configuration(self, seq: int = 0, targets: str | None = None) -> None:
        """Send each ready worker (or ``targets`` only) its settings."""
        self._refresh_listened()
        for worker in self._workers:
            if worker is None or not worker.ready:
                continue
            if targets is None or worker.worker_id == targets:
                worker.send(_wire.encode(self._configure_message(worker.worker_id, seq)))

    async def _apply(self, worker_id: str | None, timeout: float) -> None:
        """Push settings and wait until the targeted workers acknowledged them."""
        self._seq += 1
        seq = self._seq
        self._allowed.clear()
        self._push_configuration(seq, worker_id)
        with anyio.fail_after(timeout):
            while any(
                w is not None
                and w.ready
                and w.acked < seq
                and w.process.returncode is None
                and (worker_id is None or w.worker_id == worker_id)
                for w in self._workers
            ):
                await anyio.sleep(0.005)

    def _initial_configuration(self, worker_id: str) -> str:
        """The settings a new worker applies before it imports the adapter (hex, for env)."""
        if self._generation != _registry.generation:
            self._refresh_listened()
        return _wire.encode(self._configure_message(worker_id))[4:].hex()

    def _slot_named(self, worker_id: str) -> _Slot:
        slot = next((s for s in self._slots if s.worker_id == worker_id), None)
        if slot is None:
            raise LookupError(f"pool {self.name!r} has no worker {worker_id!r}")
        return slot

    async def configure_telemetry(
        self,
        *,
        enabled: bool | None = None,
        sampling_rate: float | None = None,
        allow: list[str] | tuple[str, ...] | None = None,
        deny: list[str] | tuple[str, ...] | None = None,
        worker_id: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Change worker telemetry live, for the whole pool or one ``worker_id``.

        ``enabled`` turns worker events on or off; ``sampling_rate`` (0 to 1)
        keeps that share of correlation ids (all events of a call are kept or
        dropped together); ``allow`` replaces the names accepted beyond the
        catalog, ``deny`` the names refused (exact, ``"a.*"`` or ``"*"``).
        Returns once every targeted worker applied the change; replacement
        workers start with it. Raises ``TimeoutError`` if a worker did not
        acknowledge in ``timeout`` seconds.
        """
        changes: dict[str, Any] = {}
        if enabled is not None:
            changes["enabled"] = bool(enabled)
        if sampling_rate is not None:
            if not 0.0 <= sampling_rate <= 1.0:
                raise ValueError(f"sampling_rate is between 0 and 1, not {sampling_rate!r}")
            changes["sampling_rate"] = float(sampling_rate)
        for key, patterns in (("allow", allow), ("deny", deny)):
            if patterns is not None:
                if not isinstance(patterns, list | tuple) or not all(
                    isinstance(p, str) and p for p in patterns
                ):
                    raise TypeError(f"{key} is a list of name patterns, not {patterns!r}")
                changes[key] = tuple(patterns)
        if worker_id is None:
            self._telemetry_settings.update(changes)
        else:
            self._slot_named(worker_id)
            self._worker_settings.setdefault(worker_id, {}).update(changes)
        await self._apply(worker_id, timeout)

    async def set_worker_level(self, worker_id: str, level: str, *, timeout: float = 5.0) -> None:
        """Set the log level inside ``worker_id``'s process (its stdlib logging and
        structlog), live; it survives restarts of that worker."""
        check_level(level)
        self._slot_named(worker_id)
        self._worker_settings.setdefault(worker_id, {})["log_level"] = level
        await self._apply(worker_id, timeout)

    async def reset_worker_level(self, worker_id: str, *, timeout: float = 5.0) -> None:
        """Give ``worker_id`` back the pool's ``log_level`` (or, without one, the level the
        worker started with)."""
        self._slot_named(worker_id)
        self._worker_settings.get(worker_id, {}).pop("log_level", None)
        await self._apply(worker_id, timeout)

    def _is_allowed(self, worker_id: str, name: str) -> bool:
        """The pool's own check of a shipped name: a worker cannot widen its allowlist."""
        key = (worker_id, name)
        allowed = self._allowed.get(key)
        if allowed is None:
            settings = {**self._telemetry_settings, **self._worker_settings.get(worker_id, {})}
            allowed = valid_name(name) and (
                name in CATALOG_NAMES or matches(name, settings["allow"])
            )
            if len(self._allowed) < 10_000:
                self._allowed[key] = allowed
        return allowed

    def _on_events(self, worker: WorkerHandle, batch: _wire.Events) -> None:
        """Re-emit a worker's events with the three keys it cannot set, and report drops."""
        added = {"pool_name": self.name, "worker_id": worker.worker_id, "python_pid": worker.pid}
        dropped: dict[str, list[Any]] = {}
        for name, measurements, metadata in batch.events:
            if not self._is_allowed(worker.worker_id, name):
                _count_drop(dropped, "unknown_event", name, 1)
                continue
            if invalid_metadata(metadata):
                _count_drop(dropped, "invalid_metadata", name, 1)
                continue
            event = ("pypit", "python", *name.split("."))
            if has_handlers(event):
                execute(event, measurements, {**metadata, **added})
        for reason, name, count in batch.dropped:
            _count_drop(dropped, reason, name, count)
        if dropped and has_handlers(DROPPED):
            for reason, (count, names) in dropped.items():
                execute(
                    DROPPED,
                    {"count": count},
                    {
                        "pool_name": self.name,
                        "worker_id": worker.worker_id,
                        "reason": reason,
                        "event_name": next(iter(names)) if len(names) == 1 else None,
                    },
                )

    # -- workers -------------------------------------------------------------------

    async def _serve_slot(self, slot: _Slot) -> None:
        """Keep one slot's worker running until the pool closes.

        An unplanned end (crash, kill, failed start) counts against the restart
        intensity: past ``max_restarts`` in ``restart_window`` the slot stays
        down for a window. A worker that was serving is replaced at once;
        starts that keep failing back off exponentially, with jitter.
        """
        reason = "initial"
        while not self._closed:
            spawned = await self._spawn(slot, reason)
            ready = False
            handle: WorkerHandle | None = None
            if spawned is not None:
                handle, greeting = spawned
                try:
                    ready = await self._supervise(slot, handle, greeting, reason)
                finally:
                    if handle.process.returncode is None:
                        handle.kill_group(signal.SIGKILL)
                        with anyio.CancelScope(shield=True):
                            await handle.process.wait()
            elif reason == "initial":
                self._startup_reported(ready=False)
            if self._is_closed():
                return
            if handle is not None and ready and handle.recycle_reason is not None:
                reason = "recycle"
                continue
            if ready and handle is not None:
                self._counters["crashes"] += 1
                slot.previous_pid = handle.pid
                slot.lost_at = time.monotonic_ns()
                slot.lost_reason = _termination_reason(handle, handle.process.returncode)
            await self._back_off(slot, served=ready)
            slot.restarts += 1
            reason = "restart"

    async def _back_off(self, slot: _Slot, *, served: bool) -> None:
        config = self.config
        now = time.monotonic()
        recent = slot.recent
        recent.append(now)
        while recent and now - recent[0] > config.restart_window:
            recent.popleft()
        if len(recent) > config.max_restarts:
            slot.down = True
            _log.error(
                "worker restarts too frequent; the slot stays down for a window",
                pool_name=self.name,
                worker_id=slot.worker_id,
                restarts=len(recent),
                window=config.restart_window,
            )
            self._fail_queue_if_degraded()
            await anyio.sleep(config.restart_window)
            recent.clear()
            slot.down = False
            return
        if served:
            slot.failed_starts = 0
            return
        slot.failed_starts += 1
        delay = config.restart_backoff * 2 ** (slot.failed_starts - 1)
        await anyio.sleep(min(config.restart_backoff_max, delay) * random.uniform(0.5, 1.0))

    def _fail_queue_if_degraded(self) -> None:
        """With every slot down, nothing queued can be served: fail it now."""
        if not all(slot.down for slot in self._slots):
            return
        self._targeted = 0
        while self._queue:
            request = self._queue.popleft()
            request.target = None
            request.error = self._degraded_error()
            request.done.set()
            if request.arrived is not None:
                request.arrived.set()

    def _degraded_error(self) -> PoolDegradedError:
        return PoolDegradedError(
            f"pool {self.name!r} is degraded: every worker failed more than "
            f"{self.config.max_restarts} times in {self.config.restart_window}s; "
            "see the log for their errors"
        )

    def _is_closed(self) -> bool:
        # A method, not the attribute: the flag changes across awaits.
        return self._closed

    def _startup_reported(self, *, ready: bool) -> None:
        self._startup_reports += 1
        if self._startup_reports == self.config.size:
            self._startup_done.set()

    async def _spawn(self, slot: _Slot, reason: str) -> tuple[WorkerHandle, _Greeting] | None:
        worker_id = slot.worker_id
        started = time.monotonic_ns()
        if has_handlers(SPAWN_STARTED):
            execute(
                SPAWN_STARTED,
                {"system_time": time.time_ns()},
                {"pool_name": self.name, "worker_id": worker_id, "reason": reason},
            )
        token = secrets.token_hex(16)
        greeting = _Greeting()
        self._expected[token] = greeting
        env = {
            **os.environ,
            **self.config.env,
            "PYTHONUNBUFFERED": "1",
            "PYPIT_WORKER_SOCKET": self._socket_path,
            "PYPIT_WORKER_TOKEN": token,
            "PYPIT_WORKER_ADAPTER": self.config.adapter,
            "PYPIT_WORKER_PARENT_PID": str(os.getpid()),
            "PYPIT_WORKER_MAX_CONCURRENCY": str(self.config.max_concurrency),
            "PYPIT_WORKER_MAX_FRAME_SIZE": str(self.config.max_frame_size),
            "PYPIT_WORKER_SYS_PATH": json.dumps([p for p in sys.path if p]),
            "PYPIT_WORKER_RECONNECT_WINDOW": str(self.config.reconnect_window),
            "PYPIT_WORKER_CONFIGURE": self._initial_configuration(worker_id),
            "PYPIT_WORKER_BUFFER_SIZE": str(self.config.telemetry_buffer_size),
        }
        try:
            # Shielded: a cancellation here could leave a started process with
            # nobody holding it; past this point the slot always reaps it.
            with anyio.CancelScope(shield=True):
                process = await anyio.open_process(
                    [self.config.python, "-m", "pypit.worker"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            del self._expected[token]
            self._spawn_failed(worker_id, started, f"exec_failed: {exc}", None)
            return None
        handle = WorkerHandle(
            pool_name=self.name,
            worker_id=worker_id,
            process=process,
            max_concurrency=self.config.max_concurrency,
            max_frame_size=self.config.max_frame_size,
            on_release=self._release,
            on_events=self._on_events,
            spawn_started=started,
            slot=slot.index,
        )
        handle.token = token
        self._workers[slot.index] = handle
        return handle, greeting

    async def _supervise(
        self, slot: _Slot, handle: WorkerHandle, greeting: _Greeting, reason: str
    ) -> bool:
        """Run one worker from handshake to exit, then settle everything it held.

        Returns whether the worker got ready.
        """
        returncode: int | None = None
        drained = [anyio.Event(), anyio.Event()]

        async def drain(stream: Any, name: str, done: anyio.Event) -> None:
            try:
                await handle.drain_output(stream, name)
            finally:
                done.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(drain, handle.process.stdout, "stdout", drained[0])
            tasks.start_soon(drain, handle.process.stderr, "stderr", drained[1])
            exited = anyio.Event()

            async def watch_exit() -> None:
                await handle.process.wait()
                exited.set()
                handle.changed.set()
                greeting.arrived.set()

            tasks.start_soon(watch_exit)
            ready = await self._handshake(handle, greeting, exited, tasks)
            self._expected.pop(handle.token, None)
            if ready and reason == "initial":
                self._startup_reported(ready=True)
            if ready:
                if reason == "restart" and slot.previous_pid is not None:
                    self._restarted(slot, handle)
                if self._closed:
                    handle.request_stop()
                tasks.start_soon(self._watch_health, handle)
                await self._run_ready(handle)
            returncode = await handle.reap(self.config.stop_grace if handle._closing else 0.5)
            handle.kill_group(signal.SIGKILL)
            # The last lines the worker wrote (its traceback, often) are
            # still in the pipes: read them before the drains are cancelled.
            with anyio.move_on_after(1.0):
                for done in drained:
                    await done.wait()
            tasks.cancel_scope.cancel()
        self._workers[slot.index] = None
        if self._queue:
            # Requests that waited for this worker (strict affinity) may go elsewhere now.
            self._dispatch_queue()
        if handle.connection is not None:
            handle.connection.close()
        closing = handle._closing
        handle.fail_pending(crash_error(handle, returncode, closing and self._closed))
        if ready:
            self._terminated(handle, returncode)
        else:
            self._failed_to_start(handle, returncode)
            if reason == "initial":
                self._startup_reported(ready=False)
        return ready

    def _restarted(self, slot: _Slot, handle: WorkerHandle) -> None:
        if has_handlers(RESTARTED):
            execute(
                RESTARTED,
                {"downtime": time.monotonic_ns() - slot.lost_at, "restart_count": slot.restarts},
                {
                    "pool_name": self.name,
                    "worker_id": handle.worker_id,
                    "previous_pid": slot.previous_pid,
                    "new_pid": handle.pid,
                    "reason": slot.lost_reason,
                },
            )

    def _terminated(self, handle: WorkerHandle, returncode: int | None) -> None:
        handle.connection_lost()
        lifetime = time.monotonic_ns() - handle.ready_at
        reason = _termination_reason(handle, returncode)
        if handle.recycle_reason is not None and has_handlers(RECYCLED):
            execute(
                RECYCLED,
                {
                    "lifetime": lifetime,
                    "total_commands": handle.total_commands,
                    "rss_bytes": handle.rss_bytes,
                },
                {
                    "pool_name": self.name,
                    "worker_id": handle.worker_id,
                    "reason": handle.recycle_reason,
                },
            )
        if has_handlers(TERMINATED):
            execute(
                TERMINATED,
                {"lifetime": lifetime, "total_commands": handle.total_commands},
                {
                    "node": _NODE,
                    "pool_name": self.name,
                    "worker_id": handle.worker_id,
                    "worker_pid": handle.pid,
                    "reason": reason,
                    "planned": handle._closing,
                    "exit_code": returncode,
                },
            )
        if not handle._closing:
            _log.warning(
                "worker terminated unexpectedly; restarting",
                pool_name=self.name,
                worker_id=handle.worker_id,
                worker_pid=handle.pid,
                exit_code=returncode,
                reason=reason,
            )

    def _failed_to_start(self, handle: WorkerHandle, returncode: int | None) -> None:
        if handle.failure is not None:
            failure = handle.failure.reason
        elif handle.kill_reason is not None:
            failure = handle.kill_reason
        else:
            failure = "exited"
        self._spawn_failed(handle.worker_id, handle.spawn_started, failure, returncode)
        _log.error(
            "worker failed to start",
            pool_name=self.name,
            worker_id=handle.worker_id,
            reason=failure,
            error=handle.failure.message if handle.failure else None,
            exit_code=returncode,
            stderr="\n".join(handle.stderr_tail),
        )

    async def _watch_health(self, handle: WorkerHandle) -> None:
        """Heartbeat, age and memory of one worker, checked every heartbeat interval (every
        second when the heartbeat is off)."""
        config = self.config
        interval = config.heartbeat_interval or 1.0
        while not handle._closing and handle.kill_reason is None:
            await anyio.sleep(interval)
            if handle.lost_reason is not None:
                # Reconnecting: the window, not the heartbeat, bounds that.
                handle.pongs_seen = handle.pings_sent
                continue
            if config.heartbeat_interval:
                if handle.pings_sent - handle.pongs_seen >= config.heartbeat_misses:
                    handle.kill("heartbeat_timeout")
                    return
                handle.pings_sent += 1
                handle.send(_wire.encode(_wire.Ping(handle.pings_sent)))
            if config.ttl is not None and time.monotonic_ns() - handle.ready_at > config.ttl * 1e9:
                self._recycle(handle, "ttl")
            elif config.max_rss_bytes is not None and handle.measure_rss() > config.max_rss_bytes:
                self._recycle(handle, "memory")

    def _recycle(self, handle: WorkerHandle, reason: str) -> None:
        """Retire a worker on purpose: it takes no new work, finishes what it has, and is
        replaced."""
        if handle.recycle_reason is not None or handle._closing or handle.kill_reason:
            return
        handle.recycle_reason = reason
        handle.accepting = False
        if not handle.rss_bytes:
            handle.measure_rss()
        _log.info(
            "recycling worker",
            pool_name=self.name,
            worker_id=handle.worker_id,
            worker_pid=handle.pid,
            reason=reason,
        )
        if not handle.in_flight:
            handle.request_stop()
        elif self._task_group is not None:
            self._task_group.start_soon(self._bound_drain, handle)

    async def _bound_drain(self, handle: WorkerHandle) -> None:
        await anyio.sleep(self.config.shutdown_timeout)
        if not handle._closing and handle.process.returncode is None:
            handle.request_stop()

    async def recycle_worker(self, worker_id: str) -> None:
        """Retire ``worker_id`` by hand: it drains, stops and is replaced (reason ``manual``).

        Returns once the replacement is ready. Raises ``LookupError`` for an
        unknown or stopped worker, and :class:`~pypit.WorkerStartError` when no
        replacement got ready in time: the old worker's drain and stop
        (``shutdown_timeout`` and twice ``stop_grace``), then ``startup_timeout``
        and ``restart_backoff_max`` for the new one. The slot keeps trying.
        """
        handle = next((w for w in self._workers if w and w.worker_id == worker_id), None)
        if handle is None or not handle.ready:
            raise LookupError(f"no live worker {worker_id!r} in pool {self.name!r}")
        slot = self._slots[int(worker_id.rsplit("_", 1)[1]) - 1]
        self._recycle(handle, "manual")
        config = self.config
        bound = (
            config.shutdown_timeout
            + 2 * config.stop_grace
            + config.startup_timeout
            + config.restart_backoff_max
        )
        with anyio.move_on_after(bound):
            while True:
                current = self._workers[slot.index]
                if current is not None and current is not handle and current.accepting:
                    return
                if self._closed:
                    raise PoolClosedError(f"pool {self.name!r} closed while recycling {worker_id}")
                await anyio.sleep(0.01)
        raise WorkerStartError(
            f"pool {self.name!r}: no replacement for {worker_id} got ready within {bound:g}s; "
            "the slot keeps trying (see the log for its errors)"
        )

    async def _enforce_cancel(self, handle: WorkerHandle, request_id: int) -> None:
        """Kill a worker that does not answer a cancelled call within ``cancel_grace``."""
        await anyio.sleep(self.config.cancel_grace)
        if request_id in handle.pending and handle.process.returncode is None:
            handle.kill("timeout")

    async def _handshake(
        self,
        handle: WorkerHandle,
        greeting: _Greeting,
        exited: anyio.Event,
        tasks: anyio.abc.TaskGroup,
    ) -> bool:
        with anyio.move_on_after(self.config.startup_timeout) as deadline:
            await greeting.arrived.wait()
            if greeting.connection is None:
                return False
            handle.connection = greeting.connection
            handle.connection_established(time.monotonic_ns() - handle.spawn_started)
            greeting.connection.attach(handle.on_frame, handle.on_lost)
            while not (
                handle.ready
                or handle.failure
                or exited.is_set()
                or handle.lost_reason
                or self._closed
            ):
                await handle.changed.wait()
                handle.changed = anyio.Event()
        if not handle.ready:
            if deadline.cancelled_caught:
                # Silent past the deadline: stuck in import or setup().
                handle.kill_reason = "handshake_timeout"
            if handle.failure is None:
                # A worker that reported its failure exits by itself, after
                # writing its traceback to stderr.
                handle.kill_group(signal.SIGKILL)
            return False
        if self._generation != _registry.generation:
            self._push_configuration()
        else:
            handle.send(_wire.encode(self._configure_message(handle.worker_id)))
        if not self._tools:
            self._tools = {
                t.name: ToolDescription(t.name, t.description, t.stream)
                for t in handle.tools.values()
            }
        if has_handlers(SPAWNED):
            execute(
                SPAWNED,
                {
                    "duration": time.monotonic_ns() - handle.spawn_started,
                    "system_time": time.time_ns(),
                },
                {
                    "node": _NODE,
                    "pool_name": self.name,
                    "worker_id": handle.worker_id,
                    "worker_pid": handle.pid,
                    "python_pid": handle.pid,
                    "mode": "process",
                },
            )
        self._dispatch_queue()
        return True

    async def _run_ready(self, handle: WorkerHandle) -> None:
        """Wait while the worker serves; give a broken channel a chance to come back."""
        while True:
            while (
                handle.lost_reason is None
                and handle.process.returncode is None
                and not handle._closing
            ):
                await handle.changed.wait()
                handle.changed = anyio.Event()
            if handle.lost_reason == "protocol_error":
                handle.kill("protocol_error")
                break
            if handle._closing:
                break
            handle.connection_lost()
            if not await self._reconnected(handle):
                break
        handle.accepting = False

    async def _reconnected(self, handle: WorkerHandle) -> bool:
        """The channel closed: did the worker die, or does it come back in time?"""
        window = self.config.reconnect_window
        if window:
            self._reconnecting[handle.token] = handle
        try:
            # A dead worker's channel closes a moment before its exit shows.
            with anyio.move_on_after(_EXIT_GRACE):
                await handle.process.wait()
            if handle.process.returncode is not None:
                return False
            with anyio.move_on_after(window):
                while handle.lost_reason is not None and handle.process.returncode is None:
                    await handle.changed.wait()
                    handle.changed = anyio.Event()
        finally:
            self._reconnecting.pop(handle.token, None)
        if handle.lost_reason is None:
            return True
        if handle.process.returncode is None:
            handle.kill("connection_lost")
        return False

    def _spawn_failed(
        self, worker_id: str, started: int, reason: str, exit_code: int | None
    ) -> None:
        if has_handlers(SPAWN_FAILED):
            execute(
                SPAWN_FAILED,
                {"duration": time.monotonic_ns() - started, "system_time": time.time_ns()},
                {
                    "pool_name": self.name,
                    "worker_id": worker_id,
                    "reason": reason,
                    "exit_code": exit_code,
                },
            )

    def _on_greeting(self, connection: Connection, payload: bytes) -> bool:
        """A new connection's first frame: accept it if it is the Hello of a worker we started."""
        try:
            hello = _wire.decode_from_worker(payload)
        except ProtocolError:
            hello = None
        if isinstance(hello, _wire.Hello) and hello.token in self._reconnecting:
            handle = self._reconnecting.pop(hello.token)
            if handle.pid == hello.pid:
                handle.resume(
                    connection,
                    hello.running,
                    _wire.encode(self._configure_message(handle.worker_id)),
                )
                # It accepts calls again: whatever waited for it goes now.
                self._dispatch_queue()
                if has_handlers(RECONNECTED):
                    execute(
                        RECONNECTED,
                        {"downtime": time.monotonic_ns() - handle.lost_at},
                        {
                            "pool_name": self.name,
                            "worker_id": handle.worker_id,
                            "python_pid": handle.pid,
                        },
                    )
                _log.info(
                    "worker reconnected",
                    pool_name=self.name,
                    worker_id=handle.worker_id,
                    worker_pid=handle.pid,
                )
                return True
        greeting = self._expected.get(hello.token) if isinstance(hello, _wire.Hello) else None
        if greeting is None or greeting.connection is not None:
            _log.warning("refused a connection to the pool's socket", pool_name=self.name)
            return False
        greeting.connection = connection
        greeting.arrived.set()
        return True

    # -- opening and closing ---------------------------------------------------------

    async def _open(self, task_group: anyio.abc.TaskGroup) -> None:
        started = time.monotonic_ns()
        self._task_group = task_group
        self._signal = signal_factory()
        self._directory = tempfile.mkdtemp(prefix="pypit-")
        self._socket_path = os.path.join(self._directory, "pool.sock")
        server = Server(self._on_greeting, self.config.max_frame_size)
        await task_group.start(server.serve, self._socket_path)
        os.chmod(self._socket_path, 0o600)
        for slot in self._slots:
            task_group.start_soon(self._serve_slot, slot)
        await self._startup_done.wait()
        ready = sum(1 for w in self._workers if w is not None and w.ready)
        if has_handlers(INITIALIZED):
            execute(
                INITIALIZED,
                {
                    "duration": time.monotonic_ns() - started,
                    "total_workers": self.config.size,
                    "ready_workers": ready,
                },
                {"pool_name": self.name, "adapter": self.config.adapter, "node": _NODE},
            )
        if not ready:
            raise WorkerStartError(
                f"pool {self.name!r}: none of {self.config.size} workers could start "
                f"{self.config.adapter}; see the log for each worker's error"
            )
        if self.config.status_interval:
            task_group.start_soon(self._emit_status_periodically)

    async def _emit_status_periodically(self) -> None:
        while True:
            await anyio.sleep(self.config.status_interval)
            self.emit_status()

    async def aclose(self) -> None:
        """Stop taking calls, drain those in flight, stop every worker."""
        if self._closed:
            return
        self._closed = True
        self._targeted = 0
        while self._queue:
            request = self._queue.popleft()
            request.error = PoolClosedError(f"pool {self.name!r} closed while the call was queued")
            request.done.set()
            if request.arrived is not None:
                request.arrived.set()
        for worker in self._workers:
            if worker is None:
                continue
            # Calls waiting in a worker are withdrawn too; those already started drain.
            for request in list(worker.pending.values()):
                if request.prefetched and worker.waiting(request):
                    worker.cancel(request.request_id, if_waiting=True)
        with anyio.move_on_after(self.config.shutdown_timeout):
            while any(w is not None and w.pending for w in self._workers):
                await anyio.sleep(0.005)
        for worker in self._workers:
            if worker is not None:
                worker.request_stop()
                worker.changed.set()

    def _cleanup(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)


def _termination_reason(handle: WorkerHandle, returncode: int | None) -> str:
    if handle.recycle_reason is not None:
        return "recycle"
    if handle._closing:
        return "shutdown"
    if handle.kill_reason is not None:
        return handle.kill_reason
    if handle.lost_reason == "protocol_error":
        return "protocol_error"
    if returncode is not None and returncode < 0:
        return "killed"
    return "exited"


@asynccontextmanager
async def open_pool(
    adapter: str,
    *,
    size: int | None = None,
    name: str = "default",
    **options: Any,
) -> AsyncIterator[Pool]:
    """Open a pool of ``size`` workers serving ``adapter`` (``"package.module:Class"``).

    The pool is ready when the block starts (every worker ready or failed;
    at least one ready, else :class:`~pypit.WorkerStartError`). Leaving the
    block drains calls in flight, stops the workers and reaps them. Other
    options are the fields of :class:`PoolConfig`.
    """
    settings: dict[str, Any] = {"adapter": adapter, "name": name, **options}
    if size is not None:
        settings["size"] = size
    config = PoolConfig(**settings)
    if config.log_level is not None or config.log_categories:
        set_levels(config.log_level, config.log_categories)
    pool = Pool(config)
    try:
        async with anyio.create_task_group() as task_group:
            try:
                await pool._open(task_group)
                yield pool
            finally:
                with anyio.CancelScope(shield=True):
                    await pool.aclose()
                    with anyio.move_on_after(config.shutdown_timeout + 3 * config.stop_grace + 5):
                        while any(w is not None for w in pool._workers):
                            await anyio.sleep(0.01)
                task_group.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The pool's own tasks never raise, so a group holds the one error of
        # the caller's block (or of opening): raise it as the caller wrote it.
        if len(group.exceptions) != 1:
            raise
        error = group.exceptions[0]
        raise error from error.__cause__
    finally:
        pool._cleanup()


def _count_drop(dropped: dict[str, list[Any]], reason: str, name: str, count: int) -> None:
    entry = dropped.setdefault(reason, [0, set()])
    entry[0] += count
    entry[1].add(name)

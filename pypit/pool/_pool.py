"""The pool: worker slots, the queue, calls, streams, status and shutdown.

Everything here runs on one event loop, so the scheduler needs no locks: a
worker's ``in_flight`` and the queue change only between awaits. A call takes
a worker directly when one has spare capacity and nobody is queued; otherwise
it waits in a bounded FIFO queue, and a worker that frees capacity hands it to
the first live waiter. The waiter itself sends the call after it wakes, so a
waiter that was cancelled or whose deadline passed never reaches a worker.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc
import attrs

from pypit import _wire
from pypit._errors import (
    PoolClosedError,
    PoolSaturatedError,
    ProtocolError,
    QueueTimeoutError,
    UnknownCommandError,
    WorkerStartError,
    WorkerTimeoutError,
)
from pypit._log import get_logger
from pypit.pool._channel import Connection, Server, signal_factory
from pypit.pool._config import PoolConfig
from pypit.pool._worker import DEVNULL, PIPE, Request, WorkerHandle, crash_error
from pypit.telemetry import _registry
from pypit.telemetry._registry import execute, has_handlers

_log = get_logger("pool")
_NODE: Final = socket.gethostname()
_request_ids = itertools.count(1)
_stream_ids = itertools.count(1)

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
CALL_START: Final = ("pypit", "rpc", "call", "start")
CALL_STOP: Final = ("pypit", "rpc", "call", "stop")
CALL_EXCEPTION: Final = ("pypit", "rpc", "call", "exception")
STREAM_OPENED: Final = ("pypit", "rpc", "stream", "opened")
STREAM_MESSAGE: Final = ("pypit", "rpc", "stream", "message")
STREAM_CLOSED: Final = ("pypit", "rpc", "stream", "closed")
PYTHON_CALL_EVENTS: Final = ("call.start", "call.stop", "call.exception")


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
    least one call in flight; together they are ``total_workers``.
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
    requests: int
    completed: int
    failed: int
    rejected: int
    queue_timeouts: int
    timeouts: int
    crashes: int
    restarts: int


class _Greeting:
    __slots__ = ("arrived", "connection")

    def __init__(self) -> None:
        self.arrived = anyio.Event()
        self.connection: Connection | None = None


def _new_correlation_id() -> str:
    return secrets.token_hex(8)


class Pool:
    """A pool of worker processes serving one adapter. Open it with :func:`open_pool`."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.name = config.name
        self._workers: list[WorkerHandle | None] = [None] * config.size
        self._queue: deque[Request] = deque()
        self._tools: dict[str, ToolDescription] = {}
        self._expected: dict[str, _Greeting] = {}
        self._closed = False
        self._rotation = 0
        self._generation = -1
        self._configure_frame = b""
        self._started = 0
        self._startup_reports = 0
        self._startup_done = anyio.Event()
        self._restarts = [0] * config.size
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
    ) -> Any:
        """Run ``command`` on a worker and return its result.

        ``args``: a dict is passed as keyword arguments, ``None`` as none,
        anything else as one positional argument; values must be msgpack
        types. ``timeout`` bounds the whole call, queueing included.

        Raises:
            UnknownCommandError: no tool of that name (before anything is sent).
            PoolSaturatedError: the queue is full.
            QueueTimeoutError: no worker came free in time; the call never ran.
            WorkerTimeoutError: the worker did not answer in time.
            WorkerCrashedError: the worker died with the call in flight.
            ToolError: the tool raised; it carries the remote traceback.
            SerializationError, FrameTooLargeError: arguments or result cannot travel.
            PoolClosedError: the pool is closing.
        """
        request = self._request(command, args, timeout, session_id, correlation_id, stream=False)
        self._submit(request)
        deadline = request.queue_deadline if request.worker is None else request.deadline
        try:
            if deadline == math.inf:
                await request.done.wait()
            else:
                with anyio.CancelScope(deadline=deadline) as scope:
                    request.scope = scope
                    await request.done.wait()
                request.scope = None
        except BaseException as exc:
            self._abandon(request)
            self._failed(request, exc)
            raise
        if not request.done.is_set():
            self._abandon(request)
            error = self._timed_out(request)
            self._failed(request, error)
            raise error
        if request.error is not None:
            self._failed(request, request.error)
            raise request.error
        self._counters["completed"] += 1
        if request.started and has_handlers(CALL_STOP):
            now = time.monotonic_ns()
            execute(
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

    async def stream(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Iterate over the chunks a generator tool yields.

        Leaving the loop early cancels the stream in the worker. ``timeout``
        bounds the wait for a worker and then each wait for a chunk. For a
        deterministic early close, wrap it in ``contextlib.aclosing``.
        """
        request = self._request(command, args, timeout, session_id, correlation_id, stream=True)
        chunks = request.chunks
        assert chunks is not None
        self._submit(request)
        started = 0
        count = 0
        reason = "cancelled"
        base: dict[str, Any] = {}
        try:
            while True:
                if not started and request.worker is not None:
                    started = time.monotonic_ns()
                    base = {
                        "pool_name": self.name,
                        "worker_id": request.worker.worker_id,
                        "stream_id": next(_stream_ids),
                    }
                    if has_handlers(STREAM_OPENED):
                        execute(
                            STREAM_OPENED,
                            {"system_time": time.time_ns()},
                            {**base, "command": command, "correlation_id": request.correlation_id},
                        )
                if chunks:
                    value, size = chunks.popleft()
                    count += 1
                    if has_handlers(STREAM_MESSAGE):
                        execute(STREAM_MESSAGE, {"bytes": size, "sequence_number": count}, base)
                    yield value
                    continue
                if request.done.is_set():
                    if request.error is not None:
                        reason = "error"
                        raise request.error
                    reason = "complete"
                    self._counters["completed"] += 1
                    return
                request.arrived = self._signal()
                if request.worker is None:
                    deadline = request.queue_deadline
                elif timeout is None:
                    deadline = math.inf
                else:
                    deadline = anyio.current_time() + timeout
                with anyio.CancelScope(deadline=deadline) as scope:
                    await request.arrived.wait()
                if scope.cancelled_caught and not request.arrived.is_set():
                    raise self._timed_out(request)
        finally:
            self._abandon(request)
            if reason != "complete":
                self._counters["failed"] += 1
            if started and has_handlers(STREAM_CLOSED):
                execute(
                    STREAM_CLOSED,
                    {"duration": time.monotonic_ns() - started, "message_count": count},
                    {**base, "reason": reason},
                )

    def status(self) -> PoolStatus:
        """A snapshot of the queue, the workers and the counters."""
        ready = [w for w in self._workers if w is not None and w.accepting]
        busy = sum(1 for w in ready if w.in_flight)
        return PoolStatus(
            pool_name=self.name,
            queue_depth=len(self._queue),
            available_workers=len(ready) - busy,
            busy_workers=busy,
            total_workers=len(ready),
            in_flight=sum(w.in_flight for w in self._workers if w is not None),
            max_queue_size=self.config.max_queue_size,
            size=self.config.size,
            closed=self._closed,
            restarts=sum(self._restarts),
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
        """The live workers: worker id to process id."""
        return {w.worker_id: w.pid for w in self._workers if w is not None}

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
        correlation_id = correlation_id or _new_correlation_id()
        frame = _wire.encode(
            _wire.Call(request_id, command, args, correlation_id, timeout, stream),
            self.config.max_frame_size,
        )
        request = Request(command, self._signal, stream)
        request.request_id = request_id
        request.correlation_id = correlation_id
        request.session_id = session_id
        request.frame = frame
        if timeout is not None:
            request.deadline = request.queue_deadline = anyio.current_time() + timeout
        return request

    def _submit(self, request: Request) -> None:
        """Send the request to a free worker, or queue it (or refuse it: the queue is full)."""
        self._counters["requests"] += 1
        if self._generation != _registry.generation:
            self._push_configuration()
        if not self._queue:
            worker = self._pick()
            if worker is not None:
                self._send(worker, request)
                return
        if len(self._queue) >= self.config.max_queue_size:
            self._counters["rejected"] += 1
            if has_handlers(SATURATED):
                status = self.status()
                execute(
                    SATURATED,
                    {"queue_depth": status.queue_depth, "max_queue_size": status.max_queue_size},
                    {
                        "pool_name": self.name,
                        "command": request.command,
                        "available_workers": status.available_workers,
                        "busy_workers": status.busy_workers,
                    },
                )
            raise PoolSaturatedError(
                f"pool {self.name!r} is saturated: {len(self._queue)} calls queued "
                f"(max_queue_size={self.config.max_queue_size})"
            )
        self._queue.append(request)
        request.enqueued = time.monotonic_ns()
        if self.config.queue_timeout is not None:
            request.queue_deadline = min(
                request.deadline, anyio.current_time() + self.config.queue_timeout
            )
        if has_handlers(ENQUEUED):
            execute(
                ENQUEUED,
                {"queue_depth": len(self._queue), "system_time": time.time_ns()},
                {
                    "pool_name": self.name,
                    "command": request.command,
                    "request_id": request.request_id,
                    "correlation_id": request.correlation_id,
                    "session_id": request.session_id,
                },
            )

    def _send(self, worker: WorkerHandle, request: Request) -> None:
        worker.in_flight += 1
        worker.pending[request.request_id] = request
        request.worker = worker
        worker.send(request.frame)
        if has_handlers(CALL_START) or has_handlers(CALL_STOP) or has_handlers(CALL_EXCEPTION):
            request.started = now = time.monotonic_ns()
            request.metadata = {
                "pool_name": self.name,
                "worker_id": worker.worker_id,
                "command": request.command,
                "request_id": request.request_id,
                "correlation_id": request.correlation_id,
                "session_id": request.session_id,
                "telemetry_span_context": request.request_id,
            }
            if has_handlers(CALL_START):
                execute(
                    CALL_START,
                    {"monotonic_time": now, "system_time": time.time_ns()},
                    request.metadata,
                )

    def _pick(self) -> WorkerHandle | None:
        """The least loaded worker with spare capacity, idle ones in rotation."""
        best: WorkerHandle | None = None
        workers = self._workers
        count = len(workers)
        start = self._rotation
        for offset in range(count):
            worker = workers[(start + offset) % count]
            if worker is None or not worker.accepting or worker.in_flight >= worker.capacity:
                continue
            if worker.in_flight == 0:
                self._rotation = (start + offset + 1) % count
                return worker
            if best is None or worker.in_flight < best.in_flight:
                best = worker
        return best

    def _release(self, worker: WorkerHandle) -> None:
        worker.in_flight -= 1
        if self._queue:
            self._dispatch_queue()

    def _dispatch_queue(self) -> None:
        """Hand free capacity to queued requests, first come first served."""
        queue = self._queue
        while queue:
            worker = self._pick()
            if worker is None:
                return
            request = queue.popleft()
            if (
                request.queue_deadline != math.inf
                and anyio.current_time() >= request.queue_deadline
            ):
                continue  # its caller is about to raise QueueTimeoutError; it must not run
            if has_handlers(DEQUEUED):
                execute(
                    DEQUEUED,
                    {
                        "queue_time": time.monotonic_ns() - request.enqueued,
                        "queue_depth": len(queue),
                    },
                    {
                        "pool_name": self.name,
                        "command": request.command,
                        "request_id": request.request_id,
                        "correlation_id": request.correlation_id,
                        "worker_id": worker.worker_id,
                    },
                )
            self._send(worker, request)
            if request.scope is not None:
                request.scope.deadline = request.deadline
            if request.arrived is not None:
                request.arrived.set()

    def _abandon(self, request: Request) -> None:
        """The caller stops waiting: unqueue the request, or cancel it on its worker."""
        worker = request.worker
        if worker is None:
            with contextlib.suppress(ValueError):
                self._queue.remove(request)
        elif not request.done.is_set():
            request.abandoned = True
            if request.request_id in worker.pending:
                worker.send(_wire.encode(_wire.Cancel(request.request_id)))

    def _timed_out(self, request: Request) -> Exception:
        if request.worker is not None:
            self._counters["timeouts"] += 1
            return WorkerTimeoutError(
                f"{request.command!r} got no answer from {request.worker.worker_id} "
                "before its deadline"
            )
        if self._closed:
            return PoolClosedError(f"pool {self.name!r} closed while the call was queued")
        self._counters["queue_timeouts"] += 1
        queue_time = time.monotonic_ns() - request.enqueued
        if has_handlers(QUEUE_TIMEOUT):
            execute(
                QUEUE_TIMEOUT,
                {"queue_time": queue_time, "queue_depth": len(self._queue)},
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

    # -- worker telemetry ----------------------------------------------------------

    def _push_configuration(self) -> None:
        self._generation = _registry.generation
        listened = [
            n for n in PYTHON_CALL_EVENTS if has_handlers(("pypit", "python", *n.split(".")))
        ]
        self._configure_frame = _wire.encode(_wire.Configure(call_events=listened))
        for worker in self._workers:
            if worker is not None and worker.ready:
                worker.send(self._configure_frame)

    def _on_events(self, worker: WorkerHandle, batch: _wire.Events) -> None:
        added = {"pool_name": self.name, "worker_id": worker.worker_id, "python_pid": worker.pid}
        for name, measurements, metadata in batch.events:
            event = ("pypit", "python", *name.split("."))
            if has_handlers(event):
                execute(event, measurements, {**metadata, **added})

    # -- workers -------------------------------------------------------------------

    async def _serve_slot(self, slot: int) -> None:
        """Keep one slot's worker running until the pool closes."""
        reason = "initial"
        previous_pid: int | None = None
        lost_at = 0
        while not self._closed:
            spawned = await self._spawn(slot, reason)
            ready = False
            if spawned is not None:
                handle, greeting = spawned
                try:
                    ready = await self._supervise(
                        slot, handle, greeting, reason, previous_pid, lost_at
                    )
                finally:
                    if handle.process.returncode is None:
                        handle.kill_group(signal.SIGKILL)
                        with anyio.CancelScope(shield=True):
                            await handle.process.wait()
                previous_pid = handle.pid if ready else previous_pid
            elif reason == "initial":
                self._startup_reported(ready=False)
            if self._is_closed():
                return
            if ready:
                self._counters["crashes"] += 1
                lost_at = time.monotonic_ns()
            else:
                await anyio.sleep(min(0.1 * 2 ** min(self._restarts[slot], 6), 5.0))
            self._restarts[slot] += 1
            reason = "restart"

    def _is_closed(self) -> bool:
        # A method, not the attribute: the flag changes across awaits.
        return self._closed

    def _startup_reported(self, *, ready: bool) -> None:
        self._startup_reports += 1
        if self._startup_reports == self.config.size:
            self._startup_done.set()

    async def _spawn(self, slot: int, reason: str) -> tuple[WorkerHandle, _Greeting] | None:
        worker_id = f"{self.name}_worker_{slot + 1}"
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
        }
        try:
            process = await anyio.open_process(
                [self.config.python, "-m", "pypit.worker"],
                stdin=DEVNULL,
                stdout=PIPE,
                stderr=PIPE,
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
            capacity=self.config.max_concurrency + self.config.prefetch,
            max_frame_size=self.config.max_frame_size,
            on_release=self._release,
            on_events=self._on_events,
            spawn_started=started,
        )
        handle.token = token
        self._workers[slot] = handle
        return handle, greeting

    async def _supervise(
        self,
        slot: int,
        handle: WorkerHandle,
        greeting: _Greeting,
        reason: str,
        previous_pid: int | None,
        lost_at: int,
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
                if previous_pid is not None and has_handlers(RESTARTED):
                    execute(
                        RESTARTED,
                        {
                            "downtime": time.monotonic_ns() - lost_at,
                            "restart_count": self._restarts[slot],
                        },
                        {
                            "pool_name": self.name,
                            "worker_id": handle.worker_id,
                            "previous_pid": previous_pid,
                            "new_pid": handle.pid,
                            "reason": "crash",
                        },
                    )
                if self._closed:
                    handle.request_stop()
                await self._run_ready(handle)
            returncode = await handle.reap(self.config.stop_grace if handle._closing else 0.5)
            handle.kill_group(signal.SIGKILL)
            # The last lines the worker wrote (its traceback, often) are
            # still in the pipes: read them before the drains are cancelled.
            with anyio.move_on_after(1.0):
                for done in drained:
                    await done.wait()
            tasks.cancel_scope.cancel()
        self._workers[slot] = None
        if handle.connection is not None:
            handle.connection.close()
        closing = handle._closing
        handle.fail_pending(crash_error(handle, returncode, closing))
        if ready:
            handle.connection_lost()
            if has_handlers(TERMINATED):
                execute(
                    TERMINATED,
                    {
                        "lifetime": time.monotonic_ns() - handle.ready_at,
                        "total_commands": handle.total_commands,
                    },
                    {
                        "node": _NODE,
                        "pool_name": self.name,
                        "worker_id": handle.worker_id,
                        "worker_pid": handle.pid,
                        "reason": _termination_reason(handle, returncode),
                        "planned": closing,
                        "exit_code": returncode,
                    },
                )
            if not closing:
                _log.warning(
                    "worker terminated unexpectedly; restarting",
                    pool_name=self.name,
                    worker_id=handle.worker_id,
                    worker_pid=handle.pid,
                    exit_code=returncode,
                    reason=_termination_reason(handle, returncode),
                )
        else:
            failure = "handshake_timeout"
            if handle.failure is not None:
                failure = handle.failure.reason
            elif returncode is not None:
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
            if reason == "initial":
                self._startup_reported(ready=False)
        return ready

    async def _handshake(
        self,
        handle: WorkerHandle,
        greeting: _Greeting,
        exited: anyio.Event,
        tasks: anyio.abc.TaskGroup,
    ) -> bool:
        with anyio.move_on_after(self.config.startup_timeout):
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
            if handle.failure is None:
                # Silent past the deadline: stuck in import or setup().
                handle.kill_group(signal.SIGKILL)
            return False
        if self._generation != _registry.generation:
            self._push_configuration()
        else:
            handle.send(self._configure_frame)
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
        while (
            handle.lost_reason is None and handle.process.returncode is None and not handle._closing
        ):
            await handle.changed.wait()
            handle.changed = anyio.Event()
        handle.accepting = False

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
        for slot in range(self.config.size):
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
        while self._queue:
            request = self._queue.popleft()
            request.error = PoolClosedError(f"pool {self.name!r} closed while the call was queued")
            request.done.set()
            if request.arrived is not None:
                request.arrived.set()
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
    if handle._closing:
        return "shutdown"
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

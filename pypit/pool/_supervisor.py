"""The supervisor: the pool's slots and the worker processes that fill them.

One task per slot spawns a worker, hand-shakes, watches it (exit, heartbeat,
age, memory, cancelled calls left unanswered), lets a broken channel
reconnect, and replaces the worker when it ends, by the restart policy (see
docs/supervision.md). It tells the scheduler whenever capacity changes; the
scheduler never calls it.
"""

from __future__ import annotations

import json
import random
import secrets
import signal
import sys
import time
from typing import Any, Final

import anyio
import anyio.abc
import attrs

from pypit import _wire
from pypit._errors import (
    PoolClosedError,
    PoolDegradedError,
    ProtocolError,
    UnknownWorkerError,
    WorkerStartError,
)
from pypit._log import _Logger
from pypit._signature import ArgumentCheck
from pypit.pool import _reports
from pypit.pool._channel import Connection
from pypit.pool._config import PoolConfig
from pypit.pool._control import Control
from pypit.pool._launch import Launcher, LaunchError
from pypit.pool._request import Request
from pypit.pool._scheduler import Scheduler
from pypit.pool._tasks import PoolTasks
from pypit.pool._tools import ToolDescription, from_wire
from pypit.pool._worker import WorkerHandle, crash_error

_EXIT_GRACE: Final = 0.2


@attrs.define(eq=False)
class Slot:
    """One place in the pool, kept across the workers that fill it."""

    index: int
    worker_id: str
    restarts: int = 0
    down: bool = False
    """Its starts fail: it serves nothing, and is retried with back-off until one succeeds."""
    failed_starts: int = 0
    """Starts that failed in a row."""
    down_at: int = 0
    failure: str = ""
    """What its last start failed with."""
    previous_pid: int | None = None
    lost_at: int = 0
    lost_reason: str = ""
    last_exit: str = ""
    """Why its last ready worker ended (the ``terminated`` event's reason)."""


class _Greeting:
    __slots__ = ("arrived", "connection", "pid")

    def __init__(self) -> None:
        self.arrived = anyio.Event()
        self.connection: Connection | None = None
        self.pid: int | None = None
        """The process spawned for this greeting: only it may present the token."""


class Supervisor:
    """The slots of one pool and their workers."""

    def __init__(
        self,
        config: PoolConfig,
        scheduler: Scheduler[WorkerHandle],
        control: Control,
        log: _Logger,
    ) -> None:
        self.config = config
        self.log = log
        self.name = config.name
        self.scheduler = scheduler
        self.control = control
        self.slots = [Slot(i, f"{config.name}_worker_{i + 1}") for i in range(config.size)]
        self.tools: dict[str, ToolDescription] = {}
        self.checks: dict[str, ArgumentCheck] = {}
        """The argument check of each tool whose signature is known (the others are called
        unchecked)."""
        self.closed = False
        self.launcher: Launcher | None = None
        self.tasks: PoolTasks | None = None
        self._expected: dict[str, _Greeting] = {}
        self._reconnecting: dict[str, WorkerHandle] = {}
        self._startup_reports = 0
        self._startup_done = anyio.Event()

    def handles(self) -> list[WorkerHandle | None]:
        """Each slot's worker handle (None while it has none)."""
        return self.scheduler.workers

    def worker_ids(self) -> list[str]:
        return [slot.worker_id for slot in self.slots]

    def ready_count(self) -> int:
        return sum(1 for w in self.handles() if w is not None and w.ready)

    def failures(self) -> dict[str, str]:
        """What the last start of each slot failed with, for slots whose last start failed."""
        return {slot.worker_id: slot.failure for slot in self.slots if slot.failure}

    def restarts(self) -> int:
        return sum(slot.restarts for slot in self.slots)

    def degraded(self) -> bool:
        return any(slot.down for slot in self.slots)

    async def start(self, tasks: PoolTasks, launcher: Launcher) -> int:
        """Start every slot; return once each worker is ready or failed its first start,
        with the number ready."""
        self.tasks = tasks
        self.launcher = launcher
        for slot in self.slots:
            tasks.start_soon(self._serve_slot, slot)
        await self._startup_done.wait()
        return self.ready_count()

    def stop(self) -> None:
        """Ask every worker to finish and exit (the pool closes)."""
        self.closed = True
        for worker in self.handles():
            if worker is not None:
                worker.request_stop()
                worker.changed.set()

    def _released(
        self,
        worker: WorkerHandle,
        request: Request,
        answer: _wire.Answer | None,
    ) -> None:
        """A call's answer came: the scheduler frees its place; a worker due for
        recycling is retired; the freed capacity goes to the queue."""
        self.scheduler.release(worker, request, answer)
        if worker.recycle_reason is not None:
            if not worker.in_flight and not worker.closing:
                worker.request_stop()
        elif (
            self.config.max_requests is not None
            and worker.total_commands >= self.config.max_requests
        ):
            self._recycle(worker, "max_requests")
        self.scheduler.dispatch()

    async def _serve_slot(self, slot: Slot) -> None:
        """Keep one slot's worker running until the pool closes.

        A worker that got ready and then ended, for whatever reason, is replaced at once,
        however often. A start that fails (spawn, import, ``setup()``, handshake, or an
        exit before ready) is retried after a back-off that doubles with each failure in
        a row, with jitter, up to ``restart_backoff_max``: the slot is degraded until a
        start succeeds, and keeps being tried while the pool is open.
        """
        reason = "initial"
        while not self.closed:
            spawned = await self._spawn(slot, reason)
            ready = False
            handle: WorkerHandle | None = None
            if spawned is not None:
                handle, greeting = spawned
                try:
                    ready = await self._supervise(slot, handle, greeting, reason)
                finally:
                    if handle.process.running:
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
                self.scheduler.counters["crashes"] += 1
                slot.previous_pid = handle.pid
                slot.lost_at = time.monotonic_ns()
                slot.lost_reason = _reports.termination_reason(handle, handle.process.returncode)
            else:
                await self._back_off(slot)
            slot.restarts += 1
            reason = "restart"

    async def _back_off(self, slot: Slot) -> None:
        """A start failed: the slot is degraded (if it was not already), and waits before
        the next start."""
        config = self.config
        slot.failed_starts += 1
        if not slot.down:
            slot.down = True
            slot.down_at = time.monotonic_ns()
            _reports.slot_degraded(self.log, self.name, slot)
            if all(other.down for other in self.slots):
                # Nothing can serve what waits, nor what comes, until a start succeeds.
                self.scheduler.degraded = self._degraded_error
                self.scheduler.fail_queue(self._degraded_error)
        delay = config.restart_backoff * 2 ** min(slot.failed_starts - 1, 32)
        await anyio.sleep(min(config.restart_backoff_max, delay) * random.uniform(0.5, 1.0))

    def _started(self, slot: Slot, handle: WorkerHandle) -> None:
        """A worker got ready: a degraded slot serves again."""
        slot.failure = ""
        if slot.down:
            slot.down = False
            self.scheduler.degraded = None
            _reports.slot_recovered(self.log, self.name, slot, handle)
        slot.failed_starts = 0

    def _degraded_error(self) -> PoolDegradedError:
        failures = "; ".join(f"{slot.worker_id}: {slot.failure}" for slot in self.slots)
        return PoolDegradedError(
            f"pool {self.name!r} is degraded: no worker could start since every slot's "
            f"starts began to fail ({failures}); the slots keep being retried, see the log"
        )

    def _is_closed(self) -> bool:
        # A method, not the attribute: the flags change across awaits. A pool that stopped
        # taking calls (it drains) replaces no worker: nothing is left for a new one.
        return self.closed or self.scheduler.closed

    def _startup_reported(self, *, ready: bool) -> None:
        self._startup_reports += 1
        if self._startup_reports == self.config.size:
            self._startup_done.set()

    def _settings(self, worker_id: str) -> dict[str, str]:
        """What every worker is told at start, wherever it runs (the launcher adds how it
        reaches the pool)."""
        return {
            "PYTHONUNBUFFERED": "1",
            "PYPIT_WORKER_ADAPTER": self.config.adapter,
            "PYPIT_WORKER_MAX_CONCURRENCY": str(self.config.max_concurrency),
            "PYPIT_WORKER_MAX_FRAME_SIZE": str(self.config.max_frame_size),
            "PYPIT_WORKER_SYS_PATH": json.dumps([p for p in sys.path if p]),
            "PYPIT_WORKER_RECONNECT_WINDOW": str(self.config.reconnect_window),
            "PYPIT_WORKER_CONFIGURE": self.control.initial(worker_id),
            "PYPIT_WORKER_BUFFER_SIZE": str(self.config.telemetry_buffer_size),
            "PYPIT_WORKER_MAX_VM_BYTES": str(self.config.max_vm_bytes or ""),
        }

    async def _spawn(self, slot: Slot, reason: str) -> tuple[WorkerHandle, _Greeting] | None:
        assert self.launcher is not None
        worker_id = slot.worker_id
        started = time.monotonic_ns()
        _reports.spawn_started(self.name, worker_id, reason)
        token = secrets.token_hex(16)
        greeting = _Greeting()
        self._expected[token] = greeting
        try:
            process = await self.launcher.launch(
                slot.index, worker_id, token, self._settings(worker_id)
            )
        except Exception as exc:
            # Whatever a launcher raises (out of file descriptors, a cluster that refuses)
            # is a failed start, retried with back-off: never the end of the pool.
            del self._expected[token]
            reason = exc.reason if isinstance(exc, LaunchError) else "exec_failed"
            slot.failure = f"{reason}: {exc}"
            _reports.launch_failed(self.log, self.name, worker_id, started, reason, slot.failure)
            return None
        except BaseException:
            del self._expected[token]
            raise
        greeting.pid = process.pid
        if greeting.connection is not None and not greeting.connection.is_from(process.pid):
            # It greeted before the launch returned (on a busy loop, a worker may): only now
            # can its peer be checked. Not the process started: the start fails.
            greeting.connection.close()
            greeting.connection = None
            self._refuse()
        handle = WorkerHandle(
            pool_name=self.name,
            worker_id=worker_id,
            process=process,
            max_concurrency=self.config.max_concurrency,
            max_frame_size=self.config.max_frame_size,
            on_release=self._released,
            on_events=self.control.on_events,
            log=self.control.worker_log(worker_id, process.pid),
            cancel_grace=self.config.cancel_grace,
            spawn_started=started,
            slot=slot.index,
        )
        handle.token = token
        self.scheduler.workers[slot.index] = handle
        return handle, greeting

    async def _supervise(
        self, slot: Slot, handle: WorkerHandle, greeting: _Greeting, reason: str
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
                self._started(slot, handle)
                if reason == "restart" and slot.previous_pid is not None:
                    _reports.restarted(self.name, slot, handle)
                if self.closed:
                    handle.request_stop()
                tasks.start_soon(self._watch_health, handle)
                tasks.start_soon(handle.enforce_cancels)
                await self._run_ready(handle)
            returncode = await handle.reap(self.config.stop_grace if handle.closing else 0.5)
            handle.kill_group(signal.SIGKILL)
            # The last lines the worker wrote (its traceback, often) are
            # still in the pipes: read them before the drains are cancelled.
            with anyio.move_on_after(1.0):
                for done in drained:
                    await done.wait()
            tasks.cancel_scope.cancel()
        self.scheduler.workers[slot.index] = None
        # Requests that waited for this worker (strict affinity) may go elsewhere now.
        self.scheduler.dispatch()
        if handle.connection is not None:
            handle.connection.close()
        closing = handle.closing
        handle.fail_pending(crash_error(handle, returncode, closing and self.closed))
        if ready:
            slot.last_exit = _reports.termination_reason(handle, returncode)
            _reports.terminated(self.log, self.name, handle, returncode, closing=self.closed)
        else:
            _reports.failed_to_start(
                self.log,
                self.name,
                slot,
                handle,
                returncode,
                startup_timeout=self.config.startup_timeout,
                closing=self.closed,
            )
            if reason == "initial":
                self._startup_reported(ready=False)
        return ready

    async def _watch_health(self, handle: WorkerHandle) -> None:
        """Heartbeat, age and memory of one worker, checked every heartbeat interval (every
        second when the heartbeat is off)."""
        config = self.config
        interval = config.heartbeat_interval or 1.0
        while not handle.closing and handle.kill_reason is None:
            await anyio.sleep(interval)
            if handle.lost_reason is not None or not handle.process.reachable:
                # Reconnecting, or on a node that does not answer for now: the window, not
                # the heartbeat, bounds that.
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
        if handle.recycle_reason is not None or handle.closing or handle.kill_reason:
            return
        handle.recycle_reason = reason
        handle.accepting = False
        if not handle.rss_bytes:
            handle.measure_rss()
        self.log.info(
            "recycling worker",
            worker_id=handle.worker_id,
            worker_pid=handle.pid,
            reason=reason,
        )
        if not handle.in_flight:
            handle.request_stop()
        elif self.tasks is not None:
            self.tasks.start_soon(self._bound_drain, handle)

    async def _bound_drain(self, handle: WorkerHandle) -> None:
        await anyio.sleep(self.config.shutdown_timeout)
        if not handle.closing and handle.process.running:
            handle.request_stop()

    async def recycle_worker(self, worker_id: str) -> None:
        """See :meth:`Pool.recycle_worker`."""
        handle = next((w for w in self.scheduler.workers if w and w.worker_id == worker_id), None)
        if handle is None or not handle.ready:
            raise UnknownWorkerError(f"no live worker {worker_id!r} in pool {self.name!r}")
        slot = self.slots[int(worker_id.rsplit("_", 1)[1]) - 1]
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
                current = self.scheduler.workers[slot.index]
                if current is not None and current is not handle and current.accepting:
                    return
                if self.closed:
                    raise PoolClosedError(f"pool {self.name!r} closed while recycling {worker_id}")
                await anyio.sleep(0.01)
        raise WorkerStartError(
            f"pool {self.name!r}: no replacement for {worker_id} got ready within {bound:g}s; "
            "the slot keeps trying (see the log for its errors)"
        )

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
                or self.closed
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
        self.control.greet(handle)
        if not self.tools:
            self._learn_tools(handle)
        _reports.spawned(self.name, handle)
        self.scheduler.dispatch()
        return True

    def _learn_tools(self, handle: WorkerHandle) -> None:
        """The tools of the first worker ready, and the check of each one's arguments."""
        self.tools = {t.name: from_wire(t) for t in handle.tools.values()}
        for name, tool in self.tools.items():
            if tool.parameters is None:
                continue
            try:
                self.checks[name] = ArgumentCheck(name, tool.parameters, handle.tools[name].bound)
            except ValueError as exc:
                # Only a broken worker sends these: its calls go unchecked, and fail in the
                # worker if they do not fit.
                self.log.warning(
                    "the parameters the worker reported are not a signature: calls of the "
                    "tool are not checked",
                    tool=name,
                    error=str(exc),
                    **_reports.fields(handle),
                )

    async def _run_ready(self, handle: WorkerHandle) -> None:
        """Wait while the worker serves; give a broken channel a chance to come back."""
        while True:
            while handle.lost_reason is None and handle.process.running and not handle.closing:
                await handle.changed.wait()
                handle.changed = anyio.Event()
            if handle.lost_reason == "protocol_error":
                handle.kill("protocol_error")
                break
            if handle.closing:
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
            if not handle.process.running:
                return False
            with anyio.move_on_after(window):
                while handle.lost_reason is not None and handle.process.running:
                    await handle.changed.wait()
                    handle.changed = anyio.Event()
        finally:
            self._reconnecting.pop(handle.token, None)
        if handle.lost_reason is None:
            return True
        if handle.process.running:
            handle.kill("connection_lost")
        return False

    def _refuse(self) -> bool:
        self.log.warning("refused a connection to the pool's socket")
        return False

    def on_greeting(self, connection: Connection, payload: bytes) -> bool:
        """A new connection's first frame: accept it if it is the Hello of a worker we started."""
        try:
            hello = _wire.decode_from_worker(payload)
        except ProtocolError:
            hello = None
        if not isinstance(hello, _wire.Hello):
            return self._refuse()
        handle = self._reconnecting.get(hello.token)
        # Only the worker's own process may take its place back: a stranger that presents
        # the token is refused and leaves the worker's window open.
        if handle is not None and handle.pid == hello.pid and connection.is_from(handle.pid):
            del self._reconnecting[hello.token]
            handle.resume(
                connection, hello.running, _wire.encode(self.control.message(handle.worker_id))
            )
            # It accepts calls again: whatever waited for it goes now.
            self.scheduler.dispatch()
            _reports.reconnected(self.log, self.name, handle)
            return True
        greeting = self._expected.get(hello.token)
        if (
            greeting is None
            or greeting.connection is not None
            or (greeting.pid is not None and not connection.is_from(greeting.pid))
        ):
            return self._refuse()
        greeting.connection = connection
        greeting.arrived.set()
        return True

"""The pool's public face: :class:`Pool` and :func:`open_pool`.

A pool is four parts under one facade: the scheduler (``_scheduler``: the
queue, sessions, which worker runs each call), the supervisor
(``_supervisor``: slots, worker processes, restarts, recycling), the
control plane (``_control``: worker telemetry and log levels) and the calls
(``_calls``: how a call is checked, encoded, placed and settled, for
``execute``, streams and maps alike). Everything runs on one event loop, so
none of them needs a lock.
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import attrs

from pypit._checks import exact_str
from pypit._errors import (
    PoolClosedError,
    WorkerCrashedError,
    WorkerStartError,
)
from pypit._log import Levels, get_logger
from pypit.pool import _events
from pypit.pool._calls import Calls
from pypit.pool._channel import signal_factory
from pypit.pool._config import AFFINITIES, Affinity, PoolConfig, make_config
from pypit.pool._control import Control
from pypit.pool._launch import Launcher, LocalLauncher
from pypit.pool._map import Map
from pypit.pool._progress import Progress
from pypit.pool._scheduler import Limits, Scheduler, SessionInfo
from pypit.pool._status import WorkerStatus, worker_status
from pypit.pool._stream import Stream
from pypit.pool._supervisor import Supervisor
from pypit.pool._tasks import PoolTasks
from pypit.pool._tools import ToolDescription
from pypit.pool._worker import WorkerHandle

__all__ = [
    "Pool",
    "PoolStatus",
    "SessionInfo",
    "ToolDescription",
    "WorkerStatus",
    "open_pool",
]


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


class Pool:
    """A pool of worker processes serving one adapter. Open it with :func:`open_pool`."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.name = config.name
        levels = Levels(config.log_level, config.log_categories)
        self._log = get_logger("pool", levels, pool_name=config.name)
        self._scheduler: Scheduler[WorkerHandle] = Scheduler(
            config.name,
            config.size,
            Limits(
                max_queue_size=config.max_queue_size,
                queue_timeout=config.queue_timeout,
                prefetch=config.prefetch,
                prefetch_below=config.prefetch_below,
                max_sessions=config.max_sessions,
                max_frame_size=config.max_frame_size,
            ),
            log=self._log,
        )
        worker_ids = [f"{config.name}_worker_{i + 1}" for i in range(config.size)]
        self._control = Control(config, lambda: self._scheduler.workers, worker_ids, levels)
        self._supervisor = Supervisor(config, self._scheduler, self._control, self._log)
        self._calls = Calls(config, self._scheduler, self._supervisor, self._control)
        self._launcher = _launcher(config)

    # -- calls ---------------------------------------------------------------------------

    async def execute(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
        affinity: Affinity | None = None,
        idempotent: bool = False,
    ) -> Any:
        """Run ``command`` on a worker and return its result.

        ``args``: a dict is passed as keyword arguments, ``None`` as none,
        anything else as one positional argument; values must arrive as they
        are sent: dict, list, str, bytes, int, float, bool and None (tuples
        arrive as lists; docs/configuration.md, "What travels"). ``timeout``
        bounds the whole call, queueing included.
        ``session_id`` routes the call to the worker that served the session
        last, as ``affinity`` (default: the pool's) says. ``idempotent=True``
        allows one retry on another worker if the worker crashes with the
        call in flight; other calls never run twice.

        ``command``, ``session_id`` and ``correlation_id`` are strs (a subclass of str is
        taken as the plain str it holds).

        Raises:
            TypeError, ValueError: an argument of the wrong type or out of range.
            UnknownCommandError: no tool of that name (before anything is sent).
            ArgumentsError: ``args`` do not fit the tool's signature (before anything is
                sent; the types of the values are not checked).
            PoolSaturatedError: the queue is full.
            QueueTimeoutError: no worker came free in time; the call never ran.
            WorkerTimeoutError: the worker did not answer in time.
            WorkerCrashedError: the worker died with the call in flight.
            ToolError: the tool raised; it carries the remote traceback.
            SerializationError, FrameTooLargeError: arguments or result cannot travel.
            PoolClosedError: the pool is closing.
            PoolDegradedError: every slot's starts fail (the message says with what).
            SessionUnavailableError: ``strict_fail_fast`` and the session's worker is busy.
        """
        if affinity is not None and affinity not in AFFINITIES:
            choices = ", ".join(map(repr, AFFINITIES))
            raise ValueError(f"affinity must be one of {choices} or None, not {affinity!r}")
        if type(idempotent) is not bool:
            raise TypeError(f"idempotent must be True or False, not {idempotent!r}")
        request = self._calls.request(
            command, args, timeout, session_id, correlation_id, stream=False
        )
        if not idempotent:
            return await self._calls.call(request, affinity, None)
        try:
            return await self._calls.call(request, affinity, None)
        except WorkerCrashedError as crash:
            self._log.warning(
                "retrying an idempotent call on another worker after a crash",
                command=request.command,
                worker_id=crash.worker_id,
            )
            retry = self._calls.request(
                request.command,
                args,
                None,
                request.session_id,
                request.correlation_id,
                stream=False,
            )
            retry.deadline = retry.queue_deadline = request.deadline
            return await self._calls.call(retry, affinity, crash.worker_id)

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
            self.name,
            self._scheduler,
            prepare=functools.partial(
                self._calls.request, command, args, timeout, session_id, correlation_id, stream=True
            ),
            submit=functools.partial(self._calls.submit, affinity=self.config.affinity, avoid=None),
            window=self.config.stream_window,
            timeout=timeout,
        )

    def map(
        self,
        command: str,
        inputs: Iterable[Any],
        *,
        chunksize: int | None = None,
        buffersize: int | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
        return_exceptions: bool = False,
        progress: Progress = None,
    ) -> Map:
        """Run ``command`` once per input, as :class:`~pypit.pool.Map` of the results in
        the order of the inputs::

            async with pool.map("predict", ({"x": x} for x in range(1000))) as results:
                async for result in results:
                    ...

        Each input is what ``execute`` takes as ``args``. The iterable is pulled lazily:
        at most ``buffersize`` frames (default: 8 per worker slot) are out at once, two
        or four per slot sent, each of ``chunksize`` inputs (default: chosen from the command's
        learned cost: one for slow commands). ``timeout`` is per input: a frame of n inputs has
        n times ``timeout`` from the moment it is sent to a worker. The first error is raised
        in input order, and the map stops; ``return_exceptions=True`` yields errors as
        results instead. ``progress`` is a callable ``(done, total)``, ``"tqdm"`` or
        ``"rich"``. Leaving the block cancels what is in flight (docs/calls.md).
        """
        return Map(self._calls, command, inputs, ordered=True, chunksize=chunksize,
                   buffersize=buffersize, timeout=timeout, session_id=session_id,
                   correlation_id=correlation_id, return_exceptions=return_exceptions,
                   progress=progress)  # fmt: skip

    def map_unordered(
        self,
        command: str,
        inputs: Iterable[Any],
        *,
        chunksize: int | None = None,
        buffersize: int | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
        return_exceptions: bool = False,
        progress: Progress = None,
    ) -> Map:
        """:meth:`map`, with the results as they arrive (those of one frame in input
        order); the first error to arrive is raised."""
        return Map(self._calls, command, inputs, ordered=False, chunksize=chunksize,
                   buffersize=buffersize, timeout=timeout, session_id=session_id,
                   correlation_id=correlation_id, return_exceptions=return_exceptions,
                   progress=progress)  # fmt: skip

    def status(self) -> PoolStatus:
        """A snapshot of the queue, the workers and the counters."""
        ready = [w for w in self._scheduler.workers if w is not None and w.accepting]
        busy = sum(1 for w in ready if w.in_flight)
        return PoolStatus(
            pool_name=self.name,
            queue_depth=self._scheduler.queue_depth(),
            available_workers=len(ready) - busy,
            busy_workers=busy,
            total_workers=len(ready),
            in_flight=self._scheduler.in_flight(),
            max_queue_size=self.config.max_queue_size,
            size=self.config.size,
            closed=self._calls.closed,
            restarts=self._supervisor.restarts(),
            degraded=self._supervisor.degraded(),
            **self._scheduler.counters,
        )

    def emit_status(self) -> None:
        """Emit ``("pypit", "pool", "status")`` now."""
        if not _events.listened(_events.STATUS):
            return
        status = self.status()
        _events.emit(
            _events.STATUS,
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
        """The tools the workers reported, by name: each one's description, parameters
        (``tool.signature()`` shows them as Python writes them), and whether it streams and
        whether it is async."""
        return dict(self._supervisor.tools)

    def workers(self) -> dict[str, int]:
        """The workers serving now (started and not stopping): worker id to process id."""
        return {
            w.worker_id: w.pid for w in self._scheduler.workers if w is not None and w.accepting
        }

    def worker_status(self) -> tuple[WorkerStatus, ...]:
        """Each slot's worker, in slot order: its state, pid, node, calls served and in
        flight, uptime, restarts and why its last worker ended (see
        :class:`WorkerStatus`)."""
        return worker_status(self._supervisor)

    def session(self, session_id: str) -> SessionInfo | None:
        """Where ``session_id`` lives: its worker, and how often it had to move.

        ``calls`` counts the calls made with the session, wherever they ran;
        ``rehomed`` counts the times the session moved to another worker
        process because its own was gone (it died, or was recycled): state the
        worker kept for the session was lost. A call that ran on another worker
        while the session's was busy (``affinity="hint"``) does not move it.
        """
        session_id = exact_str("session_id", session_id)
        return self._scheduler.session(session_id, self._supervisor.worker_ids())

    # -- worker telemetry, log levels, recycling ---------------------------------------------

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
        workers start with it. Raises :class:`~pypit.AcknowledgeTimeoutError` (a
        ``TimeoutError``) naming the workers that did not acknowledge in ``timeout``
        seconds, :class:`~pypit.UnknownWorkerError` (a ``LookupError``) for an unknown
        worker, :class:`~pypit.PoolClosedError` once the pool is closed.
        """
        worker_id = exact_str("worker_id", worker_id, optional=True)
        self._calls.check_open()
        await self._control.configure_telemetry(
            enabled=enabled,
            sampling_rate=sampling_rate,
            allow=allow,
            deny=deny,
            worker_id=worker_id,
            timeout=timeout,
        )

    async def set_worker_level(self, worker_id: str, level: str, *, timeout: float = 5.0) -> None:
        """Set the log level inside ``worker_id``'s process (its stdlib logging and
        structlog), live; the pool logs that worker's records at it too. It survives
        restarts of that worker. Raises :class:`~pypit.PoolClosedError` once the pool is
        closed."""
        worker_id = exact_str("worker_id", worker_id)
        self._calls.check_open()
        await self._control.set_worker_level(worker_id, level, timeout)

    async def reset_worker_level(self, worker_id: str, *, timeout: float = 5.0) -> None:
        """Give ``worker_id`` back the pool's level for the ``worker`` category (or, without
        one, the level the worker started with). Raises :class:`~pypit.PoolClosedError`
        once the pool is closed."""
        worker_id = exact_str("worker_id", worker_id)
        self._calls.check_open()
        await self._control.reset_worker_level(worker_id, timeout)

    async def recycle_worker(self, worker_id: str) -> None:
        """Retire ``worker_id`` by hand: it drains, stops and is replaced (reason ``manual``).

        Returns once the replacement is ready. Raises
        :class:`~pypit.UnknownWorkerError` (a ``LookupError``) for an unknown or stopped
        worker, and :class:`~pypit.WorkerStartError` when no
        replacement got ready in time: the old worker's drain and stop
        (``shutdown_timeout`` and twice ``stop_grace``), then ``startup_timeout``
        and ``restart_backoff_max`` for the new one. The slot keeps trying.
        :class:`~pypit.PoolClosedError` once the pool is closed.
        """
        worker_id = exact_str("worker_id", worker_id)
        self._calls.check_open()
        await self._supervisor.recycle_worker(worker_id)

    # -- opening and closing ---------------------------------------------------------

    async def _open(self, tasks: PoolTasks) -> None:
        started = time.monotonic_ns()
        self._calls.signal = signal_factory()
        await self._launcher.open(tasks, self._supervisor.on_greeting)
        ready = await self._supervisor.start(tasks, self._launcher)
        _events.emit(
            _events.INITIALIZED,
            {
                "duration": time.monotonic_ns() - started,
                "total_workers": self.config.size,
                "ready_workers": ready,
            },
            {"pool_name": self.name, "adapter": self.config.adapter, "node": _events.NODE},
        )
        if not ready:
            raise WorkerStartError(
                f"pool {self.name!r}: none of {self.config.size} workers could start "
                f"{self.config.adapter}:",
                self._supervisor.failures(),
            )
        if self.config.status_interval:
            tasks.start_soon(self._emit_status_periodically)

    async def _emit_status_periodically(self) -> None:
        while True:
            await anyio.sleep(self.config.status_interval)
            self.emit_status()

    async def aclose(self) -> None:
        """Stop taking calls, drain those in flight, stop every worker."""
        await self._close()

    async def _close(self, interrupted: BaseException | None = None) -> None:
        """Stop taking calls and stop every worker. Calls in flight drain first, for up to
        ``shutdown_timeout``, unless the pool's block was ``interrupted`` (left by an
        exception or a cancellation, Ctrl-C included): then they are cancelled at once, as
        their callers are gone or going, and the workers stop within ``stop_grace``."""
        if self._calls.closed:
            return
        self._calls.closed = self._scheduler.closed = True
        self._scheduler.fail_queue(self._scheduler.closed_error)
        if interrupted is not None:
            reason = type(interrupted).__name__
            cancelled = self._scheduler.cancel_in_flight(
                lambda: PoolClosedError(f"pool {self.name!r} stopped ({reason}): call cancelled")
            )
            if cancelled:
                self._log.info(
                    f"stopping: cancelling {cancelled} call{'' if cancelled == 1 else 's'}",
                    calls=cancelled,
                    reason=reason,
                )
        else:
            # Calls waiting in a worker are withdrawn; those already started drain.
            self._scheduler.withdraw_waiting()
            if running := self._scheduler.in_flight():
                self._log.info(
                    f"stopping: waiting for {running} call{'' if running == 1 else 's'} "
                    f"(shutdown_timeout={self.config.shutdown_timeout:g}s)",
                    calls=running,
                )
            with anyio.move_on_after(self.config.shutdown_timeout):
                while any(w is not None and w.pending for w in self._scheduler.workers):
                    await anyio.sleep(0.005)
        self._supervisor.stop()

    def _kill(self) -> None:
        """Kill every worker now (the pool was interrupted again while it stopped): the stop
        under way ends as soon as they are reaped."""
        workers = [w for w in self._scheduler.workers if w is not None]
        self._log.warning(
            f"stopping now: killing {len(workers)} worker{'' if len(workers) == 1 else 's'}",
            workers=len(workers),
        )
        self._supervisor.stop()
        for worker in workers:
            worker.kill_group(signal.SIGKILL)

    async def _stopped(self) -> None:
        """Wait until every worker process is reaped (bounded by the stop's own bounds)."""
        config = self.config
        with anyio.move_on_after(config.shutdown_timeout + 3 * config.stop_grace + 5):
            while any(w is not None for w in self._scheduler.workers):
                await anyio.sleep(0.01)

    async def _cleanup(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._launcher.close()


def kill_workers(pool: Pool) -> None:
    """Kill every worker of ``pool`` now, on its loop: the blocking facade's answer to a
    second Ctrl-C while the pool stops (see ``Pool._kill``)."""
    pool._kill()


def _launcher(config: PoolConfig) -> Launcher:
    """Where the pool's workers run: processes of this machine, or Ray actors."""
    if config.ray is None:
        return LocalLauncher(config)
    # Imported here: Ray is an optional dependency, and a heavy import.
    from pypit.pool._ray import RayLauncher

    return RayLauncher(config, config.ray)


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
    block normally drains calls in flight (for up to ``shutdown_timeout``),
    stops the workers and reaps them. Leaving it by an exception or a
    cancellation (Ctrl-C included) cancels the calls in flight instead of
    waiting for them, and stops the workers within ``stop_grace``. Other
    options are the fields of :class:`PoolConfig`.
    """
    pool = Pool(make_config(adapter, size, name, options))
    try:
        async with anyio.create_task_group() as task_group:
            tasks = PoolTasks(task_group)
            interrupted: BaseException | None = None
            try:
                await pool._open(tasks)
                yield pool
            except BaseException as exc:
                interrupted = exc
                raise
            finally:
                try:
                    with anyio.CancelScope(shield=True):
                        await pool._close(interrupted)
                        await pool._stopped()
                except BaseException:
                    # Interrupted again while it stopped (a second Ctrl-C): kill the
                    # workers, and leave at once.
                    pool._kill()
                    raise
                finally:
                    tasks.end()
    except BaseExceptionGroup as group:
        # The pool's own tasks never raise, so a group holds the one error of the caller's
        # block (or of opening): raise it as the caller wrote it. On trio a Ctrl-C may land
        # in one of the pool's tasks too: it leaves as the KeyboardInterrupt it is.
        error = _the_error(group)
        if error is None:
            raise
        raise error from error.__cause__
    finally:
        await pool._cleanup()


def _the_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The exception a group of the pool's task group stands for: a KeyboardInterrupt
    among its exceptions (nested groups included), else its only exception; None if it
    holds several."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    interrupt = next((e for e in leaves if isinstance(e, KeyboardInterrupt)), None)
    if interrupt is not None:
        return interrupt
    return leaves[0] if len(leaves) == 1 else None

"""The scheduler: where each call waits and which worker runs it.

Pure, synchronous code: no tasks, no processes, no I/O but the frames it hands
to :meth:`Worker.send`. Everything it does happens between two awaits of the
pool's event loop, so it needs no lock.

A call is *waiting* from the moment it is accepted until a worker starts it.
It waits in the pool's FIFO queue, or, for a command known to be quick, in a
busy worker that will run it next (prefetch); either way it counts in
:meth:`Scheduler.queue_depth`, which ``max_queue_size`` bounds. Whenever
capacity may have changed -- a call answered, a worker ready, resumed, retired
or gone -- the supervisor calls :meth:`Scheduler.dispatch`, the one place
that hands queued calls to workers, so no path can forget to.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

import anyio
import attrs

from pypit import _wire
from pypit._errors import (
    PoolClosedError,
    PoolDegradedError,
    PoolSaturatedError,
    QueueTimeoutError,
    SessionUnavailableError,
    WorkerTimeoutError,
)
from pypit._log import _Logger, get_logger
from pypit.pool import _events
from pypit.pool._request import Request, Worker

W = TypeVar("W", bound=Worker)

_MAX_COMMANDS: Final = 10_000
COUNTERS: Final = (
    "requests",
    "completed",
    "failed",
    "rejected",
    "queue_timeouts",
    "timeouts",
    "crashes",
)


@attrs.frozen
class SessionInfo:
    """Where a session lives, from :meth:`Pool.session`."""

    session_id: str
    worker_id: str
    worker_pid: int
    calls: int
    rehomed: int


@attrs.define(eq=False)
class _Session:
    slot: int
    worker_pid: int
    calls: int = 1
    rehomed: int = 0


@attrs.frozen
class Limits:
    """The options the scheduler applies (see :class:`~pypit.pool.PoolConfig`)."""

    max_queue_size: int
    queue_timeout: float | None = None
    prefetch: int = 2
    prefetch_below: float = 0.001
    max_sessions: int = 10_000
    max_frame_size: int = 64 * 1024 * 1024


class Scheduler(Generic[W]):
    """The queue, the session table, and the placing of calls on workers.

    ``workers`` has one entry per slot (None while the slot has no worker);
    the supervisor fills it. ``clock`` is the event loop's clock (seconds),
    the one deadlines are measured on; ``log`` is the pool's logger.
    """

    def __init__(
        self,
        pool_name: str,
        size: int,
        limits: Limits,
        clock: Callable[[], float] = anyio.current_time,
        log: _Logger | None = None,
    ) -> None:
        self.pool_name = pool_name
        self._log = log if log is not None else get_logger("pool", pool_name=pool_name)
        self.limits = limits
        self.clock = clock
        self.workers: list[W | None] = [None] * size
        self.queue: deque[Request] = deque()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.closed = False
        self.degraded: Callable[[], PoolDegradedError] | None = None
        """Set while every slot is down: the error a call gets instead of waiting."""
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._targeted = 0  # queued requests that wait for one worker (strict affinity)
        self._rotation = 0
        # What each command costs a worker (ns, moving average of the worker's own
        # measure): only commands known to be quick may wait in a busy worker.
        self._cost: dict[str, float] = {}
        self._bytes: dict[str, float] = {}
        self._quick_below = int(limits.prefetch_below * 1e9)

    # -- accepting ---------------------------------------------------------------------

    def submit(self, request: Request, affinity: str, avoid: str | None = None) -> None:
        """Start the request on a worker with a free slot, or let it wait: in a worker
        that will run it next (prefetch, for quick commands) or in the pool's queue.

        Raises:
            PoolSaturatedError: it would wait and ``max_queue_size`` calls already do.
            SessionUnavailableError: ``strict_fail_fast`` and its session's worker is busy.
            PoolDegradedError: it would wait and every slot is down.
        """
        self.counters["requests"] += 1
        # A frame of a map with a timeout is never prefetched: its time runs from when it is
        # sent, and waiting in a busy worker behind another frame would spend it.
        request.quick = (
            request.chunks is None
            and not request.budget
            and self.is_quick(request.command, request.inputs)
        )
        target = None if request.session_id is None else self._session_worker(request)
        # Calls that wait for one worker (strict affinity) do not hold up the others: a
        # call may start at once unless something queued could be served first.
        blocked = self._targeted != len(self.queue)
        wait_for = None
        if target is not None:
            if target.accepting and target.in_flight < target.max_concurrency:
                if affinity != "hint" or not blocked:
                    self._send(target, request)
                    return
            elif affinity == "strict_fail_fast":
                self.counters["rejected"] += 1
                raise SessionUnavailableError(
                    f"session {request.session_id!r} is served by {target.worker_id}, "
                    "which cannot take another call now"
                )
            if affinity == "strict":
                wait_for = target
                if target.accepting and not self.queue and self._has_room(target, request.quick):
                    self._prefetch(target, request)
                    return
        if wait_for is None and not blocked:
            # Behind calls waiting for their worker, only a free slot will do: a call
            # prefetched into that worker would pass them.
            worker = self._pick(avoid, request.quick and not self.queue)
            if worker is not None:
                if worker.in_flight < worker.max_concurrency:
                    self._send(worker, request)
                else:
                    self._prefetch(worker, request)
                return
        if self.degraded is not None:
            self.counters["rejected"] += 1
            raise self.degraded()
        self._refuse_if_saturated(request)
        self._enqueued(request)
        self.queue.append(request)
        if wait_for is not None:
            request.target = wait_for
            self._targeted += 1

    def _prefetch(self, worker: W, request: Request) -> None:
        """Send a request to wait in a busy worker; it counts as queued until it starts."""
        self._refuse_if_saturated(request)
        self._enqueued(request)
        self._send(worker, request)

    def _refuse_if_saturated(self, request: Request) -> None:
        depth = self.queue_depth()
        limit = self.limits.max_queue_size
        if depth < limit:
            return
        self.counters["rejected"] += 1
        if _events.listened(_events.SATURATED):
            ready = [w for w in self.workers if w is not None and w.accepting]
            busy = sum(1 for w in ready if w.in_flight)
            _events.saturated(
                self.pool_name, request.command, depth, limit, len(ready) - busy, busy
            )
        raise PoolSaturatedError(
            f"pool {self.pool_name!r} is saturated: {depth} calls waiting (max_queue_size={limit})"
        )

    def _enqueued(self, request: Request) -> None:
        """The request cannot start at once and is about to wait: its queue time and queue
        deadline start now."""
        request.enqueued = time.monotonic_ns()
        if self.limits.queue_timeout is not None:
            request.queue_deadline = min(request.deadline, self.clock() + self.limits.queue_timeout)
        _events.enqueued(self.pool_name, request, self.queue_depth() + 1)

    def queue_depth(self) -> int:
        """Requests accepted and not started: in the pool's queue, or waiting in a worker
        behind ``max_concurrency`` calls sent before them."""
        depth = len(self.queue)
        for worker in self.workers:
            if worker is None or worker.in_flight <= worker.max_concurrency:
                continue
            if not worker.withdrawn:
                depth += worker.in_flight - worker.max_concurrency
                continue
            # A withdrawn call stops counting only while it is behind max_concurrency
            # calls: once a slot freed before the withdrawal arrived, it may have started,
            # and the calls behind it are the ones waiting.
            for request in itertools.islice(worker.pending.values(), worker.max_concurrency, None):
                if not request.withdrawn:
                    depth += 1
        return depth

    def in_flight(self) -> int:
        """Calls running in workers (those waiting in a worker count as queued)."""
        return sum(min(w.in_flight, w.max_concurrency) for w in self.workers if w is not None)

    # -- prefetch ------------------------------------------------------------------------

    def is_quick(self, command: str, inputs: int = 1) -> bool:
        """Whether calls of ``command`` (with ``inputs`` inputs: a map's frame) may wait in
        a busy worker: they are known to take less than ``prefetch_below`` (with
        ``prefetch_below=0``, any call)."""
        if not self.limits.prefetch:
            return False
        if not self._quick_below:
            return True
        cost = self._cost.get(command)
        return cost is not None and cost * inputs < self._quick_below

    def result_bytes(self, command: str) -> float | None:
        """What one input's answer of ``command`` weighs on the wire (bytes, leaning to the
        larger of recent answers); None until a call of it was answered."""
        return self._bytes.get(command)

    def _learn_size(self, command: str, size: int) -> None:
        previous = self._bytes.get(command)
        self._bytes[command] = size if previous is None else max(size, (previous + size) / 2)
        if len(self._bytes) > _MAX_COMMANDS:
            self._bytes.clear()

    def cost(self, command: str) -> float | None:
        """What one input of ``command`` costs a worker (ns, moving average); None until
        a call of it was answered."""
        return self._cost.get(command)

    def _has_room(self, worker: W, quick: bool) -> bool:
        """A free slot, or, for a quick command, room to wait behind quick calls only."""
        if worker.in_flight < worker.max_concurrency:
            return True
        return (
            quick
            and not worker.slow
            and worker.in_flight < worker.max_concurrency + self.limits.prefetch
        )

    # -- placing -------------------------------------------------------------------------

    def _send(self, worker: W, request: Request) -> None:
        request.prefetched = worker.in_flight >= worker.max_concurrency
        request.sent_at = time.monotonic_ns()
        if request.budget:
            request.deadline = self.clock() + request.budget
            request.queue_deadline = min(request.queue_deadline, request.deadline)
        worker.in_flight += 1
        if not request.quick:
            worker.slow += 1
        worker.pending[request.request_id] = request
        request.worker = worker
        if request.session_id is not None:
            self._remember_session(request.session_id, worker)
        if request.chunks is None:  # a stream has rpc.stream.* instead
            _events.call_started(self.pool_name, worker.worker_id, request)
        hook = _events.trace_hook
        if hook is not None and request.message is not None:
            headers = hook.inject(request.request_id)
            if headers:
                request.message.trace_context = headers
                request.frame = _wire.encode(request.message, self.limits.max_frame_size)
        # A call to an idle worker leaves at once: a lone caller does not wait a turn of
        # the loop. Calls to a busy worker leave together at the end of the turn, in one
        # write, which is what keeps throughput up under load.
        worker.send(request.frame, at_once=worker.in_flight == 1)

    def _pick(self, avoid: str | None = None, quick: bool = False) -> W | None:
        """The least loaded worker with room (see :meth:`_has_room`), idle ones in rotation.

        ``avoid`` names a worker never picked in a pool of more than one (the call
        queues when only that worker is free).
        """
        best: W | None = None
        workers = self.workers
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

    def dispatch(self) -> None:
        """Hand free capacity to queued requests, first come first served. Called whenever
        capacity may have changed; cheap when nothing waits."""
        if not self.queue:
            return
        if self._targeted:
            self._dispatch_targeted()
            return
        queue = self.queue
        while queue:
            worker = self._pick(None, queue[0].quick)
            if worker is None:
                return
            self._dispatch(worker, queue.popleft())

    def _dispatch_targeted(self) -> None:
        """The queue holds requests waiting for one worker (strict affinity) among the
        others. A session whose worker is gone is re-homed first: any worker will do."""
        for waiting in self.queue:
            target = waiting.target
            if target is not None and self.workers[target.slot] is not target:
                waiting.target = None
                self._targeted -= 1
        if not self._targeted:
            self.dispatch()
            return
        # One pass in arrival order: each call takes a place if one is left for it. A call
        # for anyone goes where _pick puts it (an idle worker first); once a call for
        # anyone found no place, those behind it wait too (first come, first served); and
        # behind a call that waits for its worker, only free slots are taken, so that no
        # call is prefetched ahead of it.
        blocked = behind_targeted = False
        for request in list(self.queue):
            target = request.target
            if target is None:
                if blocked:
                    continue
                worker = self._pick(None, request.quick and not behind_targeted)
                if worker is None:
                    blocked = True
                    continue
            else:
                worker = self.workers[target.slot]  # the target itself, checked above
                if worker is None or not (
                    worker.accepting and self._has_room(worker, request.quick)
                ):
                    behind_targeted = True
                    continue
            self.queue.remove(request)
            if target is not None:
                request.target = None
                self._targeted -= 1
            self._dispatch(worker, request)

    def _dispatch(self, worker: W, request: Request) -> None:
        """Send a request taken from the queue, unless its queue deadline passed."""
        late = request.queue_deadline
        if late != math.inf and self.clock() >= late:
            return  # its caller is about to raise QueueTimeoutError; it must not run
        starts = worker.in_flight < worker.max_concurrency
        self._send(worker, request)
        if starts:
            self._dequeued(worker, request, time.monotonic_ns() - request.enqueued)
            if request.scope is not None:
                request.scope.deadline = request.deadline
        if request.arrived is not None:
            request.arrived.set()

    def _dequeued(self, worker: W, request: Request, queue_time: int) -> None:
        _events.dequeued(self.pool_name, worker.worker_id, request, queue_time, self.queue_depth())

    # -- answers -------------------------------------------------------------------------

    def release(
        self,
        worker: W,
        request: Request,
        answer: _wire.Answer | None,
    ) -> None:
        """A call's answer came (or was lost: ``answer`` None): free its place, learn what
        its command costs, and report when a call that waited in the worker started.
        The caller then calls :meth:`dispatch`."""
        worker.in_flight -= 1
        if not request.quick:
            worker.slow -= 1
        if request.withdrawn:
            worker.withdrawn -= 1
        # Times the worker reports are checked: a negative one says the call never ran
        # (or lies), and counts for nothing.
        if answer is not None and answer.took > 0:
            if request.chunks is None:
                # What the command costs is learned per input: a batch ran that many.
                ran = len(answer.values) if isinstance(answer, _wire.Results) else request.inputs
                took = answer.took // max(1, ran)
                self._learn(request.command, took, whole=not request.abandoned)
                if request.size:
                    self._learn_size(request.command, request.size // max(1, ran))
            if request.prefetched:
                queue_time = request.sent_at - request.enqueued + max(0, answer.waited)
                self._dequeued(worker, request, queue_time)

    def _learn(self, command: str, took: int, *, whole: bool) -> None:
        """What a call of ``command`` cost its worker. A call cut short by its caller ran
        at least ``took``: it can only make the command look slower, never quicker, so a
        command whose calls all time out is not taken for a quick one."""
        cost = self._cost.get(command)
        if cost is None:
            self._cost[command] = took
        elif whole:
            self._cost[command] = (cost + took) / 2
        elif took > cost:
            self._cost[command] = took
        if len(self._cost) > _MAX_COMMANDS:
            self._cost.clear()

    def abandon(self, request: Request) -> None:
        """The caller stops waiting: unqueue the request, or cancel it on its worker (a
        call that waits there is marked withdrawn: it leaves the queue's count at once)."""
        worker = request.worker
        if worker is None:
            self._unqueue(request)
        elif not request.done.is_set():
            request.abandoned = True
            if request.prefetched and not request.withdrawn and worker.waiting(request):
                request.withdrawn = True
                worker.withdrawn += 1
            if request.request_id in worker.pending:
                worker.cancel(request.request_id)

    def _unqueue(self, request: Request) -> None:
        try:
            self.queue.remove(request)
        except ValueError:
            return
        if request.target is not None:
            request.target = None
            self._targeted -= 1

    def withdraw(self, request: Request) -> bool:
        """A call waiting in its worker reached its queue deadline: tell the worker to drop
        it unless it started meanwhile. Whether it was (as far as the pool can tell)
        still waiting."""
        worker = request.worker
        if worker is None or not worker.waiting(request):
            return False
        worker.cancel(request.request_id, if_waiting=True)
        return True

    def fail_queue(self, error: Callable[[], BaseException]) -> None:
        """Fail every call in the pool's queue (the pool closes, or every slot is down)."""
        self._targeted = 0
        while self.queue:
            request = self.queue.popleft()
            request.target = None
            request.fail(error())

    def cancel_in_flight(self, error: Callable[[], BaseException]) -> int:
        """Tell each worker to cancel every call it holds, started or not, and fail those
        whose callers still wait with ``error`` (the pool stops at once); how many calls
        that is."""
        cancelled = 0
        for worker in self.workers:
            if worker is not None:
                for request in list(worker.pending.values()):
                    if not request.abandoned:
                        request.abandoned = True
                        request.fail(error())
                    worker.cancel(request.request_id)
                    cancelled += 1
        return cancelled

    def withdraw_waiting(self) -> None:
        """Tell each worker to drop the calls that wait in it (the pool closes)."""
        for worker in self.workers:
            if worker is not None:
                for request in list(worker.pending.values()):
                    if request.prefetched and worker.waiting(request):
                        worker.cancel(request.request_id, if_waiting=True)

    # -- errors --------------------------------------------------------------------------

    def timed_out(self, request: Request) -> Exception:
        """The error of a request whose deadline passed, counted."""
        if request.worker is not None:
            self.counters["timeouts"] += 1
            return WorkerTimeoutError(
                f"{request.command!r} got no answer from {request.worker.worker_id} "
                "before its deadline"
            )
        if self.closed:
            return self.closed_error()
        return self.queue_timeout(request)

    def queue_timeout(self, request: Request) -> QueueTimeoutError:
        """The error of a request that waited too long and never ran; counted, reported."""
        self.counters["queue_timeouts"] += 1
        queue_time = time.monotonic_ns() - request.enqueued
        _events.queue_timed_out(self.pool_name, request, queue_time, self.queue_depth())
        return QueueTimeoutError(
            f"{request.command!r} waited {queue_time / 1e9:.3f}s in the queue of pool "
            f"{self.pool_name!r} without a free worker; it was not run"
        )

    def closed_error(self) -> PoolClosedError:
        return PoolClosedError(f"pool {self.pool_name!r} closed while the call was queued")

    # -- sessions ------------------------------------------------------------------------

    def _session_worker(self, request: Request) -> W | None:
        """The live worker that served the request's session, or None (it is re-homed)."""
        assert request.session_id is not None
        session = self._sessions.get(request.session_id)
        if session is None:
            return None
        self._sessions.move_to_end(request.session_id)
        worker = self.workers[session.slot]
        if worker is None or worker.pid != session.worker_pid:
            return None
        return worker

    def _remember_session(self, session_id: str, worker: W) -> None:
        """A call of the session went to ``worker``: a new session lives there from now on,
        and a session whose worker is gone moves there. A session whose worker lives stays
        with it, whoever ran this call (with ``hint``, another worker when its own was
        busy): its state is where it was."""
        session = self._sessions.get(session_id)
        if session is None:
            self._sessions[session_id] = _Session(worker.slot, worker.pid)
            if len(self._sessions) > self.limits.max_sessions:
                self._sessions.popitem(last=False)
            return
        session.calls += 1
        if session.worker_pid == worker.pid:
            return
        home = self.workers[session.slot]
        if home is None or home.pid != session.worker_pid:
            session.rehomed += 1
            self._log.info(
                "session re-homed",
                session_id=session_id,
                worker_id=worker.worker_id,
                previous_pid=session.worker_pid,
                worker_pid=worker.pid,
            )
            session.slot, session.worker_pid = worker.slot, worker.pid

    def session(self, session_id: str, worker_ids: list[str]) -> SessionInfo | None:
        """Where ``session_id`` lives (``worker_ids`` names each slot's worker)."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        return SessionInfo(
            session_id=session_id,
            worker_id=worker_ids[session.slot],
            worker_pid=session.worker_pid,
            calls=session.calls,
            rehomed=session.rehomed,
        )

"""The scheduler alone, with fake workers: no processes, no event loop.

The property test drives random sequences of calls, answers, cancellations,
crashes, replacements, pauses and the passing of time through the scheduler,
the way the pool and its supervisor do, and checks after every step that no
limit bends and no call waits next to a worker that could run it.
"""

from __future__ import annotations

import itertools
import math
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pypit import (
    PoolDegradedError,
    PoolSaturatedError,
    QueueTimeoutError,
    SessionUnavailableError,
    _wire,
)
from pypit.pool._request import Request
from pypit.pool._scheduler import Limits, Scheduler

QUICK = 1_000  # ns: what a quick command takes
SLOW = 10**9
COMMANDS = {"quick": QUICK, "slow": SLOW, "unknown": None}
_ids = itertools.count(1)
_pids = itertools.count(1000)


class FakeWorker:
    """A worker as the scheduler sees it; it runs its calls in the order they came."""

    def __init__(self, slot: int, max_concurrency: int) -> None:
        self.worker_id = f"test_worker_{slot + 1}"
        self.slot = slot
        self.pid = next(_pids)
        self.accepting = True
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.slow = 0
        self.withdrawn = 0
        self.pending: dict[int, Request] = {}
        self.sent: list[bytes] = []
        self.cancelled: set[int] = set()

    def send(self, frame: bytes, *, at_once: bool = False) -> None:
        self.sent.append(frame)

    def cancel(self, request_id: int, *, if_waiting: bool = False) -> None:
        self.cancelled.add(request_id)

    def waiting(self, request: Request) -> bool:
        for ahead, other in enumerate(self.pending.values()):
            if other is request:
                return ahead >= self.max_concurrency
        return False

    def running(self) -> list[Request]:
        return list(self.pending.values())[: self.max_concurrency]


def new_request(command: str, session_id: str | None = None) -> Request:
    request = Request(command, threading.Event)
    request.request_id = next(_ids)
    request.frame = b"call"
    request.session_id = session_id
    return request


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SchedulerMachine(RuleBasedStateMachine):
    """Random traffic through one scheduler and two or three fake workers."""

    scheduler: Scheduler[FakeWorker]

    @initialize(
        size=st.integers(1, 3),
        max_concurrency=st.integers(1, 2),
        max_queue_size=st.integers(0, 4),
        prefetch=st.integers(0, 3),
        queue_timeout=st.sampled_from([None, 1.0]),
    )
    def open(
        self,
        size: int,
        max_concurrency: int,
        max_queue_size: int,
        prefetch: int,
        queue_timeout: float | None,
    ) -> None:
        self.clock = Clock()
        self.limits = Limits(
            max_queue_size=max_queue_size, queue_timeout=queue_timeout, prefetch=prefetch
        )
        self.scheduler = Scheduler("test", size, self.limits, clock=self.clock)
        self.max_concurrency = max_concurrency
        for slot in range(size):
            self.scheduler.workers[slot] = FakeWorker(slot, max_concurrency)
        self.live: list[Request] = []
        self.settled = 0
        self.rejected = 0

    def _workers(self) -> list[FakeWorker]:
        return [w for w in self.scheduler.workers if w is not None]

    def _answer(self, worker: FakeWorker, request: Request, dropped: bool) -> None:
        """The worker's answer arrives, as WorkerHandle settles it."""
        del worker.pending[request.request_id]
        worker.cancelled.discard(request.request_id)
        answer: _wire.Result | _wire.Error
        if dropped:
            answer = _wire.Error(request.request_id, "dropped", "", "", "")
        else:
            took = COMMANDS[request.command] or SLOW
            answer = _wire.Result(request.request_id, None, waited=10, took=took)
        self.scheduler.release(worker, request, answer)
        request.end()
        self.live.remove(request)
        self.settled += 1
        self.scheduler.dispatch()

    # -- what callers do ---------------------------------------------------------------

    @rule(
        command=st.sampled_from(sorted(COMMANDS)),
        session_id=st.sampled_from([None, "a", "b"]),
        affinity=st.sampled_from(["hint", "strict", "strict_fail_fast"]),
    )
    def submit(self, command: str, session_id: str | None, affinity: str) -> None:
        request = new_request(command, session_id)
        try:
            self.scheduler.submit(request, affinity)
        except (PoolSaturatedError, SessionUnavailableError, PoolDegradedError):
            self.rejected += 1
            assert request.worker is None
            return
        self.live.append(request)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def caller_gives_up(self, data: st.DataObject) -> None:
        """A caller is cancelled: a queued call leaves at once, a sent one is cancelled."""
        request = data.draw(st.sampled_from(self.live))
        self.scheduler.abandon(request)
        if request.worker is None:
            assert request not in self.scheduler.queue
            self.live.remove(request)
            self.settled += 1
        else:
            assert isinstance(request.worker, FakeWorker)
            assert request.request_id in request.worker.cancelled

    @rule()
    def time_passes(self) -> None:
        """Past the queue timeout, callers of calls that never started give up."""
        self.clock.now += 0.6
        for request in list(self.live):
            if request.worker is None and self.clock.now >= request.queue_deadline:
                self.scheduler.abandon(request)
                assert isinstance(self.scheduler.queue_timeout(request), QueueTimeoutError)
                self.live.remove(request)
                self.settled += 1

    # -- what workers do -----------------------------------------------------------------

    @precondition(lambda self: any(w.pending for w in self._workers()))
    @rule(data=st.data())
    def worker_answers(self, data: st.DataObject) -> None:
        """A running call ends; the worker starts the next one it holds."""
        worker = data.draw(st.sampled_from([w for w in self._workers() if w.pending]))
        request = data.draw(st.sampled_from(worker.running()))
        self._answer(worker, request, dropped=False)

    @precondition(
        lambda self: any(
            w.waiting(r) and r.request_id in w.cancelled
            for w in self._workers()
            for r in w.pending.values()
        )
    )
    @rule()
    def worker_drops_a_withdrawn_call(self) -> None:
        """A worker told to drop a call that has not started drops it at once."""
        for worker in self._workers():
            for request in list(worker.pending.values()):
                if worker.waiting(request) and request.request_id in worker.cancelled:
                    self._answer(worker, request, dropped=True)
                    return

    @precondition(lambda self: self._workers())
    @rule(data=st.data())
    def worker_dies(self, data: st.DataObject) -> None:
        """Its calls fail; the slot is empty until a replacement is ready."""
        worker = data.draw(st.sampled_from(self._workers()))
        self.scheduler.workers[worker.slot] = None
        for request in worker.pending.values():
            self.live.remove(request)
            self.settled += 1
        worker.pending.clear()
        worker.in_flight = worker.slow = worker.withdrawn = 0
        self.scheduler.dispatch()

    @precondition(lambda self: None in self.scheduler.workers)
    @rule()
    def replacement_ready(self) -> None:
        slot = self.scheduler.workers.index(None)
        self.scheduler.workers[slot] = FakeWorker(slot, self.max_concurrency)
        self.scheduler.dispatch()

    @precondition(lambda self: any(w.accepting for w in self._workers()))
    @rule(data=st.data())
    def channel_breaks(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from([w for w in self._workers() if w.accepting]))
        worker.accepting = False

    @precondition(lambda self: any(not w.accepting for w in self._workers()))
    @rule(data=st.data())
    def channel_comes_back(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from([w for w in self._workers() if not w.accepting]))
        worker.accepting = True
        self.scheduler.dispatch()

    # -- what must always hold ---------------------------------------------------------------

    @invariant()
    def no_call_waits_next_to_a_free_worker(self) -> None:
        for worker in self._workers():
            if worker.accepting and worker.in_flight < worker.max_concurrency:
                for request in self.scheduler.queue:
                    assert request.target not in (None, worker), (
                        "a queued call waits while a worker that may run it has a free slot"
                    )

    @invariant()
    def the_queue_bound_holds(self) -> None:
        assert self.scheduler.queue_depth() <= self.limits.max_queue_size

    @invariant()
    def a_worker_holds_at_most_what_prefetch_allows(self) -> None:
        for worker in self._workers():
            assert worker.in_flight == len(worker.pending)
            assert worker.in_flight <= worker.max_concurrency + self.limits.prefetch
            if worker.slow:
                # Nothing waits behind a call that is not known to be quick.
                assert worker.in_flight <= worker.max_concurrency

    @invariant()
    def waiting_calls_are_quick_ones(self) -> None:
        for worker in self._workers():
            for request in worker.pending.values():
                if worker.waiting(request):
                    assert request.quick
                    assert request.command == "quick"

    @invariant()
    def every_call_is_accounted_for(self) -> None:
        queued = set(map(id, self.scheduler.queue))
        sent = {id(r) for w in self._workers() for r in w.pending.values()}
        assert queued.isdisjoint(sent)
        assert queued | sent == set(map(id, self.live)) - self._dropped_by_dispatch()
        counted = self.scheduler.counters["requests"]
        assert counted == self.settled + self.rejected + len(self.live)

    def _dropped_by_dispatch(self) -> set[int]:
        """Calls the dispatcher skipped because their queue deadline passed: their callers
        are about to time out (the next time_passes step)."""
        return {
            id(r)
            for r in self.live
            if r.worker is None
            and r.queue_deadline != math.inf
            and self.clock.now >= r.queue_deadline
        }


SchedulerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_scheduler_properties = SchedulerMachine.TestCase


def scheduler(**limits: Any) -> tuple[Scheduler[FakeWorker], list[FakeWorker]]:
    size = limits.pop("size", 1)
    max_concurrency = limits.pop("max_concurrency", 1)
    built: Scheduler[FakeWorker] = Scheduler("test", size, Limits(**limits), clock=Clock())
    workers = [FakeWorker(slot, max_concurrency) for slot in range(size)]
    built.workers[:] = workers
    return built, workers


def learn(built: Scheduler[FakeWorker], worker: FakeWorker, command: str, took: int) -> None:
    """Run one call of ``command`` to completion, so the scheduler learns its cost."""
    request = new_request(command)
    built.submit(request, "hint")
    del worker.pending[request.request_id]
    built.release(worker, request, _wire.Result(request.request_id, None, took=took))


def test_an_unknown_command_never_waits_in_a_busy_worker() -> None:
    """Only a command known to be quick may wait in a busy worker; the rest queue."""
    built, (worker,) = scheduler(max_queue_size=10, prefetch=2)
    built.submit(new_request("slow"), "hint")
    built.submit(new_request("unknown"), "hint")
    assert (worker.in_flight, len(built.queue), built.queue_depth()) == (1, 1, 1)


def test_a_quick_command_waits_in_the_worker_and_counts_as_queued() -> None:
    """Prefetched calls count in queue_depth and against max_queue_size."""
    built, (worker,) = scheduler(max_queue_size=2, prefetch=8)
    learn(built, worker, "quick", QUICK)
    for _ in range(3):
        built.submit(new_request("quick"), "hint")
    assert (worker.in_flight, len(built.queue), built.queue_depth()) == (3, 0, 2)
    with pytest.raises(PoolSaturatedError):
        built.submit(new_request("quick"), "hint")
    assert built.counters["rejected"] == 1


def test_a_withdrawn_call_leaves_the_count_at_once() -> None:
    """A caller that gives up on a call waiting in a worker frees its queue place at once,
    before the worker confirms the drop."""
    built, (worker,) = scheduler(max_queue_size=1, prefetch=8)
    learn(built, worker, "quick", QUICK)
    built.submit(new_request("quick"), "hint")
    waiting = new_request("quick")
    built.submit(waiting, "hint")
    assert built.queue_depth() == 1
    built.abandon(waiting)
    assert built.queue_depth() == 0
    assert waiting.request_id in worker.cancelled
    built.submit(new_request("quick"), "hint")  # its place is free


def test_a_strict_call_goes_to_the_replacement_of_its_dead_worker() -> None:
    """A call waiting for its session's worker is re-homed when that worker is gone."""
    built, (first, _second) = scheduler(size=2, max_queue_size=10)
    built.submit(new_request("slow", "s"), "strict")
    assert first.in_flight == 1
    built.submit(new_request("slow"), "strict")  # keeps the other worker busy
    waiting = new_request("slow", "s")
    built.submit(waiting, "strict")
    assert waiting in built.queue
    assert waiting.target is first
    built.workers[0] = None
    replacement = FakeWorker(0, 1)
    built.workers[0] = replacement
    built.dispatch()
    assert waiting.worker is replacement


def test_a_session_moves_only_when_its_worker_is_gone() -> None:
    """A hint call of a session whose worker is busy goes to another worker and leaves the
    session with its own; once that worker is gone, the session moves to the worker of its
    next call, and that move is counted."""
    built, (first, second) = scheduler(size=2, max_queue_size=10)
    built._rotation = 0
    built.submit(new_request("slow", "s"), "hint")
    elsewhere = new_request("slow", "s")
    built.submit(elsewhere, "hint")
    assert elsewhere.worker is second
    stays = built.session("s", ["first", "second"])
    assert stays is not None
    assert (stays.worker_id, stays.worker_pid, stays.calls, stays.rehomed) == (
        "first",
        first.pid,
        2,
        0,
    )
    replacement = built.workers[0] = FakeWorker(0, 1)
    moved = new_request("slow", "s")
    built.submit(moved, "hint")
    info = built.session("s", ["first", "second"])
    assert info is not None
    assert moved.worker is replacement
    assert (info.worker_pid, info.calls, info.rehomed) == (replacement.pid, 3, 1)


def test_a_call_past_its_queue_deadline_is_never_sent() -> None:
    """The dispatcher skips a queued call whose queue deadline passed."""
    built, (worker,) = scheduler(max_queue_size=10, queue_timeout=1.0)
    running = new_request("slow")
    built.submit(running, "hint")
    late = new_request("slow")
    built.submit(late, "hint")
    assert isinstance(built.clock, Clock)
    built.clock.now = 2.0
    del worker.pending[running.request_id]
    built.release(worker, running, _wire.Result(running.request_id, None, took=SLOW))
    built.dispatch()
    assert late.worker is None
    assert not built.queue
    assert worker.sent == [b"call"]


def test_a_withdrawn_call_that_started_stops_counting_as_withdrawn() -> None:
    """A call withdrawn just as a slot freed may have started: once it is in a running
    position, the calls behind it are the ones waiting, and max_queue_size holds."""
    built, (worker,) = scheduler(max_queue_size=2, prefetch=8)
    learn(built, worker, "quick", QUICK)
    running = new_request("quick")
    built.submit(running, "hint")
    withdrawn = new_request("quick")
    built.submit(withdrawn, "hint")
    built.abandon(withdrawn)
    del worker.pending[running.request_id]
    built.release(worker, running, _wire.Result(running.request_id, None, took=QUICK))
    built.dispatch()
    built.submit(new_request("quick"), "hint")
    built.submit(new_request("quick"), "hint")
    with pytest.raises(PoolSaturatedError):
        built.submit(new_request("quick"), "hint")
    assert built.queue_depth() == 2


def test_behind_a_strict_call_a_freed_worker_takes_the_next_call() -> None:
    """With a call queued for its session's worker, capacity a worker frees goes to the
    next call for anyone, on that free worker, not prefetched into a busy one."""
    built, (first, second, third) = scheduler(size=3, max_queue_size=10, prefetch=8)
    learn(built, first, "quick", QUICK)
    built._rotation = 0  # the test places one call on each worker, in slot order
    busy = new_request("quick")
    built.submit(busy, "hint")
    slow = new_request("slow")
    built.submit(slow, "hint")
    session = new_request("slow", "s")
    built.submit(session, "hint")
    assert (busy.worker, slow.worker, session.worker) == (first, second, third)
    built.submit(new_request("slow", "s"), "strict")
    quick = new_request("quick")
    built.submit(quick, "hint")
    del second.pending[slow.request_id]
    built.release(second, slow, _wire.Result(slow.request_id, None, took=SLOW))
    built.dispatch()
    assert quick.worker is second
    assert not quick.prefetched


def test_calls_cut_short_only_make_a_command_look_slower() -> None:
    """A call whose caller gave up ran at least as long as the worker says: a command
    whose calls all time out is learned as slow, never as quick."""
    built, (worker,) = scheduler(max_queue_size=10, prefetch=8)
    learn(built, worker, "sleepy", QUICK)
    assert built.is_quick("sleepy")
    for _ in range(3):
        request = new_request("sleepy")
        built.submit(request, "hint")
        built.abandon(request)
        del worker.pending[request.request_id]
        built.release(worker, request, _wire.Result(request.request_id, None, took=SLOW))
    assert not built.is_quick("sleepy")
    cut = new_request("sleepy")
    built.submit(cut, "hint")
    built.abandon(cut)
    del worker.pending[cut.request_id]
    built.release(worker, cut, _wire.Result(cut.request_id, None, took=QUICK))
    assert not built.is_quick("sleepy")

"""Supervision: crashes, restart policy, deadlines, recycling, heartbeat, affinity, retry."""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from pypit import (
    PoolDegradedError,
    SessionUnavailableError,
    ToolError,
    WorkerCrashedError,
    WorkerStartError,
    WorkerTimeoutError,
    telemetry,
)
from pypit.pool import Pool, open_pool
from tests.pool.conftest import (
    WARM,
    accepted,
    adapter,
    assert_catalog_shape,
    opened_at_exit,
    options,
    wait_until,
    warm_up,
    warmth,
)

pytestmark = pytest.mark.anyio

POOL = ("pypit", "pool")
TERMINATED = (*POOL, "worker", "terminated")
SPAWN_STARTED = (*POOL, "worker", "spawn_started")
RECYCLED = (*POOL, "worker", "recycled")
RESTARTED = (*POOL, "worker", "restarted")


@pytest.mark.parametrize(
    ("command", "args", "exit_code", "signum"),
    [
        ("die", {"signum": int(signal.SIGKILL)}, None, signal.SIGKILL),
        ("segfault", {}, None, signal.SIGSEGV),
        ("exit", {"code": 4}, 4, None),
    ],
    ids=["sigkill", "segfault", "exit"],
)
async def test_crash_reports_exit_code_or_signal(
    command: str, args: dict[str, int], exit_code: int | None, signum: int | None
) -> None:
    """However the worker dies, its call fails with WorkerCrashedError saying how."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            await pool.execute(command, args)
        with anyio.fail_after(10):
            assert await pool.execute("identity", 1) == 1

    assert (info.value.exit_code, info.value.signal) == (exit_code, signum)


async def test_an_exception_escaping_the_worker_loop_is_a_crash() -> None:
    """A worker whose own loop fails exits with an error; the call in flight is failed."""
    async with open_pool(adapter(), **options()) as pool:
        await pool.execute("break_loop")
        with pytest.raises(WorkerCrashedError) as info:
            await pool.execute("identity", 1)
        with anyio.fail_after(10):
            assert await pool.execute("identity", 2) == 2

    assert info.value.exit_code == 1


async def test_an_exception_escaping_a_calling_thread_is_a_crash() -> None:
    """A worker thread that fails (not a tool: the worker's own code) ends the worker;
    the call it was answering fails instead of waiting forever."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            await pool.execute("break_turns")
        with anyio.fail_after(10):
            assert await pool.execute("identity", 2) == 2

    assert info.value.exit_code == 1


async def test_a_crash_fails_only_that_workers_calls(tmp_path: Path) -> None:
    """The other worker's call completes; calls queued meanwhile run on the survivors."""
    gate = tmp_path / "gate"
    async with open_pool(adapter(), **options(size=2)) as pool:
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            results: list[object] = []

            async def slow() -> None:
                results.append(await pool.execute("hold", {"gate": str(gate), "tag": "slow"}))

            tasks.start_soon(slow)
            await wait_until(lambda: pool.status().in_flight == 1, "the slow call to start")
            with pytest.raises(WorkerCrashedError):
                await pool.execute("die")
            results.append(await pool.execute("identity", "after"))

    assert sorted(map(str, results)) == ["after", "slow"]


async def test_failing_starts_degrade_the_slot_until_one_succeeds(tmp_path: Path) -> None:
    """A slot whose starts fail is degraded and retried with back-off; with every slot
    degraded calls fail at once, saying why; the first start that succeeds ends it."""
    marker = tmp_path / "fail"
    degraded, recovered = (*POOL, "worker", "degraded"), (*POOL, "worker", "recovered")
    settings = options(env={"FAILS_WHILE_MARKER": str(marker)})
    with telemetry.capture(degraded, recovered, SPAWN_STARTED) as seen:
        async with open_pool(adapter("FailsWhile"), **settings) as pool:
            marker.touch()
            with pytest.raises(WorkerCrashedError):
                await pool.execute("die")
            await wait_until(lambda: pool.status().degraded, "the slot to be degraded")
            with pytest.raises(PoolDegradedError, match="marker file says this start fails"):
                await pool.execute("identity", 1)
            await wait_until(lambda: len(seen.named(*SPAWN_STARTED)) >= 4, "the slot to be retried")
            marker.unlink()
            await wait_until(lambda: not pool.status().degraded, "a start to succeed")
            assert await pool.execute("identity", 2) == 2

    (entered,) = seen.named(*degraded)
    (left,) = seen.named(*recovered)
    assert_catalog_shape(entered)
    assert_catalog_shape(left)
    assert "setup_failed" in entered.metadata["reason"]
    assert left.measurements["failed_starts"] >= 2  # the initial start, then two failed
    assert left.measurements["downtime"] > 0


async def test_healthy_restarts_never_take_the_pool_offline() -> None:
    """A worker that got ready and then died is replaced at once, however often: a dozen
    crashes in a row (the old restart limit was ten a minute) leave the pool serving."""
    async with open_pool(adapter(), **options()) as pool:
        for _ in range(12):
            with pytest.raises(WorkerCrashedError):
                await pool.execute("die")
            await wait_until(
                lambda: pool.status().total_workers == 1 or pool.status().degraded,
                "a replacement, or the pool degraded",
            )
            assert not pool.status().degraded
        assert await pool.execute("identity", 1) == 1


async def test_max_vm_bytes_is_a_limit_no_call_passes() -> None:
    """With max_vm_bytes, an allocation past it fails inside the call (MemoryError, as a
    ToolError) and the same worker serves on; without it, the same allocation succeeds."""
    gib = 1024**3
    # The option under test is not a default: it is off unless set. A worker maps about
    # 300 MB of address space before any call.
    async with open_pool(adapter(), **options(max_vm_bytes=gib)) as pool:
        pid = await pool.execute("pid")
        with pytest.raises(ToolError) as info:
            await pool.execute("allocate", gib)
        assert info.value.remote_type == "MemoryError"
        assert await pool.execute("allocate", 1024) == 1024
        assert await pool.execute("pid") == pid
    async with open_pool(adapter(), **options()) as pool:
        assert await pool.execute("allocate", gib) == gib


async def test_handshake_timeout_is_a_spawn_failure() -> None:
    """A worker that does not get ready in time is killed and reported as spawn_failed."""
    with (
        telemetry.capture((*POOL, "worker", "spawn_failed")) as seen,
        pytest.raises(WorkerStartError),
    ):
        async with open_pool(adapter("SlowSetup"), **options(startup_timeout=0.5)):
            pass

    (failed,) = seen.events
    assert_catalog_shape(failed)
    assert failed.metadata["reason"] == "handshake_timeout"
    assert failed.metadata["exit_code"] == -signal.SIGKILL


async def test_stuck_sync_call_past_its_deadline_kills_and_replaces_the_worker() -> None:
    """The caller gets WorkerTimeoutError at the deadline; a worker that cannot stop the call
    within cancel_grace is killed (reason "timeout") and replaced."""
    with telemetry.capture(TERMINATED) as seen:
        # A short grace: the kill comes 0.2 s after the deadline rather than 2 s.
        async with open_pool(adapter(), **options(cancel_grace=0.2)) as pool:
            old = await pool.execute("pid")
            with anyio.fail_after(2), pytest.raises(WorkerTimeoutError):
                await pool.execute("sleep", {"seconds": 30}, timeout=0.1)
            await seen.wait(TERMINATED)
            with anyio.fail_after(10):
                new = await pool.execute("pid")

    assert old != new
    assert seen.events[0].metadata["reason"] == "timeout"
    assert seen.events[0].metadata["planned"] is False


async def test_a_worker_wedged_past_a_deadline_is_replaced_and_the_calls_behind_it_run() -> None:
    """At default settings: a sync tool deaf to cancellation holds the worker's only slot
    past its call's deadline, while the worker answers every heartbeat. cancel_grace after
    the deadline the worker is killed (reason "timeout") and replaced; the calls queued
    behind the wedged one run on the replacement."""
    pids: list[int] = []
    with telemetry.capture(TERMINATED) as seen:
        async with open_pool(adapter("Unruly"), **options()) as pool:
            old = await pool.execute("pid")

            async def wedged() -> None:
                with pytest.raises(WorkerTimeoutError):
                    await pool.execute("spin", {"seconds": 60}, timeout=0.5)

            async def behind() -> None:
                pids.append(await pool.execute("pid"))

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(wedged)
                    await wait_until(lambda: pool.status().in_flight == 1, "the call to start")
                    for _ in range(3):
                        tasks.start_soon(behind)
                    await wait_until(lambda: accepted(pool) == 4, "three calls behind it")
                    # The pool's queue and the worker's heartbeat count are private; the test
                    # looks at them to tell that the calls wait in the pool, and that the
                    # wedged worker answers pings.
                    assert len(pool._scheduler.queue) == 3
                    worker = pool._scheduler.workers[0]
                    assert worker is not None
                    pongs = worker.pongs_seen
                    await wait_until(lambda: worker.pongs_seen > pongs, "a heartbeat answered")
                    assert worker.kill_reason is None
            restarts = pool.status().restarts

    assert len(pids) == 3
    assert old not in pids
    assert restarts == 1
    assert [e.metadata["reason"] for e in seen] == ["timeout", "shutdown"]


async def test_cancelling_one_call_keeps_the_others_on_that_worker(tmp_path: Path) -> None:
    """An async call cancelled at its deadline stops; the other call on the worker completes
    and the worker is not replaced."""
    gate = tmp_path / "gate"
    # Two calls at once on one worker; a short grace, so that a kill would come soon.
    async with open_pool(adapter(), **options(max_concurrency=2, cancel_grace=0.5)) as pool:
        pid = await pool.execute("pid")
        results: list[str] = []

        async def other() -> None:
            results.append(await pool.execute("async_hold", {"gate": str(gate), "tag": "other"}))

        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(other)
            await wait_until(lambda: pool.status().in_flight == 1, "the other call to start")
            with pytest.raises(WorkerTimeoutError):
                await pool.execute("async_sleep", {"seconds": 30}, timeout=0.1)
            # The cancelled call was answered: nothing is left for a kill to be about.
            await wait_until(lambda: pool.status().in_flight == 1, "the cancel's answer")
            assert results == []
        assert await pool.execute("pid") == pid

    assert results == ["other"]


async def test_recycle_after_max_requests() -> None:
    """After max_requests calls the worker drains, is recycled and replaced, planned."""
    events = [RECYCLED, TERMINATED, SPAWN_STARTED]
    with telemetry.capture(*events) as seen:
        async with open_pool(adapter(), **options(max_requests=3)) as pool:
            pids = [await pool.execute("pid") for _ in range(3)]
            await seen.wait(SPAWN_STARTED, count=2)
            with anyio.fail_after(10):
                pids.append(await pool.execute("pid"))

    assert pids[0] == pids[1] == pids[2] != pids[3]
    recycled = seen.named(*RECYCLED)[0]
    assert_catalog_shape(recycled)
    assert recycled.metadata["reason"] == "max_requests"
    assert recycled.measurements["total_commands"] == 3
    assert recycled.measurements["rss_bytes"] > 1_000_000
    terminated = seen.named(*TERMINATED)[0]
    assert (terminated.metadata["reason"], terminated.metadata["planned"]) == ("recycle", True)
    assert [e.metadata["reason"] for e in seen.named(*SPAWN_STARTED)][:2] == [
        "initial",
        "recycle",
    ]


@pytest.mark.parametrize(
    ("setting", "reason"),
    [({"ttl": 0.3}, "ttl"), ({"max_rss_bytes": 1024}, "memory")],
    ids=["ttl", "memory"],
)
async def test_recycle_by_age_and_by_memory(setting: dict[str, float], reason: str) -> None:
    """A worker older than ttl, or with more RSS than max_rss_bytes, is recycled."""
    with telemetry.capture(RECYCLED) as seen:
        async with open_pool(adapter(), **options(heartbeat_interval=0.1, **setting)):
            await seen.wait(RECYCLED)

    assert seen.events[0].metadata["reason"] == reason


async def test_recycle_drains_the_call_in_flight(tmp_path: Path) -> None:
    """A manual recycle waits for the running call, then replaces the worker."""
    gate = tmp_path / "gate"
    async with open_pool(adapter(), **options()) as pool:
        old = await pool.execute("pid")
        results: list[str] = []

        async def slow() -> None:
            results.append(await pool.execute("hold", {"gate": str(gate), "tag": "drained"}))

        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(slow)
            await wait_until(lambda: pool.status().in_flight == 1, "the slow call to start")
            tasks.start_soon(pool.recycle_worker, "default_worker_1")
            await wait_until(lambda: not pool.workers(), "the worker to stop taking calls")
            assert results == []
        new = await pool.execute("pid")
        with pytest.raises(LookupError):
            await pool.recycle_worker("default_worker_9")

    assert results == ["drained"]
    assert old != new


async def test_recycle_returns_when_the_replacement_cannot_start(tmp_path: Path) -> None:
    """recycle_worker raises WorkerStartError, bounded, when no replacement gets ready."""
    # Short start-up and drain bounds: the bound recycle_worker waits is their sum.
    settings = options(
        startup_timeout=2,
        shutdown_timeout=1,
        restart_backoff_max=0.5,
        env={"STARTS_ONCE_MARKER": str(tmp_path / "started")},
    )
    async with open_pool(adapter("StartsOnce"), **settings) as pool:
        assert await pool.execute("identity", 1) == 1
        with anyio.fail_after(30), pytest.raises(WorkerStartError, match="no replacement"):
            await pool.recycle_worker("default_worker_1")


async def test_a_strict_call_waiting_for_a_dead_worker_goes_to_its_replacement(
    tmp_path: Path,
) -> None:
    """A call waiting for its session's worker (strict) runs on the replacement when that
    worker dies, and the calls behind it are not held up."""
    gate = tmp_path / "gate"
    async with open_pool(adapter(), **options(affinity="strict")) as pool:
        await pool.execute("sleep", {"seconds": 0.01}, session_id="s")
        results: list[object] = []

        async def call(*args: Any, **kwargs: Any) -> None:
            try:
                results.append(await pool.execute(*args, **kwargs))
            except WorkerCrashedError as exc:
                results.append(type(exc).__name__)

        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(functools.partial(call, "hold", {"gate": str(gate)}, session_id="s"))
            await wait_until(lambda: pool.status().in_flight == 1, "the session's call to start")
            tasks.start_soon(functools.partial(call, "identity", "strict", session_id="s"))
            await wait_until(lambda: pool.status().queue_depth == 1, "the strict call to wait")
            os.kill(pool.workers()["default_worker_1"], signal.SIGKILL)
            with anyio.fail_after(10):
                await wait_until(lambda: len(results) == 2, "both calls to end")
            with anyio.fail_after(10):
                assert await pool.execute("identity", "after", session_id="s") == "after"

    assert results == ["WorkerCrashedError", "strict"]


async def test_missed_heartbeats_kill_and_replace_the_worker() -> None:
    """A worker that stops answering (SIGSTOP) is killed after the missed beats."""
    with telemetry.capture(TERMINATED) as seen:
        async with open_pool(adapter(), **options(heartbeat_interval=0.1)) as pool:
            old = await pool.execute("pid")
            with pytest.raises(WorkerCrashedError):
                await pool.execute("freeze")
            with anyio.fail_after(10):
                new = await pool.execute("pid")

    assert old != new
    assert seen.events[0].metadata["reason"] == "heartbeat_timeout"


async def test_session_affinity_hint_prefers_the_sessions_worker() -> None:
    """Calls of one session go to the same worker while it is free."""
    async with open_pool(adapter(), **options(size=3)) as pool:
        first = await pool.execute("pid", session_id="s1")
        again = [await pool.execute("pid", session_id="s1") for _ in range(5)]
        info = pool.session("s1")

    assert set(again) == {first}
    assert info is not None
    assert (info.worker_pid, info.calls, info.rehomed) == (first, 6, 0)


async def start_session(pool: Pool, warm: bool) -> int:
    """Start session "s" with a call long enough that its worker learns nothing quick (then
    warm it up if asked); return the session's worker pid."""
    await pool.execute("sleep", {"seconds": 0.01}, session_id="s")
    await warm_up(pool, warm, session_id="s")
    info = pool.session("s")
    assert info is not None
    return info.worker_pid


@WARM
async def test_strict_affinity_waits_for_the_sessions_worker(tmp_path: Path, warm: bool) -> None:
    """strict: with the session's worker busy, the call waits for it, not for another."""
    gate = tmp_path / "gate"
    async with open_pool(adapter(), **options(size=2, **warmth(warm))) as pool:
        home = await start_session(pool, warm)
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(
                functools.partial(pool.execute, "hold", {"gate": str(gate)}, session_id="s")
            )
            await wait_until(lambda: pool.status().in_flight == 1, "the session's call to start")
            waiting = {"pid": 0}

            async def strict_call() -> None:
                waiting["pid"] = await pool.execute("pid", session_id="s", affinity="strict")

            tasks.start_soon(strict_call)
            await wait_until(lambda: accepted(pool) == 2, "the strict call to be accepted")
            assert pool.status().queue_depth == 1
        assert waiting["pid"] == home


@WARM
async def test_strict_fail_fast_affinity_raises_at_once(tmp_path: Path, warm: bool) -> None:
    """strict_fail_fast: the session's worker is busy, so the call fails at once."""
    gate = tmp_path / "gate"
    async with open_pool(adapter(), **options(size=2, **warmth(warm))) as pool:
        await start_session(pool, warm)
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(
                functools.partial(pool.execute, "hold", {"gate": str(gate)}, session_id="s")
            )
            await wait_until(lambda: pool.status().in_flight == 1, "the session's call to start")
            with pytest.raises(SessionUnavailableError, match="'s'"):
                # The deadline only bounds the test if the call is not refused at once.
                await pool.execute("pid", session_id="s", affinity="strict_fail_fast", timeout=1)


async def test_a_hint_call_run_elsewhere_leaves_the_session_with_its_worker(
    tmp_path: Path,
) -> None:
    """hint: with the session's worker busy, a call of the session runs on another worker,
    and the session stays with its worker: a later strict call finds there what the
    session kept, and the session was never re-homed."""
    gate = tmp_path / "gate"
    async with open_pool(adapter(), **options(size=2)) as pool:
        _, _, home = await pool.execute("session_state", "kept", session_id="s")
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(
                functools.partial(pool.execute, "hold", {"gate": str(gate)}, session_id="s")
            )
            await wait_until(lambda: pool.status().in_flight == 1, "the session's call to start")
            elsewhere = await pool.execute("session_state", session_id="s", affinity="hint")
            during = pool.session("s")
        back = await pool.execute("session_state", session_id="s", affinity="strict")
        info = pool.session("s")

    assert elsewhere[1:] == [None, elsewhere[2]]
    assert elsewhere[2] != home
    assert back == ["s", "kept", home]
    assert during is not None
    assert info is not None
    assert (during.worker_pid, during.rehomed) == (home, 0)
    assert (info.worker_pid, info.calls, info.rehomed) == (home, 4, 0)


async def test_session_of_a_dead_worker_is_rehomed_and_the_caller_can_tell() -> None:
    """After its worker died, the session moves to a live worker; session() says so."""
    async with open_pool(adapter(), **options(size=2)) as pool:
        home = await pool.execute("pid", session_id="s")
        with pytest.raises(WorkerCrashedError):
            await pool.execute("die", session_id="s")
        with anyio.fail_after(10):
            moved = await pool.execute("pid", session_id="s", affinity="strict")
        info = pool.session("s")

    assert moved != home
    assert info is not None
    assert (info.worker_pid, info.rehomed) == (moved, 1)


async def test_idempotent_call_is_retried_once_after_a_crash(tmp_path: Path) -> None:
    """idempotent=True: the crashed call runs again on another worker and succeeds."""
    marker = tmp_path / "runs"
    async with open_pool(adapter(), **options(size=2)) as pool:
        result = await pool.execute("crash_once", {"path": str(marker)}, idempotent=True)

    assert result == "ok"
    assert len(marker.read_text().split()) == 2


async def test_call_not_marked_idempotent_never_runs_twice(tmp_path: Path) -> None:
    """Without idempotent, a crash is the caller's error and the call is not repeated."""
    marker = tmp_path / "runs"
    async with open_pool(adapter(), **options(size=2)) as pool:
        with pytest.raises(WorkerCrashedError):
            await pool.execute("crash_once", {"path": str(marker)})
        await pool.execute("identity", 1)

    assert len(marker.read_text().split()) == 1


async def test_heartbeats_are_answered_while_a_sync_tool_runs() -> None:
    """A sync tool blocking for many heartbeat intervals does not get its worker killed."""
    with telemetry.capture(TERMINATED) as seen:
        async with open_pool(adapter(), **options(heartbeat_interval=0.05)) as pool:
            pid = await pool.execute("pid")
            assert await pool.execute("sleep", {"seconds": 0.6}) == 0.6
            assert await pool.execute("pid") == pid

    assert [e.metadata["reason"] for e in seen] == ["shutdown"]


async def test_running_out_of_file_descriptors_fails_a_start_not_the_pool() -> None:
    """A replacement that cannot start because the process is out of file descriptors is
    a failed start (``exec_failed``), retried with back-off: the pool stays open (calls
    fail fast with ``PoolDegradedError`` meanwhile), and the slot serves again once
    descriptors are free."""
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        held: list[int] = []
        with telemetry.capture((*POOL, "worker", "spawn_failed")) as failed:
            try:
                # Every descriptor taken, so that the replacement cannot get one.
                resource.setrlimit(
                    resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard)
                )
                with contextlib.suppress(OSError):
                    while True:
                        held.append(os.open(os.devnull, os.O_RDONLY))
                os.kill(pid, signal.SIGKILL)
                await failed.wait((*POOL, "worker", "spawn_failed"))
                assert not pool.status().closed
            finally:
                for fd in held:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert failed.events[0].metadata["reason"] == "exec_failed"
        # The slot's back-off: a few seconds at most.
        await wait_until(lambda: pool.status().available_workers == 1, "the recovery", 30)
        assert await pool.execute("pid") != pid


async def test_a_worker_that_dies_while_the_pool_drains_is_not_replaced(tmp_path: Path) -> None:
    """Once the pool stopped taking calls and drains those in flight, a worker that dies
    fails its calls and is not replaced: nothing is left for a new one to do."""
    gate = tmp_path / "gate"
    with telemetry.capture(SPAWN_STARTED) as seen:
        async with open_pool(adapter(), **options()) as pool:
            pid = await pool.execute("pid")

            async def held() -> None:
                with pytest.raises(WorkerCrashedError):
                    await pool.execute("hold", {"gate": str(gate)})

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(held)
                await wait_until(lambda: pool.status().in_flight == 1, "the call to run")
                tasks.start_soon(pool.aclose)
                await wait_until(lambda: pool.status().closed, "the pool to drain")
                os.kill(pid, signal.SIGKILL)
    assert [e.metadata["reason"] for e in seen.named(*SPAWN_STARTED)] == ["initial"]


async def test_worker_status_tells_each_slot_s_worker_and_its_history() -> None:
    """``worker_status()`` gives each slot's worker: its pid, state, calls, start-up
    times; after a crash the slot's restarts and the last exit's reason; once the pool
    closed, the slot is stopped."""
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        (status,) = pool.worker_status()
        assert (status.worker_id, status.pid, status.state) == ("default_worker_1", pid, "idle")
        assert (status.calls, status.in_flight, status.restarts) == (1, 0, 0)
        assert (status.last_exit, status.failure) == (None, None)
        assert status.uptime > 0
        assert status.import_seconds > 0
        assert status.setup_seconds >= 0
        assert status.node
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: pool.worker_status()[0].state == "idle", "the replacement")
        await wait_until(lambda: pool.worker_status()[0].pid != pid, "the new pid")
        (status,) = pool.worker_status()
        assert (status.restarts, status.last_exit, status.calls) == (1, "killed", 0)
    (status,) = pool.worker_status()
    assert (status.state, status.pid) == ("stopped", None)

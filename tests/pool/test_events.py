"""Every pool, rpc and python.call event, triggered for real, with exactly the catalog's keys."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from pypit import (
    PoolSaturatedError,
    QueueTimeoutError,
    ToolError,
    WorkerCrashedError,
    WorkerStartError,
    _wire,
    telemetry,
)
from pypit.pool import _events, open_pool
from pypit.pool._control import Control
from pypit.pool._worker import WorkerHandle
from pypit.telemetry import CapturedEvent, _registry
from tests.pool.conftest import adapter, assert_catalog_shape, opened_at_exit, options, wait_until

pytestmark = pytest.mark.anyio

POOL = ("pypit", "pool")
RPC = ("pypit", "rpc")
PYTHON = ("pypit", "python")
PYPIT_EVENTS = [spec.name for spec in telemetry.CATALOG if spec.name[0] == "pypit"]


def names(seen: telemetry.Capture) -> list[tuple[str, ...]]:
    return [e.event for e in seen]


def only(seen: telemetry.Capture, *event: str) -> CapturedEvent:
    (captured,) = seen.named(*event)
    assert_catalog_shape(captured)
    return captured


async def test_start_up_and_shutdown_events() -> None:
    """initialized, spawn_started, connection.established, spawned; then lost and terminated."""
    events = [
        (*POOL, "initialized"),
        (*POOL, "worker", "spawn_started"),
        (*POOL, "worker", "spawned"),
        (*POOL, "worker", "terminated"),
        (*RPC, "connection", "established"),
        (*RPC, "connection", "lost"),
    ]
    with telemetry.capture(*events) as seen:
        async with open_pool(adapter(), **options(size=2, name="life")) as pool:
            pids = set(pool.workers().values())
            await pool.execute("identity", 1)

    for event in seen:
        assert_catalog_shape(event)
    initialized = only(seen, *POOL, "initialized")
    assert initialized.measurements["total_workers"] == 2
    assert initialized.measurements["ready_workers"] == 2
    assert initialized.metadata["adapter"] == "tests.adapters:Echo"
    started = seen.named(*POOL, "worker", "spawn_started")
    assert sorted(e.metadata["worker_id"] for e in started) == ["life_worker_1", "life_worker_2"]
    assert {e.metadata["reason"] for e in started} == {"initial"}
    spawned = seen.named(*POOL, "worker", "spawned")
    assert {e.metadata["worker_pid"] for e in spawned} == pids
    assert all(e.metadata["python_pid"] == e.metadata["worker_pid"] for e in spawned)
    assert {e.metadata["mode"] for e in spawned} == {"process"}
    terminated = seen.named(*POOL, "worker", "terminated")
    assert {e.metadata["planned"] for e in terminated} == {True}
    assert {e.metadata["reason"] for e in terminated} == {"shutdown"}
    assert {e.metadata["exit_code"] for e in terminated} == {0}
    assert sum(e.measurements["total_commands"] for e in terminated) == 1
    assert {e.metadata["python_pid"] for e in seen.named(*RPC, "connection", "lost")} == pids
    assert {e.metadata["reason"] for e in seen.named(*RPC, "connection", "lost")} == {"shutdown"}
    assert len(seen.named(*RPC, "connection", "established")) == 2


async def test_status_event_on_demand_and_periodically() -> None:
    """emit_status() emits at once; status_interval emits on its own."""
    with telemetry.capture((*POOL, "status")) as seen:
        async with open_pool(adapter(), **options(status_interval=0.05)) as pool:
            pool.emit_status()
            assert len(seen) >= 1
            await seen.wait((*POOL, "status"), count=3)

    first = seen.events[0]
    assert_catalog_shape(first)
    assert first.metadata == {"pool_name": "default"}
    assert first.measurements == {
        "queue_depth": 0,
        "available_workers": 1,
        "busy_workers": 0,
        "total_workers": 1,
        "in_flight": 0,
    }


async def test_rpc_call_start_and_stop() -> None:
    """A successful call: start then stop, same metadata, byte counts, one span context."""
    with telemetry.capture((*RPC, "call", "start"), (*RPC, "call", "stop")) as seen:
        async with open_pool(adapter(), **options()) as pool:
            await pool.execute("echo", {"x": "y" * 100}, session_id="s1", correlation_id="c1")

    start = only(seen, *RPC, "call", "start")
    stop = only(seen, *RPC, "call", "stop")
    assert start.metadata == stop.metadata
    assert start.metadata["command"] == "echo"
    assert start.metadata["session_id"] == "s1"
    assert start.metadata["correlation_id"] == "c1"
    assert start.metadata["worker_id"] == "default_worker_1"
    assert stop.measurements["request_bytes"] > 100
    assert stop.measurements["response_bytes"] > 100
    assert stop.measurements["duration"] > 0


async def test_rpc_call_exception_for_tool_error_timeout_and_cancellation() -> None:
    """Every error the caller gets is one exception event, with error_type; never a stop."""
    events = [(*RPC, "call", e) for e in ("start", "stop", "exception")]
    with telemetry.capture(*events) as seen:
        async with open_pool(adapter(), **options()) as pool:
            with pytest.raises(ToolError):
                await pool.execute("fail")
            with pytest.raises(TimeoutError):
                await pool.execute("async_sleep", {"seconds": 10}, timeout=0.05)
            # The worker answers the cancelled call before the next one can start.
            await wait_until(lambda: pool.status().in_flight == 0, "the cancel's answer")
            with anyio.CancelScope() as scope:
                tasks_started = pool.status().requests
                async with anyio.create_task_group() as tasks:

                    async def cancel_once_running() -> None:
                        await wait_until(lambda: pool.status().in_flight == 1, "the third call")
                        scope.cancel()

                    tasks.start_soon(cancel_once_running)
                    await pool.execute("async_sleep", {"seconds": 10})
            assert pool.status().requests == tasks_started + 1

    exceptions = seen.named(*RPC, "call", "exception")
    assert seen.named(*RPC, "call", "stop") == []
    assert len(seen.named(*RPC, "call", "start")) == 3
    for event in exceptions:
        assert_catalog_shape(event)
    assert [e.metadata["error_type"] for e in exceptions[:2]] == ["ToolError", "WorkerTimeoutError"]
    assert [e.metadata["kind"] for e in exceptions] == ["error", "error", "exit"]
    assert isinstance(exceptions[0].metadata["reason"], ToolError)
    assert exceptions[0].metadata["error_message"] == str(exceptions[0].metadata["reason"])


async def test_rpc_call_exception_for_a_crash() -> None:
    """A crash is reported as an exception event with WorkerCrashedError."""
    with telemetry.capture((*RPC, "call", "exception")) as seen:
        async with open_pool(adapter(), **options()) as pool:
            with pytest.raises(WorkerCrashedError):
                await pool.execute("die")

    assert only(seen, *RPC, "call", "exception").metadata["error_type"] == "WorkerCrashedError"


async def test_crash_events() -> None:
    """A killed worker: terminated (unplanned), connection lost, then a restart is spawned."""
    events = [
        (*POOL, "worker", "terminated"),
        (*POOL, "worker", "spawn_started"),
        (*POOL, "worker", "spawned"),
        (*POOL, "worker", "restarted"),
        (*RPC, "connection", "lost"),
    ]
    with telemetry.capture(*events) as seen:
        async with open_pool(adapter(), **options()) as pool:
            old = await pool.execute("pid")
            with pytest.raises(WorkerCrashedError):
                await pool.execute("die")
            await seen.wait((*POOL, "worker", "restarted"))
            new = await pool.execute("pid")

    for event in seen:
        assert_catalog_shape(event)
    crash = seen.named(*POOL, "worker", "terminated")[0]
    assert crash.metadata["planned"] is False
    assert crash.metadata["reason"] == "killed"
    assert crash.metadata["exit_code"] == -9
    assert crash.metadata["worker_pid"] == old
    lost = seen.named(*RPC, "connection", "lost")[0]
    assert lost.metadata["reason"] == "closed"
    reasons = [e.metadata["reason"] for e in seen.named(*POOL, "worker", "spawn_started")]
    assert reasons == ["initial", "restart"]
    restarted = only(seen, *POOL, "worker", "restarted")
    assert (restarted.metadata["previous_pid"], restarted.metadata["new_pid"]) == (old, new)
    assert restarted.measurements["restart_count"] == 1


async def test_queue_events(tmp_path: Path) -> None:
    """enqueued and dequeued for a waiting call; timeout for one that waited too long."""
    events = [(*POOL, "queue", e) for e in ("enqueued", "dequeued", "timeout")]
    gate, first = tmp_path / "gate", tmp_path / "first"
    with telemetry.capture(*events) as seen:
        # queue_timeout is off by default.
        async with open_pool(adapter(), **options(queue_timeout=1.0)) as pool:
            async with anyio.create_task_group() as tasks, opened_at_exit(first):
                tasks.start_soon(pool.execute, "hold", {"gate": str(first)})
                await wait_until(lambda: pool.status().in_flight == 1, "the first call to start")
                tasks.start_soon(functools.partial(pool.execute, "identity", 1, session_id="s"))
                await wait_until(lambda: pool.status().queue_depth == 1, "the call to queue")
            async with anyio.create_task_group() as tasks, opened_at_exit(gate):
                tasks.start_soon(pool.execute, "hold", {"gate": str(gate)})
                await wait_until(lambda: pool.status().in_flight == 1, "the first call to start")
                with pytest.raises(QueueTimeoutError):
                    await pool.execute("identity", 2, correlation_id="late")

    for event in seen:
        assert_catalog_shape(event)
    enqueued = seen.named(*POOL, "queue", "enqueued")
    assert [e.metadata["session_id"] for e in enqueued] == ["s", None]
    assert enqueued[0].measurements["queue_depth"] == 1
    dequeued = only(seen, *POOL, "queue", "dequeued")
    assert dequeued.metadata["request_id"] == enqueued[0].metadata["request_id"]
    assert dequeued.measurements["queue_time"] > 0
    timeout = only(seen, *POOL, "queue", "timeout")
    assert timeout.metadata["correlation_id"] == "late"
    assert timeout.measurements["queue_time"] >= 950_000_000


async def test_saturated_event(tmp_path: Path) -> None:
    """A rejected call emits saturated with the queue and worker figures."""
    gate = tmp_path / "gate"
    with telemetry.capture((*POOL, "saturated")) as seen:
        # max_queue_size=0: saturated as soon as the one worker is busy.
        async with open_pool(adapter(), **options(max_queue_size=0)) as pool:
            async with anyio.create_task_group() as tasks, opened_at_exit(gate):
                tasks.start_soon(pool.execute, "hold", {"gate": str(gate)})
                await wait_until(lambda: pool.status().in_flight == 1, "the first call to start")
                with pytest.raises(PoolSaturatedError):
                    await pool.execute("identity", 1)

    saturated = only(seen, *POOL, "saturated")
    assert saturated.measurements == {"queue_depth": 0, "max_queue_size": 0}
    assert saturated.metadata["busy_workers"] == 1
    assert saturated.metadata["available_workers"] == 0
    assert saturated.metadata["command"] == "identity"


async def test_every_call_start_ends_in_a_stop_or_an_exception() -> None:
    """rpc.call.* is for calls: a stream emits rpc.stream.* only, so every rpc.call.start
    has its stop or exception."""
    events = [(*RPC, "call", e) for e in ("start", "stop", "exception")]
    with telemetry.capture(*events) as seen:
        async with open_pool(adapter(), **options()) as pool:
            async with pool.stream("count", {"n": 2}) as chunks:
                assert [c async for c in chunks] == [1, 2]
            assert await pool.execute("identity", 1) == 1
            with pytest.raises(ToolError):
                await pool.execute("fail")

    starts = [e.metadata["request_id"] for e in seen.named(*RPC, "call", "start")]
    ends = [
        e.metadata["request_id"]
        for e in seen.named(*RPC, "call", "stop") + seen.named(*RPC, "call", "exception")
    ]
    assert len(starts) == 2
    assert sorted(starts) == sorted(ends)


async def test_stream_events() -> None:
    """opened, one message per chunk with sequence numbers, closed complete or cancelled."""
    events = [(*RPC, "stream", e) for e in ("opened", "message", "closed")]
    with telemetry.capture(*events) as seen:
        async with open_pool(adapter(), **options()) as pool:
            async with pool.stream("count", {"n": 3}) as chunks:
                assert [c async for c in chunks] == [1, 2, 3]
            async with pool.stream("count", {"n": 100}) as chunks:
                async for chunk in chunks:
                    if chunk == 2:
                        break

    for event in seen:
        assert_catalog_shape(event)
    opened = seen.named(*RPC, "stream", "opened")
    assert [e.metadata["command"] for e in opened] == ["count", "count"]
    first_id = opened[0].metadata["stream_id"]
    messages = [
        e for e in seen.named(*RPC, "stream", "message") if e.metadata["stream_id"] == first_id
    ]
    assert [e.measurements["sequence_number"] for e in messages] == [1, 2, 3]
    closed = seen.named(*RPC, "stream", "closed")
    assert [e.metadata["reason"] for e in closed] == ["complete", "cancelled"]
    assert [e.measurements["message_count"] for e in closed] == [3, 2]


async def test_python_call_events_are_shipped_from_the_worker() -> None:
    """python.call.start/stop/exception come from the worker, with the parent's three keys."""
    events = [(*PYTHON, "call", e) for e in ("start", "stop", "exception")]
    with telemetry.capture(*events) as seen:
        async with open_pool(adapter(), **options()) as pool:
            pid = await pool.execute("pid", correlation_id="corr-1")
            with pytest.raises(ToolError):
                await pool.execute("fail", {"message": "nope"})

    for event in seen:
        assert_catalog_shape(event)
    start, stop, _, exception = seen.events
    assert (start.event, stop.event) == ((*PYTHON, "call", "start"), (*PYTHON, "call", "stop"))
    assert start.metadata["correlation_id"] == "corr-1"
    assert start.metadata["python_pid"] == pid
    assert start.metadata["pool_name"] == "default"
    assert start.metadata["worker_id"] == "default_worker_1"
    assert stop.metadata["command"] == "pid"
    assert stop.measurements["duration"] > 0
    assert exception.metadata["error_type"] == "ValueError"
    assert exception.metadata["error_message"] == "nope"


async def test_python_events_not_listened_to_are_not_shipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no handler on python.call.*, the workers do not send those events at all."""
    received: list[list[str]] = []
    original = Control.on_events

    def spy(control: Control, worker: WorkerHandle, batch: _wire.Events) -> None:
        received[-1].extend(name for name, _, _ in batch.events)
        original(control, worker, batch)

    monkeypatch.setattr(Control, "on_events", spy)
    async with open_pool(adapter(), **options()) as pool:
        for listened in (False, True, False):
            received.append([])
            with contextlib.ExitStack() as stack:
                if listened:
                    stack.enter_context(telemetry.capture((*PYTHON, "call", "stop")))
                # A call's events travel ahead of its result.
                await pool.execute("identity", 1)

    assert [("call.stop" in names) for names in received] == [False, True, False]


async def test_spawn_failed_when_setup_raises() -> None:
    """A worker whose setup() raises emits spawn_failed; with none ready, open_pool fails."""
    events = [(*POOL, "worker", "spawn_failed"), (*POOL, "initialized")]
    with telemetry.capture(*events) as seen, pytest.raises(WorkerStartError, match="FailingSetup"):
        async with open_pool(adapter("FailingSetup"), **options()):
            pass

    failed = only(seen, *POOL, "worker", "spawn_failed")
    assert failed.metadata["reason"] == "setup_failed"
    assert failed.metadata["worker_id"] == "default_worker_1"
    assert only(seen, *POOL, "initialized").measurements["ready_workers"] == 0


async def test_spawn_failed_when_the_adapter_cannot_be_imported() -> None:
    """An adapter module that does not exist: spawn_failed with reason import_failed."""
    with (
        telemetry.capture((*POOL, "worker", "spawn_failed")) as seen,
        pytest.raises(WorkerStartError),
    ):
        async with open_pool("tests.no_such_module:Nothing", **options()):
            pass

    assert only(seen, *POOL, "worker", "spawn_failed").metadata["reason"] == "import_failed"


@pytest.mark.parametrize("listening", [False, True])
async def test_no_handlers_means_no_events_built(
    monkeypatch: pytest.MonkeyPatch, listening: bool
) -> None:
    """Without handlers the pool builds and dispatches no event at all (and, to show the
    check can fail, with one handler per event it does)."""
    dispatched: list[tuple[str, ...]] = []

    def counting(real: Any) -> Any:
        def wrapper(*args: Any) -> None:
            dispatched.append(args[1] if real is _registry._dispatch else args[0])
            real(*args)

        return wrapper

    # Every event of the pool leaves through these two functions of its events module.
    for name in ("execute", "_dispatch"):
        monkeypatch.setattr(_events, name, counting(getattr(_events, name)))
    with contextlib.ExitStack() as stack:
        if listening:
            stack.enter_context(telemetry.capture(*(spec.name for spec in telemetry.CATALOG)))
        assert len(telemetry.list_handlers(("pypit",))) == (len(PYPIT_EVENTS) if listening else 0)
        async with open_pool(adapter(), **options()) as pool:
            assert await pool.execute("identity", os.getpid()) == os.getpid()
            async with pool.stream("count", {"n": 2}) as chunks:
                assert [c async for c in chunks] == [1, 2]

    assert bool(dispatched) == listening


async def test_the_callers_correlation_id_is_used_when_none_is_given() -> None:
    """A correlation id set in the caller's context travels with its calls."""
    from pypit.worker import telemetry as worker_telemetry

    with telemetry.capture((*RPC, "call", "start")) as seen:
        async with open_pool(adapter(), **options()) as pool:
            token = worker_telemetry.set_correlation_id("from-the-caller")
            try:
                await pool.execute("identity", 1)
            finally:
                worker_telemetry.reset_correlation_id(token)
            await pool.execute("identity", 2)

    first, second = (e.metadata["correlation_id"] for e in seen)
    assert first == "from-the-caller"
    assert second not in ("from-the-caller", None)

"""Calls on real worker processes, on asyncio and trio (streams: test_streams.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
import structlog

from pypit import (
    FrameTooLargeError,
    PoolClosedError,
    PoolSaturatedError,
    QueueTimeoutError,
    SerializationError,
    SessionUnavailableError,
    ToolError,
    UnknownCommandError,
    WorkerCrashedError,
    WorkerTimeoutError,
    telemetry,
)
from pypit.pool import Pool, open_pool
from tests.adapters import Unrepresentable, nested
from tests.pool.conftest import (
    WARM,
    accepted,
    adapter,
    opened_at_exit,
    options,
    wait_until,
    warm_up,
    warmth,
)
from tests.test_wire import CONVERTED, REFUSED, SAME
from tests.values import WIRE_VALUES, typed

pytestmark = pytest.mark.anyio


async def test_execute_passes_arguments_and_returns_results() -> None:
    """A dict becomes keyword arguments, None no arguments, anything else one positional."""
    async with open_pool(adapter(), **options()) as pool:
        assert await pool.execute("echo", {"a": 1, "b": [1, "x"]}) == {"a": 1, "b": [1, "x"]}
        assert await pool.execute("echo") == {}
        assert await pool.execute("identity", [1, 2]) == [1, 2]
        assert await pool.execute("identity", b"\x00bytes") == b"\x00bytes"
        assert await pool.execute("add", {"a": 2, "b": 3}) == 5
        assert await pool.execute("async_sleep", {"seconds": 0.001}) == 0.001


async def test_tools_are_reported_by_the_workers() -> None:
    """pool.tools() lists each tool with its description and whether it streams."""
    async with open_pool(adapter(), **options()) as pool:
        tools = pool.tools()

    assert tools["echo"].description == "Return the arguments"
    assert tools["count"].stream
    assert tools["async_count"].stream
    assert not tools["add"].stream
    assert "setup" not in tools


async def test_an_adapter_with_async_tools_starts_their_loop_with_the_worker() -> None:
    """The loop that runs async tools is up when the worker is ready, so that its start
    is not spent from the first async call's timeout."""
    async with open_pool(adapter(), **options()) as pool:
        assert "pypit-async-tools" in await pool.execute("thread_names")


async def test_unknown_command_fails_fast_with_the_known_tools() -> None:
    """An unknown command raises before anything is sent, naming the tools that exist."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(UnknownCommandError, match=r"'nope'.*echo"):
            await pool.execute("nope")
        assert pool.status().requests == 0


async def test_execute_on_a_stream_tool_is_a_type_error() -> None:
    """Generator tools are called with stream(), others with execute()."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(TypeError, match=r"pool\.stream"):
            await pool.execute("count", {"n": 1})
        with pytest.raises(TypeError, match=r"pool\.execute"):
            await pool.stream("echo").__aenter__()
        assert pool.status().requests == 0


async def test_tool_error_carries_type_message_and_remote_traceback() -> None:
    """A tool that raises surfaces as ToolError with the remote details; the worker lives on."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(ToolError) as info:
            await pool.execute("fail", {"message": "bad input"})
        assert await pool.execute("identity", 1) == 1

    error = info.value
    assert error.remote_type == "ValueError"
    assert error.remote_message == "bad input"
    assert "raise ValueError(message)" in error.remote_traceback
    assert "tests/adapters.py" in error.remote_traceback


async def test_non_serializable_argument_is_refused_before_sending() -> None:
    """An argument msgpack cannot carry raises SerializationError naming its type."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(SerializationError, match="object"):
            await pool.execute("identity", object())
        with pytest.raises(TypeError):
            await pool.execute("identity", {"f": print})
        assert pool.status().requests == 0
        assert await pool.execute("identity", 2) == 2


async def test_arguments_the_wire_cannot_carry_are_a_serialization_error() -> None:
    """Arguments nested past the recursion limit, or of a type msgpack lacks whose repr
    raises, raise SerializationError (a TypeError) in the caller; nothing is sent."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(SerializationError, match="nested too deep"):
            await pool.execute("identity", nested(1000))
        with pytest.raises(SerializationError, match="nested too deep"):
            async with pool.stream("count", {"n": nested(1000)}):
                pass
        with pytest.raises(SerializationError, match="Unrepresentable"):
            await pool.execute("identity", Unrepresentable())
        assert pool.status().requests == 0
        assert await pool.execute("identity", nested(10)) == nested(10)


async def test_what_a_tool_receives_and_what_its_caller_gets_back() -> None:
    """Every kind of value of docs/configuration.md's table, on a real worker: sent as an
    argument, the tool gets it as itself or as the table says, or the caller gets
    SerializationError before anything is sent; returned by the tool, the caller gets it
    the same way, or SerializationError, and the worker serves on."""
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        for kind in sorted(WIRE_VALUES):
            if kind in REFUSED:
                sent = pool.status().requests
                with pytest.raises(SerializationError) as refused:
                    await pool.execute("typed", {"value": WIRE_VALUES[kind]()})
                assert "args['value']" in str(refused.value), kind
                assert REFUSED[kind] in str(refused.value), kind
                assert pool.status().requests == sent, kind
                with pytest.raises(SerializationError) as unsent:
                    await pool.execute("make", {"kind": kind})
                assert "the worker could not send the result" in str(unsent.value), kind
                assert REFUSED[kind] in str(unsent.value), kind
                continue
            expected = WIRE_VALUES[kind]() if kind in SAME else CONVERTED[kind]
            received = await pool.execute("typed", {"value": WIRE_VALUES[kind]()})
            assert received == typed(expected), kind
            assert typed(await pool.execute("make", {"kind": kind})) == typed(expected), kind
        assert await pool.execute("pid") == pid


def depth_of(value: list[Any]) -> int:
    """How deep a list made by ``nested`` is (counted without recursion: the test's own
    stack is deep)."""
    depth = 0
    while value:
        value = value[0]
        depth += 1
    return depth


async def test_a_result_as_deep_as_the_worker_can_encode_arrives() -> None:
    """A value's nesting is bounded by the recursion limit less the stack of the thread that
    encodes or decodes it, and the pool reads answers deeper in its stack than the worker
    writes them: whatever the worker could encode arrives, and what it could not is a
    SerializationError; the worker serves on either way."""
    async with open_pool(adapter("Unruly"), **options()) as pool:
        pid = await pool.execute("pid")
        depths = {depth: depth_of(await pool.execute("nest", depth)) for depth in (960, 980)}
        with pytest.raises(SerializationError, match="nested too deep"):
            await pool.execute("nest", 1000)
        assert await pool.execute("pid") == pid

    assert depths == {960: 960, 980: 980}


async def test_non_serializable_result_is_a_clear_error() -> None:
    """A result the worker cannot encode raises SerializationError; the worker lives on."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(SerializationError, match="could not send the result"):
            await pool.execute("unserializable")
        assert await pool.execute("identity", 3) == 3


async def test_frame_size_limit_applies_both_ways() -> None:
    """Arguments and results over max_frame_size raise FrameTooLargeError."""
    # The smallest limit allowed: the default (64 MiB) would need 64 MiB frames.
    async with open_pool(adapter(), **options(max_frame_size=65_536)) as pool:
        with pytest.raises(FrameTooLargeError, match="over the limit"):
            await pool.execute("identity", b"x" * 70_000)
        with pytest.raises(FrameTooLargeError, match="result is too large"):
            await pool.execute("blob", {"n": 70_000})
        assert await pool.execute("blob", {"n": 100}) == b"x" * 100


@WARM
async def test_full_queue_rejects_at_once(tmp_path: Path, warm: bool) -> None:
    """With the worker busy and the queue full, the next call raises PoolSaturatedError."""
    gate = tmp_path / "gate"
    # max_queue_size=1: the default (1000) would need a thousand waiting calls.
    async with open_pool(adapter(), **options(max_queue_size=1, **warmth(warm))) as pool:
        await warm_up(pool, warm)
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(pool.execute, "hold", {"gate": str(gate)})
            await wait_until(lambda: pool.status().in_flight == 1, "the first call to start")
            tasks.start_soon(pool.execute, "identity", 1)
            await wait_until(lambda: accepted(pool) == 2, "the second call to be accepted")
            assert pool.status().queue_depth == 1
            with pytest.raises(PoolSaturatedError, match="max_queue_size=1"):
                await pool.execute("identity", 2)
        assert pool.status().rejected == 1


@WARM
async def test_queue_timeout_and_the_request_never_runs(tmp_path: Path, warm: bool) -> None:
    """A call that waited past queue_timeout raises QueueTimeoutError and is never executed."""
    log, gate = tmp_path / "calls.log", tmp_path / "gate"
    # queue_timeout is off by default.
    async with open_pool(adapter(), **options(queue_timeout=0.1, **warmth(warm))) as pool:
        await warm_up(pool, warm)
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            first = {"path": str(log), "tag": "a", "gate": str(gate)}
            tasks.start_soon(pool.execute, "record_hold", first)
            await wait_until(lambda: pool.status().in_flight == 1, "the first call to start")
            with pytest.raises(QueueTimeoutError, match="was not run"):
                # The deadline only bounds the test when the queue timeout does not hold.
                await pool.execute("record", {"path": str(log), "tag": "b"}, timeout=1)
        assert await pool.execute("record", {"path": str(log), "tag": "c"}) == "c"

    assert log.read_text().split() == ["a", "c"]


@WARM
async def test_cancelled_waiting_call_never_runs(tmp_path: Path, warm: bool) -> None:
    """A queued call whose caller gave up is removed and never reaches a worker."""
    log, gate = tmp_path / "calls.log", tmp_path / "gate"
    async with open_pool(adapter(), **options(**warmth(warm))) as pool:
        await warm_up(pool, warm)
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            first = {"path": str(log), "tag": "a", "gate": str(gate)}
            tasks.start_soon(pool.execute, "record_hold", first)
            await wait_until(lambda: pool.status().in_flight == 1, "the first call to start")
            with anyio.CancelScope() as scope:
                tasks.start_soon(wait_then_cancel, pool, scope)
                await pool.execute("record", {"path": str(log), "tag": "b"})
            assert scope.cancelled_caught
            assert pool.status().queue_depth == 0
        assert await pool.execute("record", {"path": str(log), "tag": "c"}) == "c"

    assert log.read_text().split() == ["a", "c"]


async def test_the_counters_add_up(tmp_path: Path) -> None:
    """requests = completed + failed + rejected + in_flight + queue_depth, at any moment
    no abandoned call is still being answered."""
    gate = tmp_path / "gate"

    def balance(pool: Pool) -> tuple[int, int]:
        s = pool.status()
        return s.requests, s.completed + s.failed + s.rejected + s.in_flight + s.queue_depth

    # max_queue_size=1: a rejection after one waiting call.
    async with open_pool(adapter(), **options(max_queue_size=1)) as pool:
        await pool.execute("identity", 1, session_id="s")
        with pytest.raises(ToolError):
            await pool.execute("fail")
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(pool.execute, "hold", {"gate": str(gate)})
            await wait_until(lambda: pool.status().in_flight == 1, "the held call to start")
            tasks.start_soon(pool.execute, "identity", 2)
            await wait_until(lambda: pool.status().queue_depth == 1, "a call to wait")
            with pytest.raises(PoolSaturatedError):
                await pool.execute("identity", 3)
            with pytest.raises(SessionUnavailableError):
                await pool.execute("identity", 4, session_id="s", affinity="strict_fail_fast")
            requests, accounted = balance(pool)
            assert (requests, accounted) == (6, 6)
        assert balance(pool) == (6, 6)
        status = pool.status()
        assert (status.completed, status.failed, status.rejected) == (3, 1, 2)


async def test_a_waiting_calls_deadline_never_costs_the_busy_worker(tmp_path: Path) -> None:
    """A call waiting in a busy worker whose deadline passes fails with QueueTimeoutError
    and never runs; the worker is not killed, and its running call completes."""
    log, gate = tmp_path / "calls.log", tmp_path / "gate"
    # prefetch_below=0: every command is quick, so the second call waits in the worker.
    # A short cancel_grace: a kill for the withdrawn call, if it came, would come at once.
    settings = options(prefetch_below=0, cancel_grace=0.05)
    with telemetry.capture(("pypit", "pool", "worker", "terminated")) as terminated:
        async with open_pool(adapter(), **settings) as pool:
            pid = await pool.execute("pid")
            async with anyio.create_task_group() as tasks, opened_at_exit(gate):
                long = {"path": str(log), "tag": "long", "gate": str(gate)}
                tasks.start_soon(pool.execute, "record_hold", long)
                await wait_until(lambda: pool.status().in_flight == 1, "the long call to start")
                with pytest.raises(QueueTimeoutError, match="not run"):
                    await pool.execute("record", {"path": str(log), "tag": "late"}, timeout=0.2)
                await wait_until(lambda: accepted(pool) == 1, "the late call to be dropped")
                with anyio.move_on_after(0.3):
                    await terminated.wait(("pypit", "pool", "worker", "terminated"))
                assert pool.status().queue_timeouts == 1
            assert await pool.execute("pid") == pid

    assert log.read_text().split() == ["long"]
    assert [e.metadata["reason"] for e in terminated] == ["shutdown"]


async def wait_then_cancel(pool: Pool, scope: anyio.CancelScope) -> None:
    await wait_until(lambda: accepted(pool) == 2, "the second call to be accepted")
    scope.cancel()


async def test_cancelled_running_call_frees_the_worker() -> None:
    """Cancelling a running async call cancels it in the worker, which then serves again."""
    async with open_pool(adapter(), **options()) as pool:
        with anyio.move_on_after(0.1):
            await pool.execute("async_sleep", {"seconds": 30})
        with anyio.fail_after(5):
            assert await pool.execute("identity", 4) == 4
        assert pool.status().in_flight == 0


async def test_timeout_raises_worker_timeout_error() -> None:
    """A call past its timeout raises WorkerTimeoutError, a TimeoutError."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(WorkerTimeoutError):
            await pool.execute("async_sleep", {"seconds": 30}, timeout=0.1)
        with pytest.raises(TimeoutError):
            await pool.execute("async_sleep", {"seconds": 30}, timeout=0.1)
        assert await pool.execute("identity", 5, timeout=5) == 5


async def test_calls_that_time_out_leave_nothing_behind_once_answered() -> None:
    """A timed-out call whose worker answers the cancel at once keeps no task or timer in
    the pool: what watches the cancel is per worker, not per call."""
    async with open_pool(adapter(), **options()) as pool:
        await pool.execute("identity", 0)
        before = len(anyio.get_running_tasks())
        for _ in range(50):
            with pytest.raises(WorkerTimeoutError):
                await pool.execute("async_sleep", {"seconds": 30}, timeout=0.01)
            # The worker answers the cancel in milliseconds, well within cancel_grace (2 s).
            await wait_until(lambda: pool.status().in_flight == 0, "the cancel to be answered")
        assert len(anyio.get_running_tasks()) - before <= 2
        assert await pool.execute("identity", 1) == 1


async def test_many_concurrent_callers_all_get_their_own_result() -> None:
    """Results are routed to the right caller under concurrency."""
    results: dict[int, object] = {}
    # Two workers running two calls each: answers of concurrent calls interleave.
    async with open_pool(adapter(), **options(size=2, max_concurrency=2)) as pool:

        async def call(i: int) -> None:
            results[i] = await pool.execute("identity", i)

        async with anyio.create_task_group() as tasks:
            for i in range(200):
                tasks.start_soon(call, i)

    assert results == {i: i for i in range(200)}


async def test_two_named_pools_are_independent() -> None:
    """Two pools in one process have their own workers, names and counters."""
    async with (
        open_pool(adapter(), **options(name="left")) as left,
        open_pool(adapter(), **options(name="right", size=2)) as right,
    ):
        assert await left.execute("identity", "l") == "l"
        assert await right.execute("identity", "r") == "r"
        assert set(left.workers()) == {"left_worker_1"}
        assert set(right.workers()) == {"right_worker_1", "right_worker_2"}
        assert set(left.workers().values()).isdisjoint(right.workers().values())
        assert (left.status().requests, right.status().requests) == (1, 1)


@WARM
async def test_shutdown_drains_calls_in_flight_and_refuses_queued_ones(
    tmp_path: Path, warm: bool
) -> None:
    """Closing waits for running calls; queued ones get PoolClosedError; later calls too."""
    outcomes: dict[str, object] = {}
    gate = tmp_path / "gate"
    async with open_pool(adapter(), **options(**warmth(warm))) as pool:
        await warm_up(pool, warm)
        (worker_id,) = pool.workers()

        async def call(name: str, command: str, args: object) -> None:
            try:
                outcomes[name] = await pool.execute(command, args)
            except PoolClosedError as exc:
                outcomes[name] = exc

        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(call, "running", "hold", {"gate": str(gate), "tag": "drained"})
            await wait_until(lambda: pool.status().in_flight == 1, "the first call to start")
            tasks.start_soon(call, "queued", "identity", 1)
            await wait_until(lambda: accepted(pool) == 2, "the second call to be accepted")
            tasks.start_soon(pool.aclose)
            await wait_until(lambda: "queued" in outcomes, "the queued call to be refused")
            assert "running" not in outcomes

    assert outcomes["running"] == "drained"
    assert isinstance(outcomes["queued"], PoolClosedError)
    with pytest.raises(PoolClosedError):
        await pool.execute("identity", 1)
    for operation in (
        pool.configure_telemetry(enabled=False),
        pool.set_worker_level(worker_id, "debug"),
        pool.reset_worker_level(worker_id),
        pool.recycle_worker(worker_id),
    ):
        with pytest.raises(PoolClosedError, match="is closed"):
            await operation


@pytest.mark.parametrize("how", ["cancelled", "raised"])
async def test_leaving_the_block_by_cancellation_or_error_cancels_the_calls(
    how: str, tmp_path: Path
) -> None:
    """Leaving the pool's block by a cancellation or an exception does not drain: the calls
    in flight are cancelled (a caller still waiting gets PoolClosedError), the pool says
    so, and its workers are gone long before shutdown_timeout."""
    gate = tmp_path / "gate"
    outcome: dict[str, object] = {}
    outside = anyio.CancelScope()
    expected = (
        pytest.raises(RuntimeError, match="the block failed")
        if how == "raised"
        else contextlib.nullcontext()
    )
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as callers, opened_at_exit(gate):
            with expected, outside:
                async with open_pool(adapter(), **options(size=2, shutdown_timeout=20)) as pool:
                    workers = list(pool.workers().values())

                    async def call() -> None:
                        try:
                            outcome["call"] = await pool.execute("hold", {"gate": str(gate)})
                        except PoolClosedError as exc:
                            outcome["call"] = exc

                    callers.start_soon(call)
                    await wait_until(lambda: pool.status().in_flight == 1, "the call to start")
                    stopping = anyio.current_time()
                    if how == "raised":
                        raise RuntimeError("the block failed")
                    outside.cancel()
                    await anyio.sleep_forever()
            took = anyio.current_time() - stopping

    assert took < 5.0
    assert not [pid for pid in workers if psutil.pid_exists(pid)]
    assert isinstance(outcome["call"], PoolClosedError)
    (stopping_line,) = [e for e in logs if e["event"].startswith("stopping:")]
    assert stopping_line["event"] == "stopping: cancelling 1 call"
    assert stopping_line["pool_name"] == "default"


async def test_crash_fails_only_the_calls_in_flight_and_the_slot_restarts() -> None:
    """A worker killed mid-call fails that call with WorkerCrashedError; a new worker serves."""
    async with open_pool(adapter(), **options()) as pool:
        first = await pool.execute("pid")
        with pytest.raises(WorkerCrashedError) as info:
            await pool.execute("die")
        with anyio.fail_after(10):
            second = await pool.execute("pid")

    assert info.value.signal == 9
    assert info.value.exit_code is None
    assert info.value.worker_id == "default_worker_1"
    assert first != second


async def test_exit_code_is_reported() -> None:
    """A worker that exits mid-call reports its exit code."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            await pool.execute("exit", {"code": 7})

    assert (info.value.exit_code, info.value.signal) == (7, None)


async def test_a_result_is_not_held_back_behind_a_long_call() -> None:
    """Under load a worker batches results, holding one back for the next call when that
    tool is usually quick; when the next call runs long anyway, the result still leaves."""
    # No heartbeat: its answer would carry the held result along.
    async with open_pool(adapter(), **options(heartbeat_interval=0)) as pool:
        for _ in range(20):
            await pool.execute("pause", {"seconds": 0})
        finished: list[str] = []

        async def call(name: str, command: str, seconds: float) -> None:
            await pool.execute(command, {"seconds": seconds})
            finished.append(name)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, "first", "sleep", 0.2)
            await wait_until(lambda: pool.status().in_flight == 1, "the first call to start")
            tasks.start_soon(call, "usually quick", "pause", 1.0)
            await wait_until(lambda: bool(finished), "the first call's result")
            assert finished == ["first"]
            assert pool.status().in_flight == 1


async def test_only_quick_commands_wait_in_a_busy_worker(tmp_path: Path) -> None:
    """Prefetch is learned per command: calls of a command known to be quick wait in a
    busy worker (still counted as queued); calls of an unknown or slow command, or any
    call behind a slow one, wait in the pool's queue for whichever worker frees first."""
    gate = tmp_path / "gate"
    # prefetch_below raised from 1 ms to 50 ms: on a loaded machine pause(0) can average
    # over a millisecond; what is tested is the decision per command, not the threshold.
    async with open_pool(adapter(), **options(size=2, prefetch_below=0.05)) as pool:
        for _ in range(20):
            await pool.execute("pause", {"seconds": 0})

        async def placement(command: str, args: dict[str, object]) -> tuple[int, int]:
            """(queue_depth, calls in the pool's own queue) with five calls accepted."""
            async with anyio.create_task_group() as tasks, opened_at_exit(gate):
                for _ in range(5):
                    tasks.start_soon(pool.execute, command, args)
                await wait_until(lambda: accepted(pool) == 5, "five calls to be accepted")
                # The pool's own queue is private; the test looks at it to tell where the
                # waiting calls wait.
                placed = (pool.status().queue_depth, len(pool._scheduler.queue))
            gate.unlink()
            return placed

        # "pause" is known to be quick: the three calls that cannot start wait in workers.
        assert await placement("pause", {"seconds": 0.3}) == (3, 0)
        # "hold" was never seen: it is treated as slow, and its calls wait in the pool.
        assert await placement("hold", {"gate": str(gate)}) == (3, 3)


def test_a_ctrl_c_in_one_of_the_pools_tasks_leaves_as_keyboardinterrupt() -> None:
    """On trio a Ctrl-C may be raised in one of the pool's own tasks as well as in the
    caller's block, nested in groups: the pool's block raises the KeyboardInterrupt, not
    the groups; a group of one error is that error; several other errors stay a group."""
    from pypit.pool._pool import _the_error

    interrupt = KeyboardInterrupt()
    nested = BaseExceptionGroup(
        "tasks",
        [BaseExceptionGroup("writer", [interrupt]), BaseExceptionGroup("block", [ValueError()])],
    )
    assert _the_error(nested) is interrupt
    error = KeyError("mine")
    assert _the_error(BaseExceptionGroup("one", [ExceptionGroup("inner", [error])])) is error
    assert _the_error(ExceptionGroup("two", [KeyError(), ValueError()])) is None


async def test_an_error_in_the_pools_block_propagates_as_raised() -> None:
    """The caller's own exception leaves `async with open_pool` as itself, not in a group."""

    async def use_pool() -> None:
        async with open_pool(adapter(), **options()) as pool:
            await pool.execute("identity", 1)
            raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        await use_pool()

"""How a worker runs the calls it is sent: one limit for sync and async tools together, and
an answer for every call, whatever its tool returns, yields or raises."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from pypit import FrameTooLargeError, QueueTimeoutError, ToolError, telemetry
from pypit.pool import Pool, open_pool
from pypit.worker import get_session_id
from tests.pool.conftest import accepted, adapter, opened_at_exit, options, wait_until

pytestmark = pytest.mark.anyio

DEQUEUED = ("pypit", "pool", "queue", "dequeued")


async def learn_quick(pool: Pool, *calls: tuple[str, Mapping[str, object]]) -> None:
    """Teach the pool that these calls are quick, as a busy service would: from then on, it
    sends more of them to a busy worker, to wait there (prefetch, at its default settings)."""
    for _ in range(20):
        for command, args in calls:
            await pool.execute(command, dict(args))


async def sent(pool: Pool, requests: int) -> None:
    """Wait until the pool has taken ``requests`` calls since it opened."""
    await wait_until(lambda: pool.status().requests == requests, f"{requests} calls to be taken")


@pytest.mark.parametrize("max_concurrency", [1, 2])
async def test_max_concurrency_counts_sync_and_async_calls_together(max_concurrency: int) -> None:
    """Calls of sync and async tools sent to a busy worker wait there for the same slots:
    never more than max_concurrency of them run at once, the limit is reached, and the
    waiting ones report how long they waited."""
    tools = ("occupy", "async_occupy")
    calls = max_concurrency + 6
    seen: dict[int, list[int]] = {}
    async with open_pool(adapter(), **options(max_concurrency=max_concurrency)) as pool:
        await learn_quick(pool, *((tool, {"seconds": 0}) for tool in tools))

        async def call(i: int) -> None:
            # The calls that start at once outlast the sending of the others, which the
            # pool then sends to the busy worker since they are known to be quick.
            seconds = 0.5 if i < max_concurrency else 0.01
            seen[i] = await pool.execute(tools[i % 2], {"seconds": seconds})

        before = pool.status().requests
        with telemetry.capture(DEQUEUED) as dequeued:
            async with anyio.create_task_group() as tasks:
                for i in range(calls):
                    tasks.start_soon(call, i)
                    # One at a time, so that they reach the worker in this order.
                    await sent(pool, before + i + 1)

    assert sorted(seen) == list(range(calls))
    assert max(in_progress for _, in_progress in seen.values()) == max_concurrency
    if max_concurrency == 1:
        starts = [seen[i][0] for i in range(calls)]
        assert starts == sorted(starts)
    # The first call that waited did so behind a call of 0.5 s.
    assert max(e.measurements["queue_time"] for e in dequeued) > 0.25e9


async def test_an_async_call_waiting_behind_a_sync_one_is_dropped_when_withdrawn(
    tmp_path: Path,
) -> None:
    """A call of an async tool waiting in a worker busy with a sync call, whose deadline
    passes, is dropped there: it never runs, and the worker is not killed for it."""
    log, gate = tmp_path / "calls.log", tmp_path / "gate"
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        gate.touch()
        await learn_quick(
            pool,
            ("hold", {"gate": str(gate)}),
            ("async_record", {"path": str(tmp_path / "warm-up.log"), "tag": "warm-up"}),
        )
        gate.unlink()
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(pool.execute, "hold", {"gate": str(gate)})
            await wait_until(lambda: pool.status().in_flight == 1, "the sync call to start")
            with pytest.raises(QueueTimeoutError, match="not run"):
                await pool.execute("async_record", {"path": str(log), "tag": "late"}, timeout=0.2)
            assert pool.status().queue_timeouts == 1
        assert await pool.execute("pid") == pid

    assert not log.exists()


def outcome(exc: BaseException) -> str:
    """What a caller got, in a form a test can compare: the error's type, and for a
    ToolError the remote type."""
    if isinstance(exc, ToolError):
        return f"ToolError({exc.remote_type})"
    return type(exc).__name__


async def fail_with_calls_behind(pool: Pool, tool: str, kind: str, gate: Path) -> list[object]:
    """Run ``tool`` (Unruly's value or async_value) of ``kind`` on the pool's only worker
    with three calls waiting in that worker behind it; return what the call raised, then
    the pid each waiting call ran on. The pool is one of :func:`waiting_in_the_worker`."""
    first: list[object] = []
    behind: list[object] = []

    async def call(seen: list[object], command: str, args: dict[str, str] | None) -> None:
        try:
            seen.append(await pool.execute(command, args))
        except Exception as exc:
            seen.append(outcome(exc))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(call, first, tool, {"kind": kind, "gate": str(gate)})
            await wait_until(lambda: pool.status().in_flight == 1, "the call to start")
            for _ in range(3):
                tasks.start_soon(call, behind, "pid", None)
            await wait_until(lambda: accepted(pool) == 4, "three calls behind it")
            # The pool's own queue is private; the test looks at it to tell that the three
            # calls wait in the worker, behind the call that is about to fail.
            assert (pool.status().queue_depth, len(pool._scheduler.queue)) == (3, 0)
    return first + behind


def waiting_in_the_worker() -> dict[str, Any]:
    """Options of a pool whose busy worker is sent the calls behind its call to wait there.

    ``prefetch_below=0`` counts every command as quick: calls are prefetched whatever this
    machine's speed, as they are at the default threshold once their commands proved quick.
    """
    return options(prefetch_below=0)


@pytest.mark.parametrize("tool", ["value", "async_value"])
async def test_a_result_the_wire_cannot_carry_fails_its_call_and_the_worker_serves_on(
    tool: str, tmp_path: Path
) -> None:
    """A result that cannot be encoded (nested past the recursion limit, of a type msgpack
    lacks, one whose repr raises too) fails its call with SerializationError; the worker
    serves on, the calls that waited in it behind that call first."""
    kinds = ["deep", "object", "unrepresentable"]
    async with open_pool(adapter("Unruly"), **waiting_in_the_worker()) as pool:
        pid = await pool.execute("pid")
        seen = {
            kind: await fail_with_calls_behind(pool, tool, kind, tmp_path / kind) for kind in kinds
        }
        assert await pool.execute("pid") == pid

    assert seen == {kind: ["SerializationError", pid, pid, pid] for kind in kinds}


@pytest.mark.parametrize("tool", ["value", "async_value"])
async def test_any_exception_from_a_tool_fails_only_its_call(tool: str, tmp_path: Path) -> None:
    """An exception that cannot describe itself, SystemExit, KeyboardInterrupt and any other
    BaseException a tool raises fail its call with ToolError, carrying the remote type; the
    worker serves on (same process), the calls that waited in it behind that call first."""
    kinds = {
        "unprintable": "tests.adapters.Unprintable",
        "exit": "SystemExit",
        "interrupt": "KeyboardInterrupt",
        "stop": "tests.adapters.Stop",
    }
    async with open_pool(adapter("Unruly"), **waiting_in_the_worker()) as pool:
        pid = await pool.execute("pid")
        seen = {
            kind: await fail_with_calls_behind(pool, tool, kind, tmp_path / kind) for kind in kinds
        }
        with pytest.raises(ToolError) as info:
            await pool.execute(tool, {"kind": "unprintable"})
        assert await pool.execute("pid") == pid

    assert seen == {kind: [f"ToolError({name})", pid, pid, pid] for kind, name in kinds.items()}
    unprintable = info.value
    assert unprintable.remote_message == "<unprintable tests.adapters.Unprintable object>"
    assert "raise Unprintable" in unprintable.remote_traceback


@pytest.mark.parametrize("tool", ["chunks", "async_chunks"])
async def test_a_chunk_or_exception_that_cannot_travel_ends_its_stream(
    tool: str, tmp_path: Path
) -> None:
    """A generator tool whose chunk cannot be encoded, or that raises an exception that
    cannot describe itself or a BaseException, ends its stream with a typed error after the
    chunks before it: the generator is closed before the answer leaves, and the worker
    serves on."""
    expected = {
        "deep": "SerializationError",
        "object": "SerializationError",
        "unrepresentable": "SerializationError",
        "unprintable": "ToolError(tests.adapters.Unprintable)",
        "exit": "ToolError(SystemExit)",
        "interrupt": "ToolError(KeyboardInterrupt)",
    }
    seen: dict[str, tuple[list[object], str, list[str], int]] = {}
    async with open_pool(adapter("Unruly"), **options()) as pool:
        pid = await pool.execute("pid")
        for kind in expected:
            log = tmp_path / f"{kind}.log"
            received: list[object] = []
            raised = "nothing"
            with anyio.fail_after(10):
                try:
                    async with pool.stream(tool, {"kind": kind, "path": str(log)}) as chunks:
                        async for chunk in chunks:
                            received.append(chunk)
                except Exception as exc:
                    raised = outcome(exc)
                closes = log.read_text().split() if log.exists() else []
                seen[kind] = (received, raised, closes, await pool.execute("pid"))

    assert seen == {kind: (["first"], error, ["closed"], pid) for kind, error in expected.items()}


@pytest.mark.parametrize("tool", ["chunks", "async_chunks"])
async def test_a_chunk_over_the_frame_limit_ends_its_stream(tool: str, tmp_path: Path) -> None:
    """A chunk over max_frame_size ends its stream with FrameTooLargeError after the chunks
    before it; the generator is closed and the worker serves on."""
    log = tmp_path / "closes.log"
    received: list[object] = []
    # The smallest limit allowed, under the tool's large chunk.
    async with open_pool(adapter("Unruly"), **options(max_frame_size=65_536)) as pool:
        pid = await pool.execute("pid")

        async def consume() -> None:
            async with pool.stream(tool, {"kind": "large", "path": str(log)}) as chunks:
                async for chunk in chunks:
                    received.append(chunk)

        with anyio.fail_after(10), pytest.raises(FrameTooLargeError) as info:
            await consume()
        assert await pool.execute("pid") == pid

    assert received == ["first"]
    assert log.read_text().split() == ["closed"]
    assert "chunk 2" in str(info.value)


async def test_an_exit_on_the_async_tools_loop_does_not_stop_it() -> None:
    """SystemExit raised in a task or callback an async tool started, and loop.stop(), end
    the loop's run_forever; the loop runs on, so this call and the next ones are answered
    by the same worker."""
    async with open_pool(adapter("Unruly"), **options()) as pool:
        pid = await pool.execute("pid")
        with anyio.fail_after(10):
            assert await pool.execute("async_exit_elsewhere") == "served"
            assert await pool.execute("add", {"a": 1, "b": 2}) == 3
        assert await pool.execute("pid") == pid


async def test_tools_see_the_session_id_of_their_call() -> None:
    """get_session_id() in a tool is the session_id its call was made with, None without
    one: in sync and async tools and in generators, calls running at once each seeing
    their own. Outside a worker it is None."""
    async with open_pool(adapter(), **options(max_concurrency=2)) as pool:
        assert (await pool.execute("session_state", session_id="a"))[0] == "a"
        assert (await pool.execute("session_state"))[0] is None
        results: dict[str, object] = {}

        async def call(command: str, session_id: str) -> None:
            results[session_id] = await pool.execute(command, session_id=session_id)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, "async_session_id", "b")
            tasks.start_soon(call, "async_session_id", "c")
        async with pool.stream("session_ids", {"n": 3}, session_id="d") as chunks:
            streamed = [chunk async for chunk in chunks]

    assert results == {"b": "b", "c": "c"}
    assert streamed == ["d", "d", "d"]
    assert get_session_id() is None

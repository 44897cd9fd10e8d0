"""pool.map and pool.map_unordered on real workers, on asyncio and trio: order, the window
that keeps the inputs lazy, frames of many inputs, errors, timeouts, and every way of
leaving a map early."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from pypit import (
    ArgumentsError,
    FrameTooLargeError,
    PoolSaturatedError,
    QueueTimeoutError,
    SerializationError,
    ToolError,
    ToolKindError,
    UnknownCommandError,
    WorkerTimeoutError,
    telemetry,
)
from pypit.pool import Map, Pool, SyncPool, open_pool, start_pool
from pypit.pool._frames import Framer
from tests.pool.conftest import adapter, assert_catalog_shape, opened_at_exit, options, wait_until

pytestmark = pytest.mark.anyio

CALL = ("pypit", "rpc", "call")


async def drain(results: Map, into: list[Any] | None = None) -> list[Any]:
    """Every result of a map, also appended to ``into`` as they come."""
    got = [] if into is None else into
    async for result in results:
        got.append(result)
    return got


class Counting:
    """An iterable that counts the inputs taken from it."""

    def __init__(self, inputs: list[Any]) -> None:
        self.inputs = inputs
        self.taken = 0

    def __iter__(self) -> Iterator[Any]:
        for value in self.inputs:
            self.taken += 1
            yield value


async def test_map_yields_in_input_order_and_map_unordered_as_results_arrive(
    tmp_path: Path,
) -> None:
    """The first input waits on a gate while the others finish: map_unordered yields the
    others first, map still yields the first input's result first."""
    gate = tmp_path / "gate"
    inputs = [{"kind": "first", "gate": str(gate)}, {"kind": "second"}, {"kind": "third"}]
    # Two workers, so that the other inputs run while the first one waits; and one input
    # per frame (the learned cost could put them in one frame, behind the held input).
    async with open_pool(adapter("Unruly"), **options(size=2)) as pool:
        unordered = pool.map_unordered("value", inputs, chunksize=1)
        async with opened_at_exit(gate), unordered as results:
            arrived = [await results.__anext__(), await results.__anext__()]
            gate.touch()
            arrived += [result async for result in results]
        assert arrived == ["second", "third", "first"]
    gate.unlink()
    # A fresh pool: one that learned the command is quick may prefetch an input into the
    # worker of the held one, where it would wait.
    async with open_pool(adapter("Unruly"), **options(size=2)) as pool:
        async with opened_at_exit(gate), pool.map("value", inputs, chunksize=1) as results:
            await wait_until(lambda: results.done == 2, "the other inputs to finish")
            gate.touch()
            assert [result async for result in results] == ["first", "second", "third"]


async def test_the_inputs_are_taken_only_as_far_as_the_window(tmp_path: Path) -> None:
    """A map sends at most two frames per worker slot ahead of their answers (one input
    each, for a command not seen yet), and takes no input beyond them."""
    gate = tmp_path / "gate"
    inputs = Counting([{"gate": str(gate), "tag": str(i)} for i in range(50)])
    async with open_pool(adapter(), **options()) as pool:
        async with opened_at_exit(gate), pool.map("hold", inputs) as results:
            await wait_until(lambda: pool.status().in_flight == 1, "the first input to run")
            await anyio.sleep(0.1)  # time for a map that would read ahead to do so
            assert inputs.taken == 2
            gate.touch()
            first = await results.__anext__()
            # Two ahead of the answers, however many answers came meanwhile.
            assert inputs.taken - results.done <= 2
            rest = [result async for result in results]
    assert [first, *rest] == [str(i) for i in range(50)]


async def test_quick_commands_go_in_frames_and_slow_ones_alone() -> None:
    """Once the command is known to be quick, one frame carries many inputs; the call
    events come per frame, with the catalog's keys, and their items add up to the inputs.
    A slow command is sent one input at a time."""
    events = [(*CALL, "start"), (*CALL, "stop")]
    async with open_pool(adapter(), **options(size=2)) as pool:
        await pool.execute("identity", 0)  # the pool learns that identity is quick
        with telemetry.capture(*events) as seen:
            async with pool.map("identity", range(3000)) as results:
                assert [r async for r in results] == list(range(3000))
        stops = seen.named(*CALL, "stop")
        assert len(stops) < 300
        assert sum(e.measurements["items"] for e in stops) == 3000
        assert {e.measurements["failed_items"] for e in stops} == {0}
        assert len(seen.named(*CALL, "start")) == len(stops)
        for event in seen:
            assert_catalog_shape(event)

        await pool.execute("sleep", 0.01)  # and that sleep is slow
        with telemetry.capture((*CALL, "stop")) as seen:
            async with pool.map("sleep", [0.01] * 6) as results:
                assert [r async for r in results] == [0.01] * 6
        assert [e.measurements["items"] for e in seen] == [1] * 6


async def test_large_results_keep_their_frames_under_the_limit() -> None:
    """A quick command whose answers are large gets frames small enough that their
    results fit one frame: every input of every map succeeds (frames sized by time alone
    once summed past max_frame_size and failed every input)."""
    # A frame of 1 MiB, so that a few results of 100 kB fill it.
    async with open_pool(adapter(), **options(max_frame_size=65_536 * 16)) as pool:
        for _ in range(3):
            with telemetry.capture((*CALL, "stop")) as seen:
                async with pool.map("blob", [{"n": 100_000}] * 60) as results:
                    sizes = [len(r) async for r in results]
            assert sizes == [100_000] * 60
            assert max(e.measurements["items"] for e in seen) <= 3


async def test_results_too_large_together_travel_in_parts() -> None:
    """Results that fit a frame one by one but not together still arrive, in one answer
    of their frame; a result too large alone is its input's FrameTooLargeError, named by
    its index, and the others keep their values."""
    limit = 65_536 * 16  # max_frame_size of 1 MiB, which two results of 600 kB overflow
    inputs = [10, 600_000, 600_000, 10, 2 * limit, 10]
    async with open_pool(adapter(), **options(max_frame_size=limit)) as pool:
        with telemetry.capture((*CALL, "stop")) as seen:
            # chunksize: every input in one frame.
            async with pool.map(
                "blob", inputs, chunksize=len(inputs), return_exceptions=True
            ) as results:
                got = [r async for r in results]
    assert [len(r) for r in got[:4]] == [10, 600_000, 600_000, 10]
    assert isinstance(got[4], FrameTooLargeError)
    assert "inputs[4]" in str(got[4])
    assert got[5] == b"x" * 10
    assert [e.measurements["items"] for e in seen] == [6]
    assert [e.measurements["failed_items"] for e in seen] == [1]


async def test_chunksize_sets_the_inputs_of_each_frame() -> None:
    """chunksize=50 sends 200 inputs in four frames of 50."""
    with telemetry.capture((*CALL, "stop")) as seen:
        async with open_pool(adapter(), **options()) as pool:
            async with pool.map("identity", range(200), chunksize=50) as results:
                assert [r async for r in results] == list(range(200))

    assert [e.measurements["items"] for e in seen] == [50] * 4


async def test_the_chunks_chosen_give_every_worker_several_frames() -> None:
    """Left to choose, a map of a quick command whose inputs have a length cuts them in at
    least four frames per worker, as multiprocessing.Pool.map does."""
    with telemetry.capture((*CALL, "stop")) as seen:
        # Two workers, so that the cut is by the number of workers.
        async with open_pool(adapter(), **options(size=2)) as pool:
            for _ in range(3):  # the pool learns that identity is quick
                async with pool.map("identity", range(2000)) as results:
                    await drain(results)
            seen.clear()
            async with pool.map("identity", list(range(4000))) as results:
                assert await drain(results) == list(range(4000))

    sizes = [e.measurements["items"] for e in seen if e.metadata["command"] == "identity"]
    assert sum(sizes) == 4000
    assert len(sizes) >= 8
    assert max(sizes) <= 500


def test_the_largest_chunk_chosen() -> None:
    """A command that costs next to nothing per input goes in frames of 16,384 inputs, or
    four frames per worker slot, for inputs of known length; of 4,096 for an iterator,
    whose inputs the map holds in its window; a given chunksize is kept."""

    class Scheduler:
        def cost(self, command: str) -> float:
            return 1.0  # ns per input

        def result_bytes(self, command: str) -> float:
            return 1.0

    class Calls:
        config = types.SimpleNamespace(prefetch_below=0.001, max_frame_size=2**26)
        scheduler = Scheduler()

    def chosen(inputs: Any, slots: int, chunksize: int | None = None) -> int:
        framer = Framer(
            Calls(),  # type: ignore[arg-type]
            "identity",
            chunksize=chunksize,
            timeout=None,
            session_id=None,
            correlation_id=None,
            stop_on_error=True,
            on_answer=lambda frame: None,
            signal=lambda: None,
            inputs=inputs,
            slots=slots,
        )
        return framer.chunk()

    assert chosen(iter(range(10**6)), slots=2) == 4096
    assert chosen(range(10**6), slots=2) == 16_384
    assert chosen(range(100_000), slots=2) == 12_500
    assert chosen(list(range(1001)), slots=4) == 63
    assert chosen([1], slots=8) == 1
    assert chosen(range(100_000), slots=2, chunksize=50_000) == 50_000


async def test_the_first_error_stops_the_map_and_cancels_the_rest(tmp_path: Path) -> None:
    """An input that raises ends the map with its ToolError; the input still running on the
    other worker is cancelled before the block ends, so both workers serve at once."""
    gate = tmp_path / "gate"
    inputs = [{"kind": "stop"}, {"kind": "held", "gate": str(gate)}, {"kind": "never"}]
    events = [(*CALL, "stop"), (*CALL, "exception")]
    with telemetry.capture(*events) as seen:
        # Two workers: the held input runs while the other one fails.
        async with open_pool(adapter("Unruly"), **options(size=2)) as pool:
            pids = set(pool.workers().values())
            async with pool.map("async_value", inputs) as results:
                with pytest.raises(ToolError, match="stopped by the tool") as info:
                    await drain(results)
            assert info.value.remote_type == "tests.adapters.Stop"
            assert pool.status().in_flight == 0
            assert pool.status().queue_depth == 0
            assert not gate.exists()
            got = [await pool.execute("identity", i, timeout=5) for i in range(4)]
            assert set(pool.workers().values()) == pids

    assert got == [0, 1, 2, 3]
    stopped = [e for e in seen.named(*CALL, "stop") if e.metadata["command"] == "async_value"]
    assert [e.measurements["failed_items"] for e in stopped] == [1]
    # The held input, and the last one if it went to the worker freed by the error.
    cancelled = seen.named(*CALL, "exception")
    assert {e.metadata["kind"] for e in cancelled} == {"exit"}
    for event in seen:
        assert_catalog_shape(event)


async def test_return_exceptions_yields_each_inputs_error_in_its_place() -> None:
    """With return_exceptions=True an input's error is its result and the others keep
    theirs, in a frame of several inputs too."""
    inputs = [{"kind": "a"}, {"kind": "stop"}, {"kind": "b"}, {"kind": "unprintable"}]
    async with open_pool(adapter("Unruly"), **options()) as pool:
        # chunksize=4: the four inputs in one frame.
        async with pool.map("value", inputs, chunksize=4, return_exceptions=True) as results:
            got = [r async for r in results]

    assert [type(r) for r in got] == [str, ToolError, str, ToolError]
    assert (got[0], got[2]) == ("a", "b")
    assert got[1].remote_type == "tests.adapters.Stop"


async def test_an_input_or_result_that_cannot_travel_fails_alone() -> None:
    """An input the wire refuses is that input's SerializationError, named by its index;
    the inputs around it, in the same chunk, run."""
    async with open_pool(adapter("Unruly"), **options()) as pool:
        # chunksize=3: the refused input is in the middle of a chunk.
        async with pool.map(
            "identity", [1, {1, 2}, 3], chunksize=3, return_exceptions=True
        ) as results:
            got = [r async for r in results]
        assert (got[0], got[2]) == (1, 3)
        assert isinstance(got[1], SerializationError)
        assert "inputs[1]" in str(got[1])
        async with pool.map("identity", [1, {1, 2}, 3], chunksize=3) as results:
            assert await results.__anext__() == 1
            with pytest.raises(SerializationError, match=r"inputs\[1\]"):
                await results.__anext__()
        kinds = [{"kind": "object"}, {"kind": "fine"}]
        # chunksize=2: the result that cannot travel shares its frame.
        async with pool.map("value", kinds, chunksize=2, return_exceptions=True) as results:
            got = [r async for r in results]
        assert isinstance(got[0], SerializationError)
        assert got[1] == "fine"
        # The error names the input in the whole map, not in its frame.
        kinds = [{"kind": "fine"}] * 3 + [{"kind": "object"}]
        async with pool.map("value", kinds, chunksize=2, return_exceptions=True) as results:
            got = [r async for r in results]
        assert got[:3] == ["fine"] * 3
        assert "result of inputs[3]" in str(got[3])


async def test_inputs_that_cannot_travel_cost_few_frames_and_are_named() -> None:
    """One input the wire refuses in a chunk of a thousand costs a few more frames, not a
    frame per input; each refused input's error names it, whatever the reason: an int out
    of msgpack's range, a value that contains itself, one over the frame size limit."""
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    inputs: list[Any] = list(range(1000))
    inputs[500] = 2**64
    inputs[600] = cyclic
    inputs[700] = "x" * 70_000
    # max_frame_size at its smallest (65,536 bytes), so that one input can be over it.
    async with open_pool(adapter(), **options(max_frame_size=65_536)) as pool:
        before = pool.status().completed
        async with pool.map("identity", inputs, chunksize=1000, return_exceptions=True) as rs:
            got = [r async for r in rs]
        frames = pool.status().completed - before
    assert [g for i, g in enumerate(got) if i not in (500, 600, 700)] == [
        i for i in range(1000) if i not in (500, 600, 700)
    ]
    assert isinstance(got[500], SerializationError)
    assert "inputs[500]" in str(got[500])
    assert "out of range" in str(got[500])
    assert isinstance(got[600], SerializationError)
    assert "inputs[600]" in str(got[600])
    assert "args[" not in str(got[600])
    assert isinstance(got[700], FrameTooLargeError)
    assert "inputs[700]" in str(got[700])
    assert frames <= 40, frames  # halving: a few per refused input (it was one per input)


async def test_a_range_is_mapped_as_its_list_is() -> None:
    """A range's inputs are known to be ints, so its frames are not looked at for their
    types, and travel as their first int, count and step: the results are those of the
    same inputs in a list (a negative step, ints past a signed 64-bit int, which travel
    as a list, included), a range past msgpack's ints fails exactly the inputs past it,
    and the tool's signature is still checked."""
    past = range(2**64 - 3, 2**64 + 2)
    async with open_pool(adapter(), **options()) as pool:
        for spans in (range(-5, 20_000, 3), range(100, -100, -7), range(2**63, 2**63 + 9)):
            async with pool.map("identity", spans, chunksize=4) as results:
                assert await drain(results) == list(spans)
        got: dict[type, list[Any]] = {}
        for inputs in (past, list(past)):
            async with pool.map("identity", inputs, return_exceptions=True) as results:
                got[type(inputs)] = [
                    type(r).__name__ if isinstance(r, Exception) else r
                    for r in await drain(results)
                ]
        assert got[range] == got[list]
        assert got[range] == [2**64 - 3, 2**64 - 2, 2**64 - 1] + ["SerializationError"] * 2
        with pytest.raises(ArgumentsError, match=r"inputs\[0\]: echo\(\) too many positional"):
            async with pool.map("echo", range(3)) as results:
                await drain(results)


async def test_a_range_frame_holds_no_more_ints_than_a_list_frame_could() -> None:
    """A range travels as three ints, but a frame of it holds no more inputs than the same
    ints as a list could carry in one frame, whatever the chunksize: the worker never
    takes more in one call than max_frame_size allows."""
    with telemetry.capture((*CALL, "stop")) as seen:
        # max_frame_size at its smallest (65,536 bytes): at most 7,168 ints a frame.
        async with open_pool(adapter(), **options(max_frame_size=65_536)) as pool:
            async with pool.map("identity", range(20_000), chunksize=20_000) as results:
                assert await drain(results) == list(range(20_000))
    items = [e.measurements["items"] for e in seen]
    assert sum(items) == 20_000
    assert max(items) == (65_536 - 1024) // 9


async def test_a_window_of_one_frame_ends_when_the_inputs_do() -> None:
    """buffersize=1: the map ends after its last result, also when the last frame made
    failed before it was sent (an input that cannot travel)."""
    async with open_pool(adapter(), **options()) as pool:
        for inputs in (range(3), [1, 2, 3]):
            with anyio.fail_after(10):
                async with pool.map("identity", inputs, buffersize=1) as results:
                    assert await drain(results) == list(inputs)
        with anyio.fail_after(10):
            async with pool.map(
                "identity", [1, 2**64, 3], buffersize=1, chunksize=1, return_exceptions=True
            ) as results:
                got = await drain(results)
        assert (got[0], got[2]) == (1, 3)
        assert isinstance(got[1], SerializationError)


async def test_timeout_is_per_input() -> None:
    """A frame of two inputs has twice the timeout; an input past its time fails with
    WorkerTimeoutError and the map raises it."""
    async with open_pool(adapter(), **options()) as pool:
        # chunksize=2 and timeout=1.0: the frame takes 1.2 s, within its 2 s.
        async with pool.map("async_sleep", [0.6, 0.6], chunksize=2, timeout=1.0) as results:
            assert [r async for r in results] == [0.6, 0.6]
        # A timeout of 0.2 s, which the second input cannot meet.
        async with pool.map(
            "async_sleep", [0.0, 30.0], timeout=0.2, return_exceptions=True
        ) as results:
            got = [r async for r in results]
        assert got[0] == 0.0
        assert isinstance(got[1], WorkerTimeoutError)
        assert await pool.execute("identity", 1, timeout=5) == 1


async def test_a_map_never_times_out_its_frames_behind_its_own() -> None:
    """With a timeout, a map's frames are not prefetched into a busy worker, where the
    frame before them would spend their time: each input within its timeout succeeds,
    whatever ran before it on the same worker."""
    async with open_pool(adapter(), **options()) as pool:
        async with pool.map("sleep", [0.0001] * 300) as results:
            assert len([r async for r in results]) == 300  # sleep is learned as quick
        inputs = [0.0001] * 5 + [0.25, 0.2] + [0.0001] * 5
        async with pool.map(
            "sleep", inputs, chunksize=1, timeout=0.3, return_exceptions=True
        ) as results:
            assert [r async for r in results] == inputs


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_leaving_early_cancels_what_is_in_flight(how: str, tmp_path: Path) -> None:
    """A break, or the cancellation of an enclosing scope, stops the map: no input runs
    after the block, and the worker serves the next call."""
    record = tmp_path / "record"
    inputs = [{"path": str(record), "tag": str(i), "seconds": 0.02} for i in range(200)]
    with telemetry.capture((*CALL, "exception")) as seen:
        async with open_pool(adapter(), **options()) as pool:
            pid = await pool.execute("pid")
            with anyio.CancelScope() as scope:
                # chunksize=20: a frame in flight stops between its inputs.
                async with pool.map("record", inputs, chunksize=20) as results:
                    async for _ in results:
                        if how == "break":
                            break
                        scope.cancel()
                        await anyio.sleep(1)
            assert scope.cancelled_caught == (how == "cancel")
            await check_stopped(pool, record, pid)

    assert seen.events
    for event in seen:
        assert_catalog_shape(event)
        assert event.metadata["kind"] == "exit"
        cancelled = anyio.get_cancelled_exc_class()
        expected = GeneratorExit if how == "break" else cancelled
        assert isinstance(event.metadata["reason"], expected)


async def test_leaving_stops_plain_inputs_after_the_one_that_runs() -> None:
    """Inputs that are each one positional argument run in the worker's quick path: a
    thousand quick ones, then slow ones in the same frame; leaving the block stops the
    frame after the input that runs, and the worker is not killed for it."""
    inputs = [0.0] * 1000 + [0.05] * 1000
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        with telemetry.capture(("pypit", "pool", "worker", "terminated")) as ended:
            # chunksize: every input in one frame.
            with anyio.move_on_after(0.5):
                async with pool.map("sleep", inputs, chunksize=len(inputs)) as results:
                    async for _ in results:
                        pass
            assert pool.status().in_flight == 0
            assert await pool.execute("pid", timeout=5) == pid
        assert not ended.events


def test_ctrl_c_in_a_blocking_map_is_the_reason_its_frames_report() -> None:
    """Leaving a blocking map's block by KeyboardInterrupt (Ctrl-C) cancels its frames
    with that reason, as the async map does."""

    def interrupted(pool: SyncPool) -> None:
        with pool.map("sleep", [0.2] * 20) as results:
            for _ in results:
                raise KeyboardInterrupt

    with telemetry.capture((*CALL, "exception")) as seen:
        with start_pool(adapter(), **options()) as pool:
            with pytest.raises(KeyboardInterrupt):
                interrupted(pool)
    assert seen.events
    assert {type(event.metadata["reason"]) for event in seen} == {KeyboardInterrupt}


async def check_stopped(pool: Pool, record: Path, pid: int) -> None:
    """Nothing of the map runs once its block ended, and its worker serves at once."""
    assert pool.status().in_flight == 0
    ran = len(record.read_text().split())
    assert await pool.execute("pid", timeout=5) == pid
    await anyio.sleep(0.1)
    assert len(record.read_text().split()) == ran < 60


async def test_frames_that_wait_past_the_queue_timeout_never_run(tmp_path: Path) -> None:
    """A frame still in the pool's queue at its queue deadline fails its inputs with
    QueueTimeoutError and never runs, as a call does."""
    gate, record = tmp_path / "gate", tmp_path / "record"
    inputs = [{"path": str(record), "tag": str(i)} for i in range(3)]
    # queue_timeout is off by default.
    async with open_pool(adapter(), **options(queue_timeout=0.3)) as pool:
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(pool.execute, "hold", {"gate": str(gate)})
            await wait_until(lambda: pool.status().in_flight == 1, "the worker to be busy")
            async with pool.map("record", inputs, return_exceptions=True) as results:
                got = [r async for r in results]
        assert [type(r) for r in got] == [QueueTimeoutError] * 3
        assert pool.status().queue_timeouts == 3
        assert await pool.execute("identity", 1, timeout=5) == 1

    assert not record.exists()


@pytest.mark.parametrize("chunksize", [None, 1, 3, 1000])
async def test_the_inputs_iterator_failing_is_raised_after_the_results_before_it(
    chunksize: int | None,
) -> None:
    """An error of the inputs' iterable ends the map once the results of every input
    before it came, whatever the frames: the inputs of a frame taken before the error run
    (37 inputs: a frame of 1000 holds them all)."""

    def inputs() -> Iterator[int]:
        yield from range(37)
        raise LookupError("no more rows")

    async with open_pool(adapter(), **options()) as pool:
        got: list[Any] = []
        async with pool.map("identity", inputs(), chunksize=chunksize) as results:
            with pytest.raises(LookupError, match="no more rows"):
                await drain(results, got)
    assert got == list(range(37))


async def test_misuse_is_refused_before_anything_is_sent() -> None:
    """A stream tool (ToolKindError), an unknown command, bad options, and iterating
    without async with are refused, and nothing reaches a worker."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(ToolKindError, match="is a stream"):
            pool.map("count", [{"n": 1}])
        with pytest.raises(UnknownCommandError):
            pool.map("nope", [1])
        with pytest.raises(ValueError, match="chunksize must be an int >= 1"):
            pool.map("identity", [1], chunksize=0)
        with pytest.raises(TypeError, match="buffersize"):
            pool.map("identity", [1], buffersize=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not a str"):
            pool.map("identity", "abc")
        with pytest.raises(TypeError, match="progress"):
            pool.map("identity", [1], progress="bar")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"async with pool\.map"):
            async for _ in pool.map("identity", [1]):
                pass
        results = pool.map("identity", [1])
        async with results:
            assert [r async for r in results] == [1]
        with pytest.raises(TypeError, match="this map is closed"):
            async for _ in results:
                pass
        with pytest.raises(TypeError, match="entered once"):
            async with results:
                pass
        assert pool.status().requests == 1


async def test_progress_is_reported_to_a_callback_and_to_tqdm_or_rich(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A callback gets (done, total) from 0 to the end; total is None for an iterable
    without len(). "tqdm" and "rich" drive those packages' bars (stand-ins here: neither
    is a dependency), and a missing one is an ImportError when the map is made."""
    updates: list[tuple[int, int | None]] = []
    bars: list[Any] = []

    class Bar:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs, self.n, self.closed = kwargs, 0, False
            bars.append(self)

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            self.closed = True

    async with open_pool(adapter(), **options()) as pool:
        async with pool.map("identity", range(10), progress=lambda *a: updates.append(a)) as r:
            assert [x async for x in r] == list(range(10))
        assert (updates[0], updates[-1]) == ((0, 10), (10, 10))
        assert [done for done, _ in updates] == sorted({done for done, _ in updates})
        updates.clear()
        async with pool.map("identity", iter([1, 2]), progress=lambda *a: updates.append(a)) as r:
            assert [x async for x in r] == [1, 2]
        assert updates[-1] == (2, None)

        monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=Bar))
        async with pool.map("identity", range(5), progress="tqdm") as r:
            assert [x async for x in r] == list(range(5))
        (bar,) = bars
        assert (bar.kwargs["total"], bar.n, bar.closed) == (5, 5, True)

        progresses: list[Any] = []

        class Progress:
            def __init__(self) -> None:
                self.tasks: dict[int, dict[str, Any]] = {}
                self.running = False
                progresses.append(self)

            def start(self) -> None:
                self.running = True

            def stop(self) -> None:
                self.running = False

            def add_task(self, description: str, total: int | None) -> int:
                self.tasks[1] = {"description": description, "total": total}
                return 1

            def update(self, task: int, completed: int) -> None:
                self.tasks[task]["completed"] = completed

        rich = types.SimpleNamespace(progress=types.SimpleNamespace(Progress=Progress))
        monkeypatch.setitem(sys.modules, "rich", rich)
        monkeypatch.setitem(sys.modules, "rich.progress", rich.progress)
        async with pool.map("identity", range(3), progress="rich") as r:
            assert [x async for x in r] == [0, 1, 2]
        (shown,) = progresses
        assert shown.tasks == {1: {"description": "identity", "total": 3, "completed": 3}}
        assert not shown.running

        monkeypatch.setitem(sys.modules, "tqdm", None)
        with pytest.raises(ImportError, match=r"progress='tqdm' needs the tqdm package"):
            pool.map("identity", [1], progress="tqdm")


async def test_the_session_and_correlation_id_reach_every_input() -> None:
    """Every frame of a map carries its session id to the tool and one correlation id."""
    with telemetry.capture((*CALL, "start")) as seen:
        async with open_pool(adapter(), **options()) as pool:
            async with pool.map("session_state", [None] * 4, session_id="s1") as results:
                got = [r async for r in results]

    assert [session for session, _, _ in got] == ["s1"] * 4
    assert len({e.metadata["correlation_id"] for e in seen}) == 1


async def test_a_full_queue_holds_a_maps_frames_back_until_its_own_come_back(
    tmp_path: Path,
) -> None:
    """A map whose frame finds the queue full keeps it until one of its own frames is
    answered, and completes; a map that has nothing in flight gets PoolSaturatedError
    before anything is sent, as execute does."""
    gate = tmp_path / "gate"
    # max_queue_size=0: no call may wait, so the map's second frame finds the queue full.
    async with open_pool(adapter(), **options(max_queue_size=0)) as pool:
        async with pool.map("identity", range(10)) as results:
            assert [r async for r in results] == list(range(10))
        assert pool.status().rejected > 0
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(pool.execute, "hold", {"gate": str(gate)})
            await wait_until(lambda: pool.status().in_flight == 1, "the worker to be busy")
            requests = pool.status().requests
            with pytest.raises(PoolSaturatedError):
                async with pool.map("identity", range(10)):
                    pass
            assert pool.status().requests == requests + 1


async def test_several_tasks_may_take_the_results_of_one_map() -> None:
    """Each result goes to one of the tasks that iterate a map, and every result to one."""
    taken: list[list[int]] = [[], []]
    async with open_pool(adapter(), **options()) as pool:
        async with pool.map_unordered("identity", range(300)) as results:

            async def take(into: list[int]) -> None:
                async for result in results:
                    into.append(result)
                    await anyio.sleep(0)

            async with anyio.create_task_group() as tasks:
                for into in taken:
                    tasks.start_soon(take, into)

    assert sorted(taken[0] + taken[1]) == list(range(300))
    assert taken[0]
    assert taken[1]


async def test_inputs_over_the_frame_size_limit_go_in_smaller_frames() -> None:
    """A chunk whose inputs together are over max_frame_size is split until each frame
    fits; an input too large alone fails with FrameTooLargeError."""
    blob = b"x" * 40_000
    with telemetry.capture((*CALL, "stop")) as seen:
        # The smallest max_frame_size (64 KiB): two of the inputs do not fit in one frame;
        # chunksize=4 asks for four in one.
        async with open_pool(adapter(), **options(max_frame_size=65_536)) as pool:
            async with pool.map(
                "identity", [blob] * 4 + [b"x" * 70_000], chunksize=4, return_exceptions=True
            ) as results:
                got = [r async for r in results]

    assert got[:4] == [blob] * 4
    assert isinstance(got[4], FrameTooLargeError)
    assert [e.measurements["items"] for e in seen] == [1, 1, 1, 1]

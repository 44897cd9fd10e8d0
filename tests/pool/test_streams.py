"""Streams on real worker processes, on asyncio and trio: the block that ends them, the
window that bounds them, their timeouts and their errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pypit import (
    QueueTimeoutError,
    SerializationError,
    StreamBusyError,
    WorkerCrashedError,
    WorkerTimeoutError,
    _wire,
    telemetry,
)
from pypit.pool import PoolConfig, open_pool
from tests.pool.conftest import (
    adapter,
    assert_catalog_shape,
    opened_at_exit,
    options,
    wait_until,
)

if TYPE_CHECKING:
    from pypit.pool import Stream

pytestmark = pytest.mark.anyio

STREAM = ("pypit", "rpc", "stream")
TOOLS = pytest.mark.parametrize("tool", ["blobs", "async_blobs"])


async def drain(chunks: Stream) -> list[Any]:
    return [chunk async for chunk in chunks]


def produced(notes: Path) -> int:
    """How many chunks the generator has produced (see the ``blobs`` tools)."""
    return sum(line.isdigit() for line in notes.read_text().split()) if notes.exists() else 0


def closed(notes: Path) -> bool:
    """Whether the generator has ended: its ``finally`` ran."""
    return notes.exists() and "closed" in notes.read_text().split()


@pytest.mark.parametrize("tool", ["count", "async_count"])
async def test_a_stream_yields_every_chunk_inside_its_block(tool: str) -> None:
    """A generator tool's chunks come in order; the stream closes complete."""
    with telemetry.capture((*STREAM, "closed")) as seen:
        async with open_pool(adapter(), **options()) as pool:
            async with pool.stream(tool, {"n": 5}) as chunks:
                assert [chunk async for chunk in chunks] == [1, 2, 3, 4, 5]
            assert await pool.execute("identity", 6) == 6
            assert pool.status().completed == 2

    assert [e.metadata["reason"] for e in seen] == ["complete"]


async def test_a_stream_that_started_is_reported_though_never_read(tmp_path: Path) -> None:
    """opened comes when the stream starts on a worker, whether or not the consumer waits
    then (here it queued behind another call); closed comes once, cancelled, with no
    message."""
    gate = tmp_path / "gate"
    events = [(*STREAM, e) for e in ("opened", "message", "closed")]
    with telemetry.capture(*events) as seen:
        async with open_pool(adapter(), **options()) as pool:
            async with anyio.create_task_group() as tasks, opened_at_exit(gate):
                tasks.start_soon(pool.execute, "hold", {"gate": str(gate)})
                await wait_until(lambda: pool.status().in_flight == 1, "the worker to be busy")
                async with pool.stream("count", {"n": 3}):
                    assert pool.status().queue_depth == 1
                    assert not seen.events
                    gate.touch()
                    await wait_until(lambda: bool(seen.events), "the stream to start")
                    assert pool.status().queue_depth == 0

    for event in seen:
        assert_catalog_shape(event)
    assert [e.event[-1] for e in seen] == ["opened", "closed"]
    assert seen.events[1].metadata["reason"] == "cancelled"
    assert seen.events[1].measurements["message_count"] == 0


async def test_iterating_without_async_with_is_a_type_error() -> None:
    """A bare ``async for`` could only be ended by the garbage collector: it raises
    TypeError, naming the form to use, before anything is sent."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(TypeError, match=r"async with pool\.stream"):
            async for _ in pool.stream("count", {"n": 3}):
                pass
        assert pool.status().requests == 0


async def test_a_stream_is_entered_once_iterated_by_one_task_and_not_after_its_block() -> None:
    """Entering a stream twice and iterating it after its block are TypeErrors saying what
    to do; a second task taking chunks while another waits gets StreamBusyError (a
    RuntimeError), and the first task's iteration is not disturbed."""
    async with open_pool(adapter(), **options()) as pool:
        async with pool.stream("async_count", {"n": 2, "delay": 30}) as chunks:
            with pytest.raises(TypeError, match="a stream is entered once"):
                async with chunks:
                    pass
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(chunks.__anext__)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(StreamBusyError, match="one task at a time") as info:
                    await chunks.__anext__()
                assert isinstance(info.value, RuntimeError)
                tasks.cancel_scope.cancel()
        with pytest.raises(TypeError, match=r"this stream's block has ended"):
            async for _ in chunks:
                pass
        with pytest.raises(TypeError, match="a stream is entered once"):
            async with chunks:
                pass
        assert await pool.execute("identity", 1) == 1


async def test_aclose_from_another_task_ends_the_iteration_between_two_chunks() -> None:
    """aclose() from another task while the consumer is busy with a chunk ends its loop
    at its next step, as it does when the consumer waits for a chunk: no error."""
    taken: list[int] = []
    async with open_pool(adapter(), **options()) as pool:
        async with pool.stream("async_count", {"n": 1000, "delay": 0.001}) as chunks:

            async def consume() -> None:
                async for chunk in chunks:
                    taken.append(chunk)
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(consume)
                await wait_until(lambda: len(taken) == 2, "two chunks to be taken")
                await chunks.aclose()
        assert await pool.execute("identity", 1) == 1
    assert 2 <= len(taken) < 1000


@TOOLS
@pytest.mark.parametrize("how", ["break", "exception", "cancellation"])
async def test_leaving_the_block_ends_the_generator_at_once(
    tool: str, how: str, tmp_path: Path
) -> None:
    """However the block is left, the worker's generator has ended (its ``finally`` ran)
    and the worker's slot is free when the block ends; no worker is killed for it."""
    notes = tmp_path / "notes"
    taken: list[int] = []
    with telemetry.capture((*STREAM, "closed")) as seen:
        async with open_pool(adapter(), **options()) as pool:
            pid = await pool.execute("pid")
            with anyio.CancelScope() as scope:
                try:
                    async with pool.stream(
                        tool, {"n": 100_000, "path": str(notes), "delay": 0.002}
                    ) as chunks:
                        async for chunk in chunks:
                            taken.append(chunk[0])
                            if len(taken) < 3:
                                continue
                            if how == "break":
                                break
                            if how == "exception":
                                raise LookupError("the consumer failed")
                            scope.cancel()
                except LookupError:
                    assert how == "exception"
            assert closed(notes)
            assert pool.status().in_flight == 0
            assert await pool.execute("pid", timeout=5) == pid

    assert taken == [1, 2, 3]
    assert scope.cancelled_caught == (how == "cancellation")
    assert [e.metadata["reason"] for e in seen] == ["cancelled"]
    assert [e.measurements["message_count"] for e in seen] == [3]


async def test_stream_timeouts(tmp_path: Path) -> None:
    """``timeout`` bounds the wait for a worker (QueueTimeoutError: the generator never
    ran) and then each wait for a chunk (WorkerTimeoutError: the generator is ended)."""
    gate = tmp_path / "gate"
    never = tmp_path / "never"
    slow = tmp_path / "slow"
    async with open_pool(adapter(), **options()) as pool:
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(pool.execute, "hold", {"gate": str(gate)})
            await wait_until(lambda: pool.status().in_flight == 1, "the worker to be busy")
            async with pool.stream("blobs", {"n": 3, "path": str(never)}, timeout=0.2) as queued:
                with pytest.raises(QueueTimeoutError):
                    await anext(queued)
        async with pool.stream(
            "blobs", {"n": 3, "path": str(slow), "delay": 0.5}, timeout=0.1
        ) as chunks:
            with pytest.raises(WorkerTimeoutError):
                await anext(chunks)
        await wait_until(lambda: closed(slow), "the slow generator to end")
        assert pool.status().queue_timeouts == 1
        assert pool.status().timeouts == 1

    assert not never.exists()


async def test_a_chunk_that_cannot_travel_ends_the_stream_with_its_error() -> None:
    """A chunk msgpack cannot carry ends the stream with SerializationError after the
    chunks before it; the worker keeps serving."""
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        async with pool.stream("unserializable_chunk") as chunks:
            assert await anext(chunks) == 1
            with pytest.raises(SerializationError, match="could not send"):
                await anext(chunks)
        assert await pool.execute("pid") == pid


# -- backpressure ---------------------------------------------------------------------


@TOOLS
async def test_a_consumer_that_stops_reading_stops_the_generator(tool: str, tmp_path: Path) -> None:
    """A consumer that takes one 1 MiB chunk and stops reading leaves the worker at most a
    window ahead and the parent holding at most a window; then every chunk arrives, in
    order."""
    notes = tmp_path / "notes"
    n, size = 64, 1 << 20
    indices: list[int] = []
    async with open_pool(adapter(), **options()) as pool:
        window = pool.config.stream_window
        async with pool.stream(tool, {"n": n, "path": str(notes), "size": size}) as chunks:
            async for chunk in chunks:
                indices.append(chunk[0])
                assert len(chunk[1]) == size
                if len(indices) == 1:
                    await wait_until(lambda: produced(notes) >= window, "a full window")
                    await anyio.sleep(0.3)  # enough to run far ahead, were that allowed
                    assert produced(notes) <= window + 1
                    assert chunks.buffered <= window
        assert closed(notes)

    assert indices == list(range(1, n + 1))


@TOOLS
async def test_a_window_of_one(tool: str, tmp_path: Path) -> None:
    """With ``stream_window=1`` the worker produces one chunk ahead of the consumer and
    credit goes back for every chunk; every chunk arrives, in order."""
    notes = tmp_path / "notes"
    async with open_pool(adapter(), **options(stream_window=1)) as pool:
        async with pool.stream(tool, {"n": 20, "path": str(notes)}) as chunks:
            indices = [(await anext(chunks))[0]]
            await wait_until(lambda: produced(notes) >= 2, "the next chunk")
            await anyio.sleep(0.2)
            assert produced(notes) == 2
            assert chunks.buffered <= 1
            indices += [chunk[0] async for chunk in chunks]

    assert indices == list(range(1, 21))


@TOOLS
async def test_cancelling_a_stream_whose_worker_waits_for_credit(tool: str, tmp_path: Path) -> None:
    """A generator held by a full window ends at once when its stream is cancelled: no
    thread or task waits for credit forever, the worker is not killed, its slot is free."""
    notes = tmp_path / "notes"
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        with anyio.CancelScope() as scope:
            async with pool.stream(tool, {"n": 1000, "path": str(notes)}) as chunks:
                await anext(chunks)
                await wait_until(
                    lambda: produced(notes) >= pool.config.stream_window, "a full window"
                )
                scope.cancel()
                await anyio.sleep(30)
        assert closed(notes)
        assert pool.status().in_flight == 0
        assert await pool.execute("pid", timeout=5) == pid

    assert scope.cancelled_caught
    assert produced(notes) == pool.config.stream_window


async def test_nonsense_credit_from_the_pool_stops_the_worker(tmp_path: Path) -> None:
    """Credit for more chunks than the worker sent is a protocol error: the worker stops,
    the stream fails with WorkerCrashedError, and the slot gets a new worker."""
    notes = tmp_path / "notes"
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        (worker,) = (w for w in pool._supervisor.handles() if w is not None)
        async with pool.stream("blobs", {"n": 1000, "path": str(notes)}) as chunks:
            await anext(chunks)
            (request_id,) = worker.pending
            worker.send(_wire.encode(_wire.Credit(request_id, 10_000)))
            with pytest.raises(WorkerCrashedError):
                await drain(chunks)
        with anyio.fail_after(10):
            assert await pool.execute("pid") != pid


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1, ValueError), (2.5, TypeError), ("8", TypeError)]
)
def test_stream_window_is_validated(value: Any, error: type[Exception]) -> None:
    """A window is a whole number of chunks, at least one."""
    with pytest.raises(error, match="stream_window"):
        PoolConfig(adapter=adapter(), stream_window=value)

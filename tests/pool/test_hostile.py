"""A broken or hostile worker can lose its own calls, never harm the parent or the pool."""

from __future__ import annotations

import contextlib
import struct
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypit import ProtocolError, WorkerCrashedError, _wire, telemetry
from pypit.pool import open_pool
from pypit.pool._request import Request
from pypit.pool._scheduler import Limits, Scheduler
from pypit.pool._worker import WorkerHandle
from tests.pool.conftest import adapter, opened_at_exit, options, wait_until


class _FakeProcess:
    pid = 4242
    returncode = None
    running = True
    reachable = True


def handle() -> WorkerHandle:
    worker = WorkerHandle(
        pool_name="fuzz",
        worker_id="fuzz_worker_1",
        process=_FakeProcess(),  # type: ignore[arg-type]
        max_concurrency=4,
        max_frame_size=1 << 20,
        on_release=lambda w, r, a: None,
        on_events=lambda w, e: None,
        spawn_started=0,
    )
    worker.ready = True
    return worker


def valid_frames() -> list[bytes]:
    return [
        _wire.encode(m)[4:]
        for m in (
            _wire.Result(1, {"a": [1, 2.5, "x"]}),
            _wire.Error(1, "tool", "ValueError", "m", "tb"),
            _wire.Chunk(2, 1, b"bytes"),
            _wire.End(2),
            _wire.Events([("call.stop", {"duration": 5}, {"command": "c"})], []),
            _wire.Output([_wire.Line("stdout", "x"), _wire.Record(20, "l", "m", {"k": 1})]),
            _wire.Pong(3),
        )
    ]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(valid_frames())))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(frame) - 1))
        frame[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        frame = frame[: draw(st.integers(0, len(frame)))]
    return bytes(frame)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(st.binary(max_size=200), mutated()))
def test_any_payload_is_handled_or_refused_with_protocol_error(payload: bytes) -> None:
    """Random and mutated frames either decode to a valid message or raise ProtocolError."""
    worker = handle()
    worker.pending[1] = Request("c", _Signal, stream=False)
    worker.pending[2] = Request("s", _Signal, stream=True)
    with contextlib.suppress(ProtocolError):
        worker.on_frame(payload)


@settings(max_examples=200)
@given(data=st.binary(max_size=400))
def test_frame_reader_never_raises_anything_but_protocol_errors(data: bytes) -> None:
    """The frame splitter accepts any byte stream, refusing only oversized frames."""
    reader = _wire.FrameReader(max_frame_size=1000)
    try:
        frames = reader.feed(data)
    except ProtocolError:
        return
    assert sum(len(f) + 4 for f in frames) + reader.pending == len(data)


class _Signal:
    def __init__(self) -> None:
        self.flag = False

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


GARBAGE = [
    framed(b"\xff\x00garbage"),
    framed(b""),
    struct.pack(">I", 0xFFFFFFFF) + b"x",
    framed(_wire.encode(_wire.Hello("t", 1))[4:]),
    framed(_wire.encode(_wire.Result(10**9, None))[4:]),
    framed(_wire.encode(_wire.Events([("x", {"v": 1}, {})], []))[4:].replace(b"\x01", b"\xc1")),
    # A pong for a ping never sent: it would switch the heartbeat off.
    _wire.encode(_wire.Pong(2**62)),
    # A drop report no worker makes: invented reasons would be re-emitted as drops.
    _wire.encode(_wire.Events([], [("invented", "", 1)])),
    _wire.encode(_wire.Events([], [("buffer_full", "", -5)])),
    # Output the pool could not log as it is: a nested field, a stream that is not one.
    _wire.encode(_wire.Output([_wire.Record(20, "l", "m", {"k": [1]})])),  # type: ignore[dict-item]
    _wire.encode(_wire.Output([_wire.Line("stdin", "x")])),  # type: ignore[arg-type]
    _wire.encode(_wire.Output([], -1)),
]


def test_a_workers_records_cannot_set_the_pools_keys() -> None:
    """A worker's record is logged with the pool's own category and ids whatever fields it
    claims, without the fields that would change how the pool's logging reads it; any
    level number is one of the pool's levels; lost output is reported."""
    worker = handle()
    fields: dict[str, str | int | float | bool | None] = {
        "event": "forged",
        "category": "pool",
        "pool_name": "evil",
        "worker_id": "evil_worker_9",
        "logger": "forged",
        "exc_info": True,
        "stack_info": True,
        "_record": "x",
        "kept": 1,
    }
    output = _wire.Output(
        [_wire.Record(25, "real", "message", fields), _wire.Record(10**6, "", "loud")], 3
    )
    with structlog.testing.capture_logs() as logs:
        worker.on_frame(_wire.encode(output)[4:])

    record, loud, lost = logs
    assert record == {
        "event": "message",
        "log_level": "info",
        "category": "worker",
        "pool_name": "fuzz",
        "worker_id": "fuzz_worker_1",
        "worker_pid": 4242,
        "logger": "real",
        "kept": 1,
    }
    assert (loud["event"], loud["log_level"], "logger" in loud) == ("loud", "critical", False)
    assert (lost["log_level"], lost["lost"]) == ("warning", 3)


@pytest.mark.anyio
@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
async def test_hostile_worker_is_dropped_and_the_pool_serves_on(
    garbage: bytes, tmp_path: Path
) -> None:
    """The offender's call fails with WorkerCrashedError and a log line; the other worker's
    call completes; the slot is restarted."""
    outcome: dict[str, Any] = {}
    gate = tmp_path / "gate"
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Hostile"), **options(size=2)) as pool:
            async with anyio.create_task_group() as tasks, opened_at_exit(gate):

                async def slow() -> None:
                    outcome["slow"] = await pool.execute("hold", {"gate": str(gate), "tag": "s"})

                tasks.start_soon(slow)
                await wait_until(lambda: pool.status().in_flight == 1, "the slow call to start")
                with pytest.raises(WorkerCrashedError, match="broke the protocol"):
                    await pool.execute("garbage", {"data": garbage}, timeout=5)
            with anyio.fail_after(10):
                assert await pool.execute("identity", 1) == 1

    assert outcome["slow"] == "s"
    broke = [entry for entry in logs if "broke the protocol" in entry["event"]]
    assert len(broke) == 1
    assert broke[0]["log_level"] == "error"


@pytest.mark.anyio
async def test_an_end_of_stream_for_a_call_is_a_protocol_error() -> None:
    """A worker that ends a call that is not a stream as if it were one breaks the
    protocol: the call fails with WorkerCrashedError (not a None result) and the slot
    gets a new worker."""
    async with open_pool(adapter("Hostile"), **options()) as pool:
        pid = await pool.execute("pid")
        with pytest.raises(WorkerCrashedError, match="broke the protocol"):
            await pool.execute("end_itself")
        with anyio.fail_after(10):
            assert await pool.execute("pid") != pid


def test_times_a_worker_reports_cannot_poison_the_pool() -> None:
    """A negative run time teaches nothing, and a negative wait never makes a negative
    queue_time: what a worker says about its calls' times is checked."""
    scheduler: Scheduler[WorkerHandle] = Scheduler("default", 1, Limits(max_queue_size=10))
    worker = handle()
    with telemetry.capture(("pypit", "pool", "queue", "dequeued")) as seen:
        for took, waited in ((-5, -(10**12)), (-(10**18), 0), (1000, -(10**12))):
            request = Request("identity", threading.Event)
            request.prefetched = True
            request.enqueued = request.sent_at = 1
            worker.in_flight += 1
            worker.slow += 1
            answer = _wire.Result(1, None, waited=waited, took=took)
            scheduler.release(worker, request, answer)

    assert [e.measurements["queue_time"] for e in seen] == [0]
    assert scheduler.is_quick("identity")  # only the 1 µs answer counted
    assert (worker.in_flight, worker.slow) == (0, 0)


def test_a_stream_past_its_window_is_a_protocol_error() -> None:
    """A worker may send a stream's window of chunks beyond the credit it was given, no
    more: the parent never holds more than the window."""
    worker = handle()
    request = Request("s", _Signal, stream=True)
    request.window = 2
    worker.pending[7] = request
    for seq in (1, 2):
        worker.on_frame(_wire.encode(_wire.Chunk(7, seq, seq))[4:])
    with pytest.raises(ProtocolError, match="window of 2"):
        worker.on_frame(_wire.encode(_wire.Chunk(7, 3, 3))[4:])
    assert request.chunks is not None
    assert [value for value, _ in request.chunks] == [1, 2]

    request.credited = 1  # the consumer took one chunk, and said so
    worker.on_frame(_wire.encode(_wire.Chunk(7, 3, 3))[4:])
    assert len(request.chunks) == 3


@pytest.mark.anyio
async def test_a_worker_that_ignores_its_window_is_replaced() -> None:
    """A worker flooding a stream past its window breaks the protocol: the stream fails
    with WorkerCrashedError after at most a window of chunks, and the slot gets a new
    worker."""
    taken = []
    most = 0
    async with open_pool(adapter("Hostile"), **options(stream_window=4)) as pool:
        pid = await pool.execute("pid")

        async def consume() -> None:
            nonlocal most
            async with pool.stream("flood", {"n": 1000}) as chunks:
                async for chunk in chunks:
                    most = max(most, chunks.buffered + 1)
                    taken.append(chunk)

        with pytest.raises(WorkerCrashedError):
            await consume()
        with anyio.fail_after(10):
            assert await pool.execute("pid") != pid

    assert most <= 4
    assert taken == list(range(1, len(taken) + 1))
    assert len(taken) < 1000


@pytest.mark.parametrize(
    ("values", "errors", "stop_on_error"),
    [
        ([1], [], False),  # a value short
        ([1, 2, 3], [], False),  # a value too many
        ([1], [1], True),  # stopped, but not at an error
        ([None, None], [1, 0], False),  # errors out of order
        ([None, None], [2], False),  # an error past the values
    ],
)
def test_results_that_do_not_answer_their_batch_are_a_protocol_error(
    values: list[Any], errors: list[int], stop_on_error: bool
) -> None:
    """A worker's Results must hold one value per input of its batch (or stop at an error
    when asked to), with errors in order, each at a value; anything else breaks the
    protocol and leaves the call in flight."""
    worker = handle()
    request = Request("identity", _Signal)
    request.message = _wire.Call(7, "identity", [1, 2], "cid", batch=True)
    request.message.stop_on_error = stop_on_error
    request.inputs = 2
    worker.pending[7] = request
    failures = [_wire.ItemError(i, "tool", "ValueError", "boom") for i in errors]
    with pytest.raises(ProtocolError, match="results of batch 7"):
        worker.on_frame(_wire.encode(_wire.Results(7, values, failures))[4:])
    assert 7 in worker.pending


@pytest.mark.parametrize(
    "parts",
    [
        [[1], []],  # an empty part
        [[1], [2, 3]],  # more values than inputs, over two parts
        [[1], [2], [3]],  # a part after the last input
        [[1, 2], []],  # an empty part after the last input
    ],
)
def test_results_in_parts_that_do_not_add_up_are_a_protocol_error(
    parts: list[list[Any]],
) -> None:
    """Results may come in parts (each but the last with ``more``); an empty part, or
    parts with more values than the batch has inputs, break the protocol, and the call
    stays in flight."""
    worker = handle()
    request = Request("identity", _Signal)
    request.message = _wire.Call(7, "identity", [1, 2], "cid", batch=True)
    request.inputs = 2
    worker.pending[7] = request
    *first, last = parts
    for values in first:
        worker.on_frame(_wire.encode(_wire.Results(7, values, more=True))[4:])
    with pytest.raises(ProtocolError, match="results of batch 7"):
        worker.on_frame(_wire.encode(_wire.Results(7, last, more=True))[4:])
    assert 7 in worker.pending


def test_results_in_parts_answer_their_batch_whole() -> None:
    """Parts, in order, make one answer: values joined, errors indexed in the batch."""
    worker = handle()
    request = Request("identity", _Signal)
    request.message = _wire.Call(7, "identity", [1, 2, 3], "cid", batch=True)
    request.inputs = 3
    worker.pending[7] = request
    error = _wire.ItemError(2, "tool", "ValueError", "boom")
    worker.on_frame(_wire.encode(_wire.Results(7, [1, 2], more=True))[4:])
    assert 7 in worker.pending
    worker.on_frame(_wire.encode(_wire.Results(7, [None], [error]))[4:])
    assert 7 not in worker.pending
    assert request.value.values == [1, 2, None]
    assert request.value.errors == [error]


def test_results_for_a_call_that_is_not_a_batch_are_a_protocol_error() -> None:
    """Results answer batch calls only."""
    worker = handle()
    request = Request("identity", _Signal)
    request.message = _wire.Call(7, "identity", 1, "cid")
    worker.pending[7] = request
    with pytest.raises(ProtocolError, match="not a batch"):
        worker.on_frame(_wire.encode(_wire.Results(7, [1]))[4:])

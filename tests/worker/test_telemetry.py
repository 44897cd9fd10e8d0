"""Telemetry from inside the workers: shipped, folded into the bus, or counted as dropped."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import psutil
import pytest
import structlog

from pypit import WorkerCrashedError, _shared, telemetry
from pypit.pool import open_pool
from pypit.telemetry import CapturedEvent, EventName
from pypit.worker import _telemetry
from tests.pool.conftest import adapter, assert_catalog_shape, options, wait_until

pytestmark = pytest.mark.anyio

PYTHON = ("pypit", "python")
DROPPED = ("pypit", "telemetry", "dropped")
STOP = (*PYTHON, "tool", "execution", "stop")
ADDED = {"pool_name", "worker_id", "python_pid"}


def instrumented(**overrides: Any) -> tuple[str, dict[str, Any]]:
    return adapter("Instrumented"), options(**overrides)


def dropped_by_reason(seen: telemetry.Capture) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for event in seen.named(*DROPPED):
        assert_catalog_shape(event)
        counts[event.metadata["reason"]] += event.measurements["count"]
    return dict(counts)


async def test_seed_emit_example_arrives_in_the_bus() -> None:
    """telemetry.emit("tool.execution.stop", ...) arrives with the pool's three keys added."""
    name, settings = instrumented()
    with telemetry.capture(STOP) as seen:
        async with open_pool(name, **settings) as pool:
            pid = await pool.execute("pid")
            await pool.execute("seed_emit")

    (event,) = seen.events
    assert event.measurements == {"duration": 1234, "bytes": 5000}
    assert event.metadata == {
        "tool": "predict",
        "status": "success",
        "correlation_id": "abc-123",
        "pool_name": "default",
        "worker_id": "default_worker_1",
        "python_pid": pid,
    }
    assert telemetry.catalog_event(STOP).metadata_keys <= set(event.metadata)


async def test_spans_nest_and_need_the_application_allowlist() -> None:
    """Allowed span names arrive with their span context, span and parent ids, and an
    exception with kind, error_type and error_message; the rest is counted as unknown."""
    names = [
        (*PYTHON, *span.split("."), phase)
        for span in ("complex_operation", "preprocessing", "inference")
        for phase in ("start", "stop", "exception")
    ]
    name, settings = instrumented(telemetry_allow=["inference.*", "preprocessing.*"])
    with telemetry.capture(*names, DROPPED) as seen:
        async with open_pool(name, **settings) as pool:
            assert await pool.execute("inference") == "done"
            with pytest.raises(Exception, match="model exploded"):
                await pool.execute("inference", {"fail": True})

    start = seen.named(*PYTHON, "inference", "start")[0]
    stop = seen.named(*PYTHON, "inference", "stop")[0]
    pre = seen.named(*PYTHON, "preprocessing", "start")[0]
    assert start.metadata["model"] == "gpt-4"
    assert start.metadata["span_id"] == stop.metadata["span_id"]
    assert set(stop.measurements) == {"duration"}
    assert set(start.measurements) == {"system_time"}
    assert pre.metadata["parent_span_id"] == start.metadata["parent_span_id"]
    assert pre.metadata["parent_span_id"] is not None
    assert pre.metadata["span_id"] != start.metadata["span_id"]
    (exception,) = seen.named(*PYTHON, "inference", "exception")
    assert exception.metadata["error_type"] == "ValueError"
    assert exception.metadata["error_message"] == "model exploded"
    assert exception.metadata["kind"] == "error"
    assert start.metadata["telemetry_span_context"] == start.metadata["span_id"]
    assert stop.metadata["telemetry_span_context"] == stop.metadata["span_id"]
    assert seen.named(*PYTHON, "complex_operation", "start") == []
    assert dropped_by_reason(seen) == {"unknown_event": 4}


async def test_every_drop_reason_is_counted() -> None:
    """unknown_event, invalid_measurements and invalid_metadata, one event per reason."""
    name, settings = instrumented()
    with telemetry.capture(DROPPED, STOP, (*PYTHON, "tool", "execution", "start")) as seen:
        async with open_pool(name, **settings) as pool:
            await pool.execute("emit_bad")

    assert dropped_by_reason(seen) == {
        "unknown_event": 2,
        "invalid_measurements": 2,
        "invalid_metadata": 3,
    }
    unknown = next(e for e in seen.named(*DROPPED) if e.metadata["reason"] == "unknown_event")
    assert unknown.metadata["event_name"] == "not.in.the.catalog"
    assert seen.named(*STOP) == []


async def test_values_the_wire_cannot_carry_are_dropped_and_counted() -> None:
    """An int out of msgpack's range in the measurements, or a string UTF-8 cannot hold in
    the metadata, passes the worker's checks but not its encoder: the event is dropped and
    counted, the events around it arrive, the call is answered and the worker serves on
    (it used to die)."""
    name, settings = instrumented()
    with telemetry.capture(DROPPED, STOP) as seen:
        async with open_pool(name, **settings) as pool:
            pid = await pool.execute("emit_unsendable")
            assert await pool.execute("pid") == pid

    assert dropped_by_reason(seen) == {"invalid_measurements": 2, "invalid_metadata": 1}
    assert [e.measurements["v"] for e in seen.named(*STOP)] == [1, 2]


async def test_a_full_buffer_drops_and_counts_nothing_silently() -> None:
    """Past the buffer, events are counted as buffer_full: shipped + dropped = emitted."""
    name, settings = instrumented(telemetry_buffer_size=50)
    with telemetry.capture(STOP, DROPPED) as seen:
        async with open_pool(name, **settings) as pool:
            await pool.execute("emit_many", {"name": "tool.execution.stop", "n": 2000})

    shipped = len(seen.named(*STOP))
    dropped = dropped_by_reason(seen)
    assert dropped.get("buffer_full", 0) > 0
    assert shipped + dropped["buffer_full"] == 2000


async def test_the_pool_adds_its_keys_last() -> None:
    """A worker cannot overwrite pool_name, worker_id or python_pid."""
    name, settings = instrumented()
    with telemetry.capture(STOP) as seen:
        async with open_pool(name, **settings) as pool:
            pid = await pool.execute("pid")
            await pool.execute("impersonate")

    metadata = seen.events[0].metadata
    assert (metadata["pool_name"], metadata["worker_id"], metadata["python_pid"]) == (
        "default",
        "default_worker_1",
        pid,
    )


@pytest.mark.parametrize("in_thread", [False, True], ids=["tool", "thread"])
async def test_the_calls_correlation_id_is_set_automatically(in_thread: bool) -> None:
    """Events of a call carry its correlation id, also from a thread with a copied context."""
    name, settings = instrumented()
    with telemetry.capture(STOP) as seen:
        async with open_pool(name, **settings) as pool:
            await pool.execute(
                "emit_many",
                {"name": "tool.execution.stop", "n": 3, "in_thread": in_thread},
                correlation_id="call-7",
            )

    assert [e.metadata["correlation_id"] for e in seen] == ["call-7"] * 3


async def test_correlation_id_functions() -> None:
    """new/set/get/reset work in the worker, starting from the call's id."""
    name, settings = instrumented()
    async with open_pool(name, **settings) as pool:
        call_id, mine, back, cleared = await pool.execute("correlation", correlation_id="c-1")

    assert (call_id, back, cleared) == ("c-1", "c-1", None)
    assert mine not in (None, "c-1")


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
async def test_sampling_keeps_or_drops_a_calls_events_together(rate: float) -> None:
    """Sampling is decided per correlation id: each call's 3 events all arrive or none."""
    name, settings = instrumented()
    calls = 40
    with telemetry.capture(STOP) as seen:
        async with open_pool(name, **settings) as pool:
            await pool.configure_telemetry(sampling_rate=rate)
            for i in range(calls):
                await pool.execute(
                    "emit_many", {"name": "tool.execution.stop", "n": 3}, correlation_id=f"c{i}"
                )

    per_call = Counter(e.metadata["correlation_id"] for e in seen)
    assert set(per_call.values()) <= {3}
    if rate == 0.0:
        assert per_call == {}
    elif rate == 1.0:
        assert len(per_call) == calls
    else:
        assert 0 < len(per_call) < calls


async def test_control_is_acknowledged_per_worker_and_survives_a_restart() -> None:
    """Disabled for one worker: it sends nothing, even after it is replaced; the other does."""
    name, settings = instrumented(size=2)
    with telemetry.capture(STOP) as seen:
        async with open_pool(name, **settings) as pool:
            await pool.configure_telemetry(enabled=False, worker_id="default_worker_1")
            for worker_id in ("default_worker_1", "default_worker_2"):
                with pytest.raises(WorkerCrashedError):
                    await pool.execute("die", session_id=worker_id, affinity="hint")
            await wait_until(lambda: len(pool.workers()) == 2, "both workers to be replaced")
            pids = pool.workers()
            for _ in range(6):
                await pool.execute("emit_many", {"name": "tool.execution.stop", "n": 1})
            await pool.configure_telemetry(enabled=True, worker_id="default_worker_1")
            await pool.configure_telemetry(deny=["tool.execution.*"])
            for _ in range(4):
                await pool.execute("emit_many", {"name": "tool.execution.stop", "n": 1})
            with pytest.raises(ValueError, match="sampling_rate"):
                await pool.configure_telemetry(sampling_rate=2.0)

    senders = {e.metadata["worker_id"] for e in seen}
    assert senders == {"default_worker_2"}
    assert {e.metadata["python_pid"] for e in seen} == {pids["default_worker_2"]}


async def test_unknown_worker_id_is_a_lookup_error() -> None:
    """Control of a worker the pool does not have is refused."""
    name, settings = instrumented()
    async with open_pool(name, **settings) as pool:
        with pytest.raises(LookupError):
            await pool.configure_telemetry(enabled=False, worker_id="default_worker_9")
        with pytest.raises(ValueError, match="level must be one of debug"):
            await pool.set_worker_level("default_worker_1", "loud")


async def test_memory_and_cpu_samplers() -> None:
    """Each worker samples its RSS, VMS and CPU every sample_interval; the figures are the
    ones psutil reads of the worker from outside."""
    events = [(*PYTHON, "memory", "sampled"), (*PYTHON, "cpu", "sampled")]
    name, settings = instrumented(sample_interval=0.05)
    with telemetry.capture(*events) as seen:
        async with open_pool(name, **settings) as pool:
            pid = await pool.execute("pid")
            # Samples taken once the worker is ready and idle: one taken while it started
            # (before the adapter's import) can be half the size it has now.
            before = len(seen.named(*PYTHON, "memory", "sampled"))
            await seen.wait((*PYTHON, "memory", "sampled"), count=before + 2)
            outside = psutil.Process(pid).memory_info()

    memory = seen.named(*PYTHON, "memory", "sampled")[before + 1]
    cpu = seen.named(*PYTHON, "cpu", "sampled")[0]
    for event in (memory, cpu):
        assert_catalog_shape(event)
        assert event.metadata["python_pid"] == pid
    assert memory.measurements["rss_bytes"] > 1_000_000
    assert memory.measurements["vms_bytes"] >= memory.measurements["rss_bytes"]
    # The same figures as psutil's, within a factor that start-up (threads, imports between
    # the two readings) cannot reach and a wrong unit (pages, kilobytes) would exceed.
    for key, value in (("rss_bytes", outside.rss), ("vms_bytes", outside.vms)):
        assert value / 2 < memory.measurements[key] < value * 2
    assert 0 <= cpu.measurements["cpu_percent"] <= 100 * (os.cpu_count() or 1)


async def test_log_level_and_categories_filter_pypits_records() -> None:
    """log_categories silences a category; the others keep log_level."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(
            adapter(), **options(log_level="info", log_categories={"worker": "error"})
        ) as pool:
            await pool.execute("chatter", {"text": "quiet"})
            with pytest.raises(WorkerCrashedError):
                await pool.execute("die")
            await pool.execute("identity", 1)

    assert not [e for e in logs if e.get("category") == "worker"]
    assert [e for e in logs if e.get("category") == "pool"]


async def test_a_flood_of_events_does_not_starve_calls() -> None:
    """A worker flooding events still answers calls; what it could not ship is counted."""
    # Two slots: the flood runs in one while calls are answered in the other. A small
    # buffer fills at once, so that drops are certain.
    name, settings = instrumented(size=1, max_concurrency=2, telemetry_buffer_size=1000)
    with telemetry.capture(STOP, DROPPED) as seen:
        async with open_pool(name, **settings) as pool:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(
                    pool.execute, "emit_many", {"name": "tool.execution.stop", "n": 200_000}
                )
                pids = {await pool.execute("pid") for _ in range(20)}
                assert pids == set(pool.workers().values())

    shipped = len(seen.named(*STOP))
    assert shipped + dropped_by_reason(seen).get("buffer_full", 0) == 200_000


def test_concurrent_drains_take_each_event_once() -> None:
    """A call's end and the shipper drain at once: every event leaves exactly once."""
    buffer = _telemetry.EventBuffer(capacity=1_000_000)
    total = 200_000
    taken: list[list[Any]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    adding = threading.Event()

    def drain(into: list[Any]) -> None:
        try:
            while adding.is_set() or len(buffer):
                batch = buffer.drain(limit=3)
                if batch is not None:
                    into.extend(batch.events)
        except BaseException as exc:
            errors.append(exc)

    adding.set()
    drainers = [threading.Thread(target=drain, args=(into,)) for into in taken]
    for thread in drainers:
        thread.start()
    for n in range(total):
        buffer.add("tool.execution.stop", {"n": n}, {})
    adding.clear()
    for thread in drainers:
        thread.join()

    assert errors == []
    numbers = sorted(event[1]["n"] for into in taken for event in into)
    assert numbers == list(range(total))


def test_worker_catalog_names_match_the_catalog() -> None:
    """The worker's list of python event names is the catalog's."""
    names = {".".join(spec.name[2:]) for spec in telemetry.CATALOG if spec.name[:2] == PYTHON}
    assert names == _shared.CATALOG_NAMES


def test_emit_outside_a_worker_is_a_no_op() -> None:
    """Adapter code runs outside a worker too (its own tests): emit and span do nothing."""
    from pypit.worker import telemetry as worker_telemetry

    assert _telemetry.current is None
    worker_telemetry.emit("tool.execution.stop", {"duration": 1})
    with worker_telemetry.span("anything"):
        pass

    @worker_telemetry.span("decorated")
    def work() -> int:
        return 1

    assert work() == 1


def test_patterns() -> None:
    """Exact names, "prefix.*" and "*"."""
    assert _shared.matches("a.b", ["a.b"])
    assert _shared.matches("a.b.c", ["a.*"])
    assert not _shared.matches("ab.c", ["a.*"])
    assert _shared.matches("x", ["*"])
    assert not _shared.valid_name("a..b")


def captured_names(events: list[CapturedEvent]) -> list[str]:
    return [".".join(e.event) for e in events]


@pytest.fixture
def in_a_worker() -> Iterator[_telemetry.WorkerTelemetry]:
    """This process acts as a worker whose pool listens to ``job.*`` and allows it."""
    names = [f"job.{phase}" for phase in ("start", "stop", "exception")]
    state = _telemetry.WorkerTelemetry()
    state.settings = _telemetry.Settings(listened=names, allow=["job.*"])
    _telemetry.current = state
    try:
        yield state
    finally:
        _telemetry.current = None


def shipped(state: _telemetry.WorkerTelemetry) -> list[tuple[str, dict[str, Any]]]:
    batch = state.buffer.drain()
    assert batch is not None
    return [(name, metadata) for name, _, metadata in batch.events]


def test_a_worker_span_has_the_shape_of_the_applications_span(
    in_a_worker: _telemetry.WorkerTelemetry,
) -> None:
    """Each event carries telemetry_span_context (its span id, a str); the exception adds
    kind, error_type and error_message, as the application's span does."""
    from pypit.worker import telemetry as worker_telemetry

    with pytest.raises(KeyError), worker_telemetry.span("job", {"model": "small"}):
        raise KeyError("missing")
    with pytest.raises(asyncio.CancelledError), worker_telemetry.span("job"):
        raise asyncio.CancelledError

    events = shipped(in_a_worker)
    assert [name for name, _ in events] == ["job.start", "job.exception"] * 2
    start, failed = events[0][1], events[1][1]
    assert start["telemetry_span_context"] == start["span_id"] == failed["telemetry_span_context"]
    assert isinstance(start["telemetry_span_context"], str)
    assert {k: failed[k] for k in ("kind", "error_type", "error_message")} == {
        "kind": "error",
        "error_type": "KeyError",
        "error_message": "'missing'",
    }
    assert "reason" not in failed
    assert events[3][1]["kind"] == "exit"


def test_a_correlation_id_given_to_emit_is_a_str(
    in_a_worker: _telemetry.WorkerTelemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """emit refuses a correlation id that is not a str at the call (an int arrived in the
    pool as the event's correlation_id), in a worker and out of one; a str is shipped."""
    from pypit.worker import telemetry as worker_telemetry

    message = r"^correlation_id must be a str or None, not 5$"
    with pytest.raises(TypeError, match=message):
        worker_telemetry.emit("job.stop", {"duration": 1}, correlation_id=5)  # type: ignore[arg-type]
    worker_telemetry.emit("job.stop", {"duration": 1}, correlation_id="c-1")
    assert shipped(in_a_worker) == [("job.stop", {"correlation_id": "c-1"})]
    monkeypatch.setattr(_telemetry, "current", None)
    with pytest.raises(TypeError, match=message):
        worker_telemetry.emit("job.stop", {"duration": 1}, correlation_id=5)  # type: ignore[arg-type]


def test_one_handler_serves_both_spans(in_a_worker: _telemetry.WorkerTelemetry) -> None:
    """A handler that pairs spans by telemetry_span_context and slices error_message works
    on the application's span and on a worker's span, re-emitted as the pool does."""
    from pypit.worker import telemetry as worker_telemetry

    seen: list[tuple[EventName, Any, str, str]] = []

    def handler(event: EventName, measurements: Any, metadata: Any, config: Any) -> None:
        context = metadata["telemetry_span_context"]
        if event[-1] == "exception":
            seen.append((event, context, metadata["kind"], metadata["error_message"][:60]))
        else:
            seen.append((event, context, "", ""))

    app = ("app", "job")
    worker = (*PYTHON, "job")
    names = [(*prefix, phase) for prefix in (app, worker) for phase in ("start", "exception")]
    telemetry.attach_many("both", names, handler)
    with pytest.raises(ValueError, match="x"), telemetry.span(app):
        raise ValueError("x" * 100)
    with pytest.raises(ValueError, match="y"), worker_telemetry.span("job"):
        raise ValueError("y" * 100)
    for name, metadata in shipped(in_a_worker):
        added = {"pool_name": "default", "worker_id": "default_worker_1", "python_pid": 1}
        telemetry.execute((*PYTHON, *name.split(".")), {"duration": 1}, {**metadata, **added})

    assert [(e[0][-1], e[2], e[3]) for e in seen] == [
        ("start", "", ""),
        ("exception", "error", "x" * 60),
        ("start", "", ""),
        ("exception", "error", "y" * 60),
    ]
    assert seen[0][1] == seen[1][1]
    assert seen[2][1] == seen[3][1]
    assert [h.id for h in telemetry.list_handlers()] == ["both"] * 4


def test_a_worker_span_name_is_a_dotted_str() -> None:
    """A tuple where the worker's span takes a dotted name fails at once, saying so."""
    from pypit.worker import telemetry as worker_telemetry

    with pytest.raises(TypeError) as info:
        worker_telemetry.span(("app", "job"))  # type: ignore[arg-type]

    assert str(info.value).startswith(
        "a worker span's name is a dotted str such as 'inference', not ('app', 'job')"
    )

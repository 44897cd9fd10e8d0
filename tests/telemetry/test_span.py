"""``span``: start, then stop or exception, with :telemetry's exact keys."""

from __future__ import annotations

import traceback
from typing import Any

import anyio
import pytest

from pypit import telemetry
from pypit.telemetry import CapturedEvent

PREFIX = ("app", "work")
START = (*PREFIX, "start")
STOP = (*PREFIX, "stop")
EXCEPTION = (*PREFIX, "exception")


def capture_span() -> telemetry.Capture:
    return telemetry.capture(START, STOP, EXCEPTION)


def keys(event: CapturedEvent) -> tuple[set[str], set[str]]:
    return set(event.measurements), set(event.metadata)


def test_context_manager_emits_start_and_stop_with_exact_keys() -> None:
    """start: monotonic_time, system_time; stop: duration, monotonic_time; one shared context."""
    with capture_span() as seen, telemetry.span(PREFIX, {"job": 1}) as current:
        pass

    start, stop = seen.events
    assert (start.event, stop.event) == (START, STOP)
    assert ({"monotonic_time", "system_time"}, {"job", "telemetry_span_context"}) == keys(start)
    assert ({"duration", "monotonic_time"}, {"job", "telemetry_span_context"}) == keys(stop)
    assert start.metadata["telemetry_span_context"] == stop.metadata["telemetry_span_context"]
    assert current.context == start.metadata["telemetry_span_context"]
    assert stop.measurements["duration"] > 0
    expected_end = start.measurements["monotonic_time"] + stop.measurements["duration"]
    assert expected_end == stop.measurements["monotonic_time"]
    assert all(isinstance(v, int) for e in seen for v in e.measurements.values())


def test_each_span_gets_a_fresh_context_unless_supplied() -> None:
    """Two spans, two contexts; a caller-supplied context is kept."""
    with capture_span() as seen:
        with telemetry.span(PREFIX):
            pass
        with telemetry.span(PREFIX):
            pass
        with telemetry.span(PREFIX, {"telemetry_span_context": "mine"}):
            pass

    contexts = [e.metadata["telemetry_span_context"] for e in seen.named(*START)]
    assert contexts[0] != contexts[1]
    assert contexts[2] == "mine"
    assert [e.metadata["telemetry_span_context"] for e in seen.named(*STOP)][2:] == ["mine"]


def test_stop_metadata_replaces_start_metadata() -> None:
    """Stop metadata is the stop metadata only, never merged with the start metadata."""
    with capture_span() as seen, telemetry.span(PREFIX, {"start_only": 1}) as current:
        current.set_stop_metadata({"stop_only": 2})

    stop = seen.named(*STOP)[0]
    assert {"stop_only", "telemetry_span_context"} == set(stop.metadata)


def test_extra_measurements_cannot_override_duration() -> None:
    """Extra stop measurements are added; duration and monotonic_time always win."""
    with capture_span() as seen, telemetry.span(PREFIX) as current:
        current.add_measurements({"duration": -1, "monotonic_time": -1, "rows": 3})

    stop = seen.named(*STOP)[0]
    assert stop.measurements["rows"] == 3
    assert stop.measurements["duration"] >= 0
    assert stop.measurements["monotonic_time"] > 0


def test_exception_event_and_original_exception_propagate() -> None:
    """The exception event: start metadata + kind, reason, stacktrace (as in :telemetry),
    error_type and error_message; the same object raised."""
    error = ValueError("bad input")

    def fail() -> None:
        raise error

    with (
        capture_span() as seen,
        pytest.raises(ValueError, match="bad input") as info,
        telemetry.span(PREFIX, {"job": 7}),
    ):
        fail()

    assert info.value is error
    assert "fail" in "".join(traceback.format_tb(info.value.__traceback__))
    start, exc = seen.events
    assert exc.event == EXCEPTION
    assert {"duration", "monotonic_time"} == set(exc.measurements)
    assert {
        "job",
        "telemetry_span_context",
        "kind",
        "reason",
        "stacktrace",
        "error_type",
        "error_message",
    } == set(exc.metadata)
    assert exc.metadata["kind"] == "error"
    assert exc.metadata["error_type"] == "ValueError"
    assert exc.metadata["error_message"] == "bad input"
    assert exc.metadata["reason"] is error
    assert exc.metadata["stacktrace"] is not None
    assert start.metadata["telemetry_span_context"] == exc.metadata["telemetry_span_context"]
    assert seen.named(*STOP) == []


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_are_reported_and_never_swallowed(exc_type: type[BaseException]) -> None:
    """KeyboardInterrupt and SystemExit propagate, reported with kind 'exit'."""
    with capture_span() as seen, pytest.raises(exc_type), telemetry.span(PREFIX):
        raise exc_type

    assert [e.metadata["kind"] for e in seen.named(*EXCEPTION)] == ["exit"]


@pytest.mark.anyio
async def test_cancellation_propagates_through_async_span() -> None:
    """A cancelled task inside ``async with span`` is cancelled, with an exception event."""
    with capture_span() as seen:
        with anyio.move_on_after(0.01) as scope:
            async with telemetry.span(PREFIX):
                await anyio.sleep(10)
        assert scope.cancelled_caught

    (exc,) = seen.named(*EXCEPTION)
    assert exc.metadata["kind"] == "exit"
    assert isinstance(exc.metadata["reason"], anyio.get_cancelled_exc_class())
    assert seen.named(*STOP) == []


@pytest.mark.anyio
async def test_async_context_manager_emits_start_and_stop() -> None:
    """``async with span`` behaves like the sync form."""
    with capture_span() as seen:
        async with telemetry.span(PREFIX, {"a": 1}):
            await anyio.sleep(0)

    assert [e.event for e in seen] == [START, STOP]


def test_decorator_makes_a_new_span_per_call() -> None:
    """@span on a function: one span per call, each with its own context."""

    @telemetry.span(PREFIX, {"fn": "double"})
    def double(x: int) -> int:
        return 2 * x

    with capture_span() as seen:
        assert double(2) == 4
        assert double(3) == 6

    stops = seen.named(*STOP)
    assert len(stops) == 2
    assert (
        stops[0].metadata["telemetry_span_context"] != stops[1].metadata["telemetry_span_context"]
    )
    assert {"fn", "telemetry_span_context"} == set(stops[0].metadata)


@pytest.mark.anyio
async def test_decorator_on_coroutine_function() -> None:
    """@span on an async def wraps the awaited body, not the coroutine creation."""

    @telemetry.span(PREFIX)
    async def slow() -> str:
        await anyio.sleep(0.01)
        return "done"

    with capture_span() as seen:
        assert await slow() == "done"

    assert seen.named(*STOP)[0].measurements["duration"] >= 10_000_000


def test_functional_form_with_two_tuple() -> None:
    """span(prefix, meta, fn) with fn returning (result, stop_metadata)."""
    with capture_span() as seen:
        result = telemetry.span(PREFIX, {"s": 1}, lambda: ("value", {"t": 2}))

    assert result == "value"
    stop = seen.named(*STOP)[0]
    assert {"t", "telemetry_span_context"} == set(stop.metadata)
    assert {"duration", "monotonic_time"} == set(stop.measurements)


def test_functional_form_with_three_tuple() -> None:
    """span(prefix, meta, fn) with fn returning (result, extra_measurements, stop_metadata)."""
    with capture_span() as seen:
        result = telemetry.span(PREFIX, None, lambda: (42, {"rows": 5, "duration": -9}, {"t": 2}))

    assert result == 42
    stop = seen.named(*STOP)[0]
    assert {"duration", "monotonic_time", "rows"} == set(stop.measurements)
    assert stop.measurements["duration"] >= 0


def test_functional_form_rejects_other_shapes() -> None:
    """A function that returns something else is a TypeError, reported as an exception event."""
    with capture_span() as seen, pytest.raises(TypeError, match="span function returns"):
        telemetry.span(PREFIX, None, lambda: "bare")  # type: ignore[arg-type,return-value]

    assert [e.event for e in seen] == [START, EXCEPTION]


def test_functional_form_exception_propagates() -> None:
    """An exception in the function is reported and re-raised."""

    def fail() -> Any:
        raise LookupError("missing")

    with capture_span() as seen, pytest.raises(LookupError, match="missing"):
        telemetry.span(PREFIX, None, fail)

    assert [e.event for e in seen] == [START, EXCEPTION]


def test_a_span_is_entered_once() -> None:
    """Re-entering the same Span object is misuse: a TypeError that says a span is entered
    once, and no second start event."""
    current = telemetry.span(PREFIX)
    with capture_span() as seen:
        with current:
            pass
        with pytest.raises(TypeError, match=r"^a span is entered once; call span\(\) again"):
            with current:
                pass
    assert [e.event for e in seen] == [START, STOP]


def test_bad_prefix_raises_at_construction() -> None:
    """A malformed prefix is refused before any event."""
    with pytest.raises(ValueError, match="at least one segment"):
        telemetry.span(())
    with pytest.raises(TypeError):
        telemetry.span("app.work")  # type: ignore[call-overload]


def test_list_prefix_is_accepted() -> None:
    """A list prefix works like the tuple."""
    with capture_span() as seen, telemetry.span(["app", "work"]):
        pass

    assert [e.event for e in seen] == [START, STOP]


def test_span_handler_failure_does_not_reach_the_caller() -> None:
    """Raising handlers on start and stop are detached; the work and the events still happen."""

    def bad(*args: Any) -> None:
        raise RuntimeError("handler bug")

    telemetry.attach("bad-start", START, bad)
    telemetry.attach("bad-stop", STOP, bad)
    with capture_span() as seen, telemetry.span(PREFIX):
        ran = True

    assert ran
    assert [e.event for e in seen] == [START, STOP]
    assert {"bad-start", "bad-stop"}.isdisjoint(h.id for h in telemetry.list_handlers())

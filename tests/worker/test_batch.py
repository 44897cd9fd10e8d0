"""A map's frame in the worker: the tool once per input, each input's error its own, a
cancel seen after the input that runs; inputs that are each one positional argument run
in C's loop, with the same results, errors and cancels as one by one."""

from __future__ import annotations

from typing import Any

import pytest

from pypit import _wire
from pypit.worker import _batch
from pypit.worker._calls import Running, describe_exception


def batch(
    inputs: list[Any] | range, *, positional: bool, stop_on_error: bool = False
) -> _wire.Call:
    """A batch call of ``inputs``; a range travels as its span, as the pool sends it."""
    span = _wire.span(inputs) if type(inputs) is range else None
    call = _wire.Call(1, "tool", inputs if span is None else span, "c")
    call.batch = True
    call.positional = positional
    call.stop_on_error = stop_on_error
    call.span = span is not None
    return call


def every_seventh_fails(value: int) -> int:
    if value % 7 == 3:
        raise ValueError(f"bad {value}")
    return value * 2


@pytest.mark.parametrize("stop_on_error", [False, True])
def test_runs_answer_as_one_by_one_does(stop_on_error: bool) -> None:
    """Over many quick inputs, the values and each error's index, type and message are
    those of the input-by-input loop, in both error modes."""
    inputs = list(range(20_000))
    answers = [
        _batch.run(
            batch(inputs, positional=positional, stop_on_error=stop_on_error),
            every_seventh_fails,
            Running(),
            describe_exception,
        )
        for positional in (True, False)
    ]
    fast, slow = answers
    assert fast is not None
    assert slow is not None
    assert fast.values == slow.values
    assert [(e.index, e.type, e.message) for e in fast.errors] == [
        (e.index, e.type, e.message) for e in slow.errors
    ]
    if stop_on_error:
        assert (len(fast.values), [e.index for e in fast.errors]) == (4, [3])
    else:
        assert len(fast.values) == len(inputs)
        assert len(fast.errors) == len([i for i in inputs if i % 7 == 3])
        assert fast.values[:5] == [0, 2, 4, None, 8]


def test_a_range_runs_as_its_list_does() -> None:
    """A batch that carries a range runs its ints as the same ints in a list, errors and
    cancels included; a range that is not [first, count, step] fails the call."""
    inputs = range(-3000, 30_000, 3)
    answers = [
        _batch.run(
            batch(given, positional=True), every_seventh_fails, Running(), describe_exception
        )
        for given in (inputs, list(inputs))
    ]
    assert answers[0] == answers[1]
    running = Running()

    def tool(value: int) -> int:
        if value == 0:
            running.cancel()
        return value

    assert _batch.run(batch(inputs, positional=True), tool, running, describe_exception) is None
    call = batch(inputs, positional=True)
    call.args = [0, 10]
    with pytest.raises(TypeError, match="first, count, step"):
        _batch.run(call, tool, Running(), describe_exception)


@pytest.mark.parametrize("positional", [True, False])
def test_a_cancel_stops_the_batch_after_the_input_that_runs(positional: bool) -> None:
    """A cancel during a batch (from the tool's own thread here; the worker's reader
    thread in use) is seen right after the input that runs then, in C's loop as in
    Python's: the batch answers None and the rest never run."""
    running = Running()
    ran: list[int] = []

    def tool(value: int) -> int:
        ran.append(value)
        if value == 5000:
            running.cancel()
        return value

    inputs = list(range(100_000))
    answer = _batch.run(batch(inputs, positional=positional), tool, running, describe_exception)
    assert answer is None
    assert ran == list(range(5001))


def test_a_batch_cancelled_before_it_starts_runs_nothing() -> None:
    """A cancel that came before the batch started: no input runs."""
    running = Running()
    running.cancel()
    ran: list[int] = []
    answer = _batch.run(batch([1, 2, 3], positional=True), ran.append, running, describe_exception)
    assert answer is None
    assert ran == []


@pytest.mark.parametrize("stop_on_error", [False, True])
def test_stop_iteration_from_the_tool_is_that_input_s_error(stop_on_error: bool) -> None:
    """StopIteration, which C's loop takes for the end of the inputs, fails its own input
    and no other; the inputs after it run (unless the batch stops at its first error)."""

    def tool(value: int) -> int:
        if value == 3:
            raise StopIteration
        return value

    answer = _batch.run(
        batch(list(range(6)), positional=True, stop_on_error=stop_on_error),
        tool,
        Running(),
        describe_exception,
    )
    assert answer is not None
    assert [(e.index, e.type) for e in answer.errors] == [(3, "StopIteration")]
    assert answer.values == ([0, 1, 2, None] if stop_on_error else [0, 1, 2, None, 4, 5])

"""A map's frame in the worker: the tool once per input, each input's error its own, the
cancel flag looked at as the batch goes; inputs that are each one positional argument run
in runs (C's loop), with the same results and errors as one by one."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pypit import _wire
from pypit.worker import _batch
from pypit.worker._calls import Running, describe_exception


def batch(inputs: list[Any], *, positional: bool, stop_on_error: bool = False) -> _wire.Call:
    call = _wire.Call(1, "tool", inputs, "c")
    call.batch = True
    call.positional = positional
    call.stop_on_error = stop_on_error
    return call


def every_seventh_fails(value: int) -> int:
    if value % 7 == 3:
        raise ValueError(f"bad {value}")
    return value * 2


@pytest.mark.parametrize("stop_on_error", [False, True])
def test_runs_answer_as_one_by_one_does(stop_on_error: bool) -> None:
    """Over many quick inputs (runs grow to thousands), the values and each error's index,
    type and message are those of the input-by-input loop, in both error modes."""
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


def test_a_cancel_stops_quick_inputs_before_the_end() -> None:
    """A cancel during a batch of quick inputs is seen at the end of the run: the batch
    answers None and the rest never run."""
    running = Running()
    ran: list[int] = []

    def tool(value: int) -> int:
        ran.append(value)
        if value == 5000:
            running.cancelled = True
        return value

    assert (
        _batch.run(batch(list(range(100_000)), positional=True), tool, running, describe_exception)
        is None
    )
    assert 5000 < len(ran) < 100_000


def test_a_slow_tool_runs_one_input_at_a_time() -> None:
    """Inputs that each take longer than a run may are run one by one: a cancel is seen
    right after the input that set it."""
    running = Running()
    ran: list[int] = []

    def tool(value: int) -> int:
        time.sleep(0.0015)  # over the 1 ms a run may take: runs stay one input long
        ran.append(value)
        if value == 3:
            running.cancelled = True
        return value

    assert (
        _batch.run(batch(list(range(50)), positional=True), tool, running, describe_exception)
        is None
    )
    assert ran == [0, 1, 2, 3]

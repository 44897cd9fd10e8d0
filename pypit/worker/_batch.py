"""Batch calls in the worker: one frame, many inputs of one tool (``pool.map``).

The tool runs once per input, in order, in the call's slot, as if each input were a call
of its own; the frame costs one read, one write and one slot for all of them. Between two
inputs the worker looks whether the call was cancelled, so a cancelled batch stops after
the input that runs then (an async tool's at its next ``await``) instead of running the
rest; inputs that are each one positional argument run in C's loop, which a cancel stops
at the same point. Each input answers for itself: an input whose tool raised, or whose
result cannot travel, is an error of that input only, and the others keep their values.
One :class:`~pypit._wire.Results` answers the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import repeat
from types import MethodType
from typing import TYPE_CHECKING, Any

from pypit import _wire
from pypit._errors import SerializationError

if TYPE_CHECKING:
    from pypit.worker._calls import Running

Describe = Callable[[BaseException], tuple[str, str, str]]


def run(
    call: _wire.Call, function: Callable[..., Any], running: Running, describe: Describe
) -> _wire.Results | None:
    """Run a sync tool once per input; None when the call was cancelled meanwhile.

    The loop is the worker's cost per input, so it is kept tight: the ``try`` is around
    it, not in it, and after an input raised the loop goes on with the same iterator.
    """
    if call.positional:
        return _run_positional(call, function, running, describe)
    values: list[Any] = []
    errors: list[_wire.ItemError] = []
    append = values.append
    remaining = iter(_inputs(call))
    while True:
        try:
            for args in remaining:
                if running.cancelled:
                    return None
                if type(args) is dict:
                    append(function(**args))
                elif args is None:
                    append(function())
                else:
                    append(function(args))
        except BaseException as exc:
            # SystemExit and KeyboardInterrupt too, as for a single call: they end the
            # input, not the worker.
            errors.append(_failed(len(values), exc, describe))
            append(None)
            if call.stop_on_error:
                break
        else:
            break
    return _wire.Results(call.id, values, errors)


def _run_positional(
    call: _wire.Call, function: Callable[..., Any], running: Running, describe: Describe
) -> _wire.Results | None:
    """:func:`run` for inputs that are each one positional argument: the tool runs by
    ``map`` (C's loop, not Python's) over the list of inputs. A cancel empties the list
    (``Running.halt``), which ends the loop after the input that runs then, as the Python
    loop's look at the flag does, at C's cost per input."""
    inputs = _inputs(call)  # a list of the call's own, which nothing else holds
    count = len(inputs)
    running.halt = inputs.clear
    if running.cancelled:  # cancelled before halt was in place
        inputs.clear()
    values: list[Any] = []
    errors: list[_wire.ItemError] = []
    extend = values.extend
    remaining = iter(inputs)
    # A tool is mostly a bound method: its function with the adapter beside each input
    # saves the binding's cost on every call (about a tenth of a trivial tool's).
    before: tuple[Iterator[Any], ...] = ()
    call_one = function
    if type(function) is MethodType:
        call_one, before = function.__func__, (repeat(function.__self__),)
    while True:
        try:
            extend(map(call_one, *before, remaining))
        except BaseException as exc:
            # As in run: the input that raised fails alone, the batch goes on after it.
            errors.append(_failed(len(values), exc, describe))
            values.append(None)
            if call.stop_on_error:
                break
            continue
        if len(values) == count:
            break
        if running.cancelled:
            return None
        # The loop ended before the last input: the tool raised StopIteration, which ends
        # a map as if its inputs had ended.
        errors.append(_stopped(len(values)))
        values.append(None)
        if call.stop_on_error:
            break
    return _wire.Results(call.id, values, errors)


async def run_async(
    call: _wire.Call, function: Callable[..., Any], running: Running, describe: Describe
) -> _wire.Results | None:
    """:func:`run` for an async tool: a cancellation of the call's task ends the batch at
    the input's ``await`` (``CancelledError`` goes through)."""
    import asyncio

    values: list[Any] = []
    errors: list[_wire.ItemError] = []
    append = values.append
    remaining = iter(_inputs(call))
    while True:
        try:
            for args in remaining:
                if running.cancelled:
                    return None
                if type(args) is dict:
                    append(await function(**args))
                elif args is None:
                    append(await function())
                else:
                    append(await function(args))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            errors.append(_failed(len(values), exc, describe))
            append(None)
            if call.stop_on_error:
                break
        else:
            break
    return _wire.Results(call.id, values, errors)


def _inputs(call: _wire.Call) -> list[Any]:
    if call.span:
        return _wire.span_inputs(call.args)
    if type(call.args) is not list:
        raise TypeError(f"a batch call carries a list of inputs, not {type(call.args).__name__}")
    return call.args


def _stopped(index: int) -> _wire.ItemError:
    """The error of an input whose tool raised StopIteration inside C's loop, which takes
    it for the end of the inputs and keeps neither the exception nor its traceback."""
    message = "the tool raised StopIteration (a map's quick path keeps no traceback of it)"
    return _wire.ItemError(index, "tool", "StopIteration", message, f"StopIteration: {message}")


def _failed(index: int, exc: BaseException, describe: Describe) -> _wire.ItemError:
    error_type, message, formatted = describe(exc)
    return _wire.ItemError(index, "tool", error_type, message, formatted)


def without_unsendable(results: _wire.Results) -> _wire.Results:
    """``results`` with each value that cannot travel replaced by that input's
    ``SerializationError``; only on the way to an error, so each value is encoded alone."""
    errors = {error.index: error for error in results.errors}
    values = list(results.values)
    for index, value in enumerate(values):
        if index in errors:
            continue
        try:
            _wire.encode(_wire.Result(results.id, value), max_frame_size=2**63)
        except SerializationError as exc:
            values[index] = None
            errors[index] = _wire.ItemError(index, "serialization", "SerializationError", str(exc))
    return _wire.Results(
        results.id, values, [errors[i] for i in sorted(errors)], results.waited, results.took
    )

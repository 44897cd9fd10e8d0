"""What the workers report of their tools (``pool.tools()``), and the check of each call's
arguments against a tool's signature, in the parent, before anything is sent; on asyncio
and trio, and through the blocking facade."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from pypit import ArgumentsError, ToolError, telemetry
from pypit.pool import Parameter, open_pool
from tests.pool.conftest import adapter, options

pytestmark = pytest.mark.anyio

CALL_EVENTS = [
    ("pypit", "pool", "queue", "enqueued"),
    ("pypit", "rpc", "call", "start"),
    ("pypit", "rpc", "call", "exception"),
    ("pypit", "rpc", "stream", "opened"),
    ("pypit", "python", "call", "start"),
]
"""What a call that was sent would emit."""


async def test_tools_report_their_parameters_and_kinds() -> None:
    """Each tool comes with its parameters as the method declares them (without self),
    whether it is async and whether it streams, and its signature as text."""
    async with open_pool(adapter("Signatures"), **options()) as pool:
        tools = pool.tools()
    async with open_pool(adapter(), **options()) as pool:
        echo_tools = pool.tools()

    predict = tools["predict"]
    assert predict.parameters == (
        Parameter("x", "positional-or-keyword", None, "float"),
        Parameter("scale", "keyword-only", "1.0", "float"),
    )
    assert predict.signature() == "predict(x: float, *, scale: float = 1.0)"
    assert (predict.description, predict.stream, predict.is_async) == ("Scale x", False, False)
    assert tools["gather"].signature() == "gather(value: Any, /, *rest: Any, **options: Any)"
    assert [p.kind for p in tools["gather"].parameters or ()] == [
        "positional-only",
        "var-positional",
        "var-keyword",
    ]
    undocumented = tools["undocumented"]
    assert undocumented.description == "Return the flag (the description is this docstring)."
    count, async_count = echo_tools["count"], echo_tools["async_count"]
    assert (count.stream, count.is_async) == (True, False)
    assert (async_count.stream, async_count.is_async) == (True, True)
    assert count.signature() == "count(n: int, delay: float = 0.0)"
    assert echo_tools["add"].is_async


async def test_arguments_that_do_not_fit_are_refused_before_anything_is_sent() -> None:
    """An unknown keyword, a missing argument, too many: ArgumentsError (a TypeError) in
    the caller, naming the tool, the problem and the signature; the call is not counted
    and emits nothing, and the pool serves on."""
    async with open_pool(adapter("Signatures"), **options()) as pool:
        with telemetry.capture(*CALL_EVENTS) as captured:
            with pytest.raises(ArgumentsError) as unknown:
                await pool.execute("predict", {"x": 1, "y": 2})
            with pytest.raises(ArgumentsError, match=r"missing a required argument: 'x'"):
                await pool.execute("predict", {"scale": 2})
            with pytest.raises(TypeError, match=r"predict\(\) missing a required argument"):
                await pool.execute("predict")
            # **options takes any keyword but "self", which the method binds.
            with pytest.raises(ArgumentsError, match="multiple values for argument 'self'"):
                await pool.execute("gather", {"value": 1, "self": 2})
            assert pool.status().requests == 0
            assert captured.events == []
            assert await pool.execute("predict", {"x": 2, "scale": 3}) == 6
            assert await pool.execute("predict", 2) == 2
        assert pool.status().requests == 2

    assert str(unknown.value) == (
        "predict() got an unexpected keyword argument 'y'; predict(x: float, *, scale: float = 1.0)"
    )


async def test_each_input_of_a_map_is_checked_before_its_frame_is_sent() -> None:
    """A map checks every input against the signature, not a frame's list of inputs as one
    argument. An input that does not fit fails alone, before anything of it is sent: with
    return_exceptions its ArgumentsError is its result, in its place; without, the results
    before it come first, then it is raised."""
    async with open_pool(adapter("Signatures"), **options()) as pool:
        inputs: list[Any] = [{"x": 1}, {"x": 2, "scale": 3}, {"y": 2}, {"x": 3}]
        async with pool.map("predict", inputs, return_exceptions=True) as results:
            outcomes = [result async for result in results]
        assert outcomes[:2] == [1, 6]
        assert outcomes[3] == 3
        assert isinstance(outcomes[2], ArgumentsError)
        assert str(outcomes[2]).startswith("inputs[2]: predict() missing a required argument")

        taken: list[Any] = []

        async def take_all() -> None:
            async with pool.map("predict", inputs) as results:
                async for result in results:
                    taken.append(result)

        with pytest.raises(ArgumentsError, match=r"inputs\[2\]: predict\(\) missing"):
            await take_all()
        assert taken == [1, 6]
        assert await pool.execute("predict", 4) == 4


async def test_the_arguments_of_a_stream_are_checked_when_its_block_starts() -> None:
    """A stream whose arguments do not fit raises ArgumentsError as its block starts, and
    nothing is sent."""
    async with open_pool(adapter(), **options()) as pool:
        with telemetry.capture(*CALL_EVENTS) as captured:
            with pytest.raises(ArgumentsError, match=r"count\(\) missing a required argument"):
                async with pool.stream("count", {"m": 3}):
                    pass
        assert captured.events == []
        assert pool.status().requests == 0
        async with pool.stream("count", {"n": 2}) as chunks:
            assert [chunk async for chunk in chunks] == [1, 2]


async def test_calls_that_fit_reach_the_tool_as_before() -> None:
    """Positional-only, *args and **kwargs: a call that binds is sent as it was."""
    async with open_pool(adapter("Signatures"), **options()) as pool:
        assert await pool.execute("gather", [1, 2]) == [[1, 2], [], {}]
        with pytest.raises(ArgumentsError, match="positional only"):
            await pool.execute("gather", {"value": 1})
        assert await pool.execute("undocumented") is False


async def test_a_tool_whose_signature_cannot_be_read_is_called_unchecked() -> None:
    """A builtin's signature cannot be read: its parameters are unknown, and a call that
    does not fit fails in the worker, as a ToolError."""
    async with open_pool(adapter("Signatures"), **options()) as pool:
        largest = pool.tools()["largest"]
        assert (largest.parameters, largest.signature()) == (None, "largest(...)")
        assert await pool.execute("largest", [3, 1, 2]) == 3
        with pytest.raises(ToolError) as info:
            await pool.execute("largest", {"nope": 1})
        assert pool.status().requests == 2

    assert info.value.remote_type == "TypeError"


async def test_parameters_no_function_could_have_are_logged_and_not_used() -> None:
    """A worker reporting a signature that cannot be (a keyword-only parameter before a
    positional-only one) gets a warning; its tool is called unchecked, and the others are
    checked as usual."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Forged"), **options()) as pool:
            forged = pool.tools()["forged"]
            assert forged.signature() == "forged(...)"
            assert await pool.execute("forged", {"c": 1}) == {"c": 1}
            with pytest.raises(ArgumentsError):
                await pool.execute("predict", {"c": 1})

    (warning,) = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["tool"] == "forged"
    assert "wrong parameter order" in warning["error"]
    assert "calls of the tool are not checked" in warning["event"]

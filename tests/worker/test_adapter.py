"""``@tool`` and the discovery of an adapter's tools."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pypit.worker import Adapter, tool
from pypit.worker._adapter import discover_tools

NAME = "@tool's name must be a non-empty str, or None for the method's name, not "


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"name": ""}, ValueError, NAME + "''"),
        ({"name": 1}, TypeError, NAME + "1"),
        ({"name": b"predict"}, TypeError, NAME + "b'predict'"),
        ({"description": None}, TypeError, "@tool's description must be a str, not None"),
        ({"description": 3}, TypeError, "@tool's description must be a str, not 3"),
    ],
)
def test_a_name_or_description_tool_would_not_use_is_refused_where_it_is_written(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """An empty name (the method's name was kept, silently) or one that is not a str, and a
    description that is not a str, raise when the decorator is written, before any method
    is marked."""
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        tool(**options)


def test_a_tool_is_named_by_its_method_or_by_name() -> None:
    """The method's name by default, ``name`` when given (a subclass of str is taken as the
    str it holds); the description defaults to the docstring."""

    class Label(str):
        """A subclass of str."""

    class Model(Adapter):
        @tool
        def predict(self) -> int:
            """Predict."""
            return 1

        @tool(name=Label("infer"), description="Infer")
        def run(self) -> int:
            return 2

    tools = discover_tools(Model())
    assert sorted(tools) == ["infer", "predict"]
    assert all(type(name) is str for name in tools)
    assert (tools["predict"].description, tools["infer"].description) == ("Predict.", "Infer")
    assert tools["infer"].function() == 2


def test_tool_above_or_below_staticmethod_is_found() -> None:
    """@tool written above @staticmethod (on the descriptor) or below it (on the function):
    both are tools, callable through the instance (the first was silently left out)."""

    class Model(Adapter):
        @tool(description="above")
        @staticmethod
        def above(x: int) -> int:
            return x + 1

        @staticmethod
        @tool(description="below")
        def below(x: int) -> int:
            return x + 2

    tools = discover_tools(Model())
    assert sorted(tools) == ["above", "below"]
    assert tools["above"].function(1) == 2
    assert tools["below"].function(1) == 3
    assert tools["above"].description == "above"

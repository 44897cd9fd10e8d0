"""The tools of a pool as the workers reported them: :class:`ToolDescription` and
:class:`Parameter`, what ``pool.tools()`` returns."""

from __future__ import annotations

import attrs

from pypit import _wire
from pypit._signature import render
from pypit._wire import ParameterKind


@attrs.frozen
class Parameter:
    """A parameter of a tool, as the worker read it from the method's signature.

    ``kind`` is ``"positional-only"``, ``"positional-or-keyword"``, ``"var-positional"``
    (``*args``), ``"keyword-only"`` or ``"var-keyword"`` (``**kwargs``). ``default`` is the
    ``repr`` of the default value (cut at 200 characters), None when there is none;
    ``annotation`` is the annotation as text, None when there is none. Text rather than
    values: the parent never imports the adapter, nor the types its methods name.
    """

    name: str
    kind: ParameterKind
    default: str | None = None
    annotation: str | None = None


@attrs.frozen
class ToolDescription:
    """A tool the workers serve, as they reported it: its name, description, whether it
    streams (a generator) and whether it is ``async``, and its parameters, without
    ``self`` (None when the worker could not read its signature, as for some builtins and C
    callables: its calls are not checked)."""

    name: str
    description: str
    stream: bool
    parameters: tuple[Parameter, ...] | None = None
    is_async: bool = False

    def signature(self) -> str:
        """The tool's signature as Python writes it, without ``self``:
        ``"predict(x: float, *, scale: float = 1.0)"``; ``"predict(...)"`` when it is not
        known."""
        return render(self.name, self.parameters)


def from_wire(tool: _wire.Tool) -> ToolDescription:
    """The description of a tool a worker reported."""
    parameters = None
    if tool.parameters is not None:
        parameters = tuple(
            Parameter(p.name, p.kind, p.default, p.annotation) for p in tool.parameters
        )
    return ToolDescription(tool.name, tool.description, tool.stream, parameters, tool.is_async)

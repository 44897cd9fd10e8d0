"""``Adapter`` and ``@tool``: what a worker serves."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final, NamedTuple, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

_MARK: Final = "__pypit_tool__"

session_id_var: ContextVar[str | None] = ContextVar("pypit_session_id", default=None)
"""The session id of the call being served, set by the worker around each call."""


def get_session_id() -> str | None:
    """The ``session_id`` the call being served was made with (None without one).

    Set around each call, as its correlation id is: threads a tool starts with a copied
    context (``contextvars.copy_context().run``) see it too. Key per-session state on it::

        @tool(description="Chat")
        def chat(self, message: str) -> str:
            history = self.histories.setdefault(get_session_id(), [])
            ...

    The pool sends a session's calls to the worker that keeps its state while that worker
    lives (see ``affinity``); a call run elsewhere, or after the worker died, finds none.
    """
    return session_id_var.get()


class ToolInfo(NamedTuple):
    """What ``@tool`` recorded about a method."""

    name: str | None
    description: str


class Adapter:
    """Base class of the objects a worker serves.

    A worker imports the adapter class once, instantiates it without
    arguments, calls :meth:`setup` and then serves every method marked with
    :func:`tool`. Keep expensive state (a loaded model) on ``self`` in
    ``setup``; :meth:`teardown` runs when the worker stops cleanly.
    """

    def setup(self) -> None:
        """Prepare the adapter before the first call (may also be ``async def``)."""

    def teardown(self) -> None:
        """Release what :meth:`setup` took (may also be ``async def``)."""


@overload
def tool(function: F, /) -> F: ...


@overload
def tool(*, description: str = "", name: str | None = None) -> Callable[[F], F]: ...


def tool(
    function: F | None = None, /, *, description: str = "", name: str | None = None
) -> F | Callable[[F], F]:
    """Mark an adapter method as a tool the pool can call.

    The method may be a plain function, ``async def``, a generator or an async
    generator; generators are streams, called with ``pool.stream()``. The
    tool's name is the method's name unless ``name`` (a non-empty str) is given. Arguments
    arrive as keyword arguments when the caller passes a dict. A ``name`` or a
    ``description`` that is not a str, or an empty ``name``, raises where the method is
    decorated.
    """
    if name is not None:
        expected = "a non-empty str, or None for the method's name"
        if not isinstance(name, str):
            raise TypeError(f"@tool's name must be {expected}, not {name!r}")
        if not name:
            raise ValueError(f"@tool's name must be {expected}, not {name!r}")
        name = str.__str__(name)
    if not isinstance(description, str):
        raise TypeError(f"@tool's description must be a str, not {description!r}")

    def mark(method: F) -> F:
        if not callable(method):
            raise TypeError(f"@tool marks a method, not {method!r}")
        setattr(method, _MARK, ToolInfo(name, description or (inspect.getdoc(method) or "")))
        return method

    if function is not None:
        return mark(function)
    return mark


class ToolSpec(NamedTuple):
    """A bound tool of an adapter instance."""

    name: str
    description: str
    function: Callable[..., Any]
    is_async: bool
    is_stream: bool


def discover_tools(adapter: object) -> dict[str, ToolSpec]:
    """The tools of an adapter instance, by name."""
    tools: dict[str, ToolSpec] = {}
    for attribute in dir(type(adapter)):
        raw = inspect.getattr_static(type(adapter), attribute, None)
        # @tool may be written above @staticmethod or below it: the mark is then on the
        # descriptor or on its function.
        info = getattr(raw, _MARK, None)
        if isinstance(raw, staticmethod | classmethod):
            raw = raw.__func__
            info = info or getattr(raw, _MARK, None)
        if not isinstance(info, ToolInfo):
            continue
        bound = getattr(adapter, attribute)
        name = info.name or attribute
        if name in tools:
            raise TypeError(f"two tools are named {name!r}")
        tools[name] = ToolSpec(
            name=name,
            description=info.description,
            function=bound,
            is_async=inspect.iscoroutinefunction(raw) or inspect.isasyncgenfunction(raw),
            is_stream=inspect.isgeneratorfunction(raw) or inspect.isasyncgenfunction(raw),
        )
    return tools


def load_adapter(spec: str) -> type[Any]:
    """Import ``"package.module:Class"`` and return the class, a subclass of
    :class:`Adapter`."""
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"an adapter is named 'package.module:Class', not {spec!r}")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not isinstance(target, type):
        raise TypeError(f"adapter {spec} is not a class but {target!r}")
    if not issubclass(target, Adapter):
        raise TypeError(
            f"adapter {spec} is not a subclass of pypit.worker.Adapter: declare it as "
            f"`class {target.__name__}(Adapter)`"
        )
    return target

"""Tool signatures: read from the adapter's methods in the worker, checked in the parent.

The parent never imports the adapter, so the worker reads each tool's signature
(:func:`describe`) and sends it as text in its ``Ready``: names, kinds, the ``repr`` of
defaults, annotations as written. The pool rebuilds an ``inspect.Signature`` from that text
once per tool (:class:`ArgumentCheck`) and binds each call's ``args`` to it before anything
is sent, mapped as the worker maps them (:func:`arguments`). What is checked is the shape of
the call -- names, count, required parameters -- never the types: an annotation is only
text here, and checking values against it would cost a walk of every argument.

Workers import this module as they start, so it defines no attrs class (a millisecond
each): the pool's records of tools are in ``pypit.pool._tools``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from pypit import _wire
from pypit._errors import ArgumentsError
from pypit._wire import ParameterKind

if TYPE_CHECKING:
    from typing import Protocol

    class ParameterLike(Protocol):
        """A parameter as text: the wire's, or the pool's public record."""

        @property
        def name(self) -> str: ...
        @property
        def kind(self) -> ParameterKind: ...
        @property
        def default(self) -> str | None: ...
        @property
        def annotation(self) -> str | None: ...


_KIND_NAMES: Final[dict[Any, ParameterKind]] = {
    inspect.Parameter.POSITIONAL_ONLY: "positional-only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional-or-keyword",
    inspect.Parameter.VAR_POSITIONAL: "var-positional",
    inspect.Parameter.KEYWORD_ONLY: "keyword-only",
    inspect.Parameter.VAR_KEYWORD: "var-keyword",
}
_KINDS: Final = {name: kind for kind, name in _KIND_NAMES.items()}
_BY_KEYWORD: Final = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_STR: Final = frozenset({str})


def arguments(args: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments a call's ``args`` become: a dict is keyword
    arguments, None no argument, any other value one positional argument. The worker calls
    the tool with them, and the parent binds them the same way."""
    if args is None:
        return (), {}
    if isinstance(args, dict):
        return (), args
    return (args,), {}


# -- in the worker ------------------------------------------------------------------------


def describe(function: Any) -> list[_wire.Parameter] | None:
    """The parameters of a tool (a bound method: without ``self``), or None when its
    signature cannot be read (some builtins and C callables): the pool then calls it
    unchecked. Never raises: a signature that cannot be read must not fail the start."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except Exception:
        return None
    empty = inspect.Parameter.empty
    return [
        _wire.Parameter(
            p.name,
            _KIND_NAMES[p.kind],
            None if p.default is empty else _wire._show(p.default),
            None if p.annotation is empty else _annotation(p.annotation),
        )
        for p in parameters
    ]


def bound_name(function: Any) -> str | None:
    """The name of the parameter a bound method binds (``self``, ``cls``), or None: a call
    with a keyword argument of that name fails even where the tool takes ``**kwargs``.
    Never raises."""
    if not inspect.ismethod(function):
        return None
    try:
        return next(iter(inspect.signature(function.__func__).parameters), None)
    except Exception:
        return None


def _annotation(annotation: Any) -> str:
    """An annotation as written: the string itself under ``from __future__ import
    annotations``, else as ``inspect`` shows it."""
    if isinstance(annotation, str):
        return annotation
    try:
        return inspect.formatannotation(annotation)
    except Exception:  # an annotation whose repr raises
        return _wire._show(annotation)


# -- in the parent ------------------------------------------------------------------------


def render(name: str, parameters: Iterable[ParameterLike] | None) -> str:
    """``name`` and its parameters as Python writes a signature:
    ``"predict(x: float, *, scale: float = 1.0)"``; ``"predict(...)"`` when they are not
    known, or are not a signature any function could have."""
    if parameters is not None:
        try:
            return name + str(rebuild(parameters))
        except ValueError:
            pass
    return f"{name}(...)"


class _Shown:
    """A default or an annotation in a rebuilt signature: its text, shown as it is."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def rebuild(parameters: Iterable[ParameterLike]) -> inspect.Signature:
    """An ``inspect.Signature`` with these parameters; ``ValueError`` for a list no
    function could have (a name that is not an identifier, two of a name, a kind out of
    order), which only a broken worker sends."""
    empty = inspect.Parameter.empty
    rebuilt = []
    for p in parameters:
        kind = _KINDS.get(p.kind)
        if kind is None:
            raise ValueError(f"parameter {p.name!r} has an unknown kind {p.kind!r}")
        rebuilt.append(
            inspect.Parameter(
                p.name,
                kind,
                default=empty if p.default is None else _Shown(p.default),
                annotation=empty if p.annotation is None else _Shown(p.annotation),
            )
        )
    return inspect.Signature(rebuilt)


def _binds(signature: inspect.Signature, positional: tuple[Any, ...]) -> bool:
    try:
        signature.bind(*positional)
    except TypeError:
        return False
    return True


class ArgumentCheck:
    """Binds a call's ``args`` to one tool's signature, in the parent, before the call is
    sent; built once per tool when the workers report their tools.

    The usual calls take a few set operations, decided here once: whether the tool takes
    no argument, whether it takes one positional argument, and which keywords it takes and
    requires. Anything else is bound by ``inspect.Signature.bind`` (a few microseconds),
    which also words the error.
    """

    __slots__ = (
        "_bound",
        "_keywords",
        "_name",
        "_no_argument",
        "_one_positional",
        "_required",
        "_signature",
        "_takes_dict",
        "_text",
        "_var_keyword",
    )

    def __init__(
        self, name: str, parameters: Iterable[ParameterLike], bound: str | None = None
    ) -> None:
        """``bound``: the parameter the tool's method binds (see :func:`bound_name`).
        Raises ``ValueError`` for parameters no function could have (see
        :func:`rebuild`)."""
        self._bound = bound
        signature = rebuild(parameters)
        rebuilt = signature.parameters.values()
        self._name = name
        self._signature = signature
        self._text = name + str(signature)
        self._keywords = frozenset(p.name for p in rebuilt if p.kind in _BY_KEYWORD)
        self._required = frozenset(
            p.name for p in rebuilt if p.kind in _BY_KEYWORD and p.default is p.empty
        )
        # A dict never binds a positional-only parameter: one without a default is missing.
        self._takes_dict = not any(
            p.kind is p.POSITIONAL_ONLY and p.default is p.empty for p in rebuilt
        )
        self._var_keyword = any(p.kind is p.VAR_KEYWORD for p in rebuilt)
        self._no_argument = _binds(signature, ())
        self._one_positional = _binds(signature, (None,))

    def check(self, args: Any) -> None:
        """Return if ``args`` bind to the tool's signature; else raise
        :class:`~pypit.ArgumentsError` naming the tool, the problem and the signature."""
        if args is None:
            if self._no_argument:
                return
        elif type(args) is dict:
            # A set of the names: comparing sets costs a fraction of comparing a dict's keys.
            names = set(args)
            if (
                self._takes_dict
                and self._required <= names
                and (
                    names <= self._keywords
                    or (
                        self._var_keyword
                        and _STR.issuperset(map(type, names))
                        and self._bound not in names
                    )
                )
            ):
                return
        elif not isinstance(args, dict) and self._one_positional:
            return
        self._bind(args)

    def check_many(self, inputs: list[Any], kinds: set[type]) -> None:
        """:meth:`check` each of a map's inputs, whose types are ``kinds``. Inputs of one
        kind are checked once per kind, not once per input: for dicts, each distinct tuple
        of keys (collected at C speed) is checked once. Inputs of mixed kinds are checked
        one by one."""
        if len(kinds) == 1:
            (kind,) = kinds
            if kind is dict:
                for keys in set(map(tuple, inputs)):
                    self.check(dict.fromkeys(keys))
                return
            if kind is not type(None) and not issubclass(kind, dict):
                self.check(inputs[0])
                return
        for args in inputs:
            self.check(args)

    def _bind(self, args: Any) -> None:
        """Bind as a call would, and word the error."""
        positional, keywords = arguments(args)
        if self._bound is not None and self._bound in keywords:
            raise ArgumentsError(
                f"{self._name}() got multiple values for argument {self._bound!r} (the "
                f"tool's method binds it); {self._text}"
            )
        try:
            self._signature.bind(*positional, **keywords)
        except TypeError as exc:
            hint = ""
            if positional:
                hint = (
                    f"; args of type {type(args).__name__} are one positional argument "
                    "(a dict is keyword arguments)"
                )
            raise ArgumentsError(f"{self._name}() {exc}; {self._text}{hint}") from None

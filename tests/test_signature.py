"""Tool signatures: what a worker reads of a method, how the pool shows it, and the check of
a call's arguments, which refuses exactly the calls that would not bind in the worker."""

from __future__ import annotations

import functools
import inspect
import pickle
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pypit import ArgumentsError, _wire
from pypit._signature import ArgumentCheck, arguments, bound_name, describe, render
from pypit.pool import Parameter, ToolDescription
from pypit.pool._tools import from_wire


def every_kind(a, b=2, /, c: int = 3, *args, d, e=(1, "x"), **kw):  # type: ignore[no-untyped-def]
    """A function with a parameter of each kind."""


def predict(x: float, *, scale: float = 1.0) -> dict[str, float]:
    return {"y": x * scale}


def unannotated(path, mode="r"):  # type: ignore[no-untyped-def]
    """Parameters without annotations."""


def defined(source: str) -> Any:
    """The function ``f`` that ``source`` defines, in a module without the annotations
    import: its annotations are objects, not strings."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<defined>", "exec", dont_inherit=True), namespace)
    return namespace["f"]


def check(function: Any) -> ArgumentCheck:
    parameters = describe(function)
    assert parameters is not None
    return ArgumentCheck(function.__name__, parameters)


def test_each_kind_default_and_annotation_is_read() -> None:
    """Names, kinds, defaults as their repr and annotations as written, in order."""
    assert describe(every_kind) == [
        _wire.Parameter("a", "positional-only"),
        _wire.Parameter("b", "positional-only", "2"),
        _wire.Parameter("c", "positional-or-keyword", "3", "int"),
        _wire.Parameter("args", "var-positional"),
        _wire.Parameter("d", "keyword-only"),
        _wire.Parameter("e", "keyword-only", "(1, 'x')"),
        _wire.Parameter("kw", "var-keyword"),
    ]


def test_a_bound_method_is_read_without_self() -> None:
    """A tool is read as the worker holds it: bound, so ``self`` is not a parameter."""

    class Model:
        def predict(self, x: float) -> float:
            return x

    assert describe(Model().predict) == [
        _wire.Parameter("x", "positional-or-keyword", None, "float")
    ]


@pytest.mark.parametrize(
    ("annotation", "text"),
    [
        ("int", "int"),
        ("dict[str, list[int]]", "dict[str, list[int]]"),
        ("typing.Optional[int]", "Optional[int]"),
        ("collections.OrderedDict", "collections.OrderedDict"),
        ("'Forward'", "Forward"),
    ],
)
def test_an_annotation_object_is_shown_as_inspect_shows_it(annotation: str, text: str) -> None:
    """Annotations evaluated at definition are written as ``inspect`` writes them."""
    function = defined(f"import collections, typing\ndef f(x: {annotation}): pass\n")
    (parameter,) = describe(function) or []
    assert parameter.annotation == text


def test_a_default_is_its_repr_cut_short_and_never_raises() -> None:
    """A long default is cut to a couple of hundred characters; one whose repr raises is
    shown as such, and the signature is read all the same."""

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    def f(text: str = "x" * 10_000, thing: object = Unprintable()) -> None: ...

    text, thing = describe(f) or []
    assert text.default is not None
    assert text.default.startswith("'xxx")
    assert len(text.default) < 250
    assert thing.default is not None
    assert "Unprintable" in thing.default


@pytest.mark.parametrize(
    "function", [functools.partial(max), functools.partial(getattr, 1), max, iter]
)
def test_a_signature_that_cannot_be_read_is_none(function: Any) -> None:
    """Some builtins and C callables have no signature to read: None, not an error."""
    assert describe(function) is None


@pytest.mark.parametrize(
    "source",
    [
        "def f(a, b=2, /, c: int = 3, *args: str, d, e: float = 1.5, **kw: bytes): pass",
        "def f(*, only: int | None = None): pass",
        "def f(x: dict[str, int] = {'a': 1}, /): pass",
        "def f(*args, **kwargs): pass",
        "def f(): pass",
    ],
)
def test_the_signature_is_shown_as_python_shows_it(source: str) -> None:
    """Rebuilt from what the worker sent, the signature reads as ``inspect`` writes the
    method's own."""
    function = defined(source)
    assert render("f", describe(function)) == "f" + str(inspect.signature(function))


def test_a_string_annotation_is_shown_without_quotes() -> None:
    """Under ``from __future__ import annotations`` the text is shown as written."""
    assert render("predict", describe(predict)) == "predict(x: float, *, scale: float = 1.0)"
    assert render("unannotated", describe(unannotated)) == "unannotated(path, mode='r')"


def test_an_unknown_signature_is_shown_as_such() -> None:
    """No parameters, or parameters no function could have: ``name(...)``."""
    assert render("largest", None) == "largest(...)"
    wrong_order = [
        _wire.Parameter("a", "keyword-only"),
        _wire.Parameter("b", "positional-only"),
    ]
    assert render("forged", wrong_order) == "forged(...)"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ([("a", "keyword-only"), ("b", "positional-only")], "wrong parameter order"),
        ([("a", "positional-or-keyword"), ("a", "keyword-only")], "duplicate parameter name"),
        ([("not a name", "positional-or-keyword")], "not a valid parameter name"),
        ([("class", "positional-or-keyword")], "not a valid parameter name"),
        ([("a", "sideways")], "unknown kind 'sideways'"),
    ],
)
def test_parameters_no_function_could_have_are_refused(
    parameters: list[tuple[str, Any]], message: str
) -> None:
    """Only a broken worker sends these: no check is built from them."""
    with pytest.raises(ValueError, match=message):
        ArgumentCheck("forged", [_wire.Parameter(name, kind) for name, kind in parameters])


def test_args_map_to_arguments_as_the_worker_calls_the_tool() -> None:
    """A dict is keyword arguments, None no argument, anything else one positional."""
    assert arguments(None) == ((), {})
    assert arguments({"x": 1}) == ((), {"x": 1})
    assert arguments([1, 2]) == (([1, 2],), {})
    assert arguments(3) == ((3,), {})


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"x": 1, "y": 2}, "predict() got an unexpected keyword argument 'y'"),
        ({"scale": 2}, "predict() missing a required argument: 'x'"),
        (None, "predict() missing a required argument: 'x'"),
        ({1: 2}, "predict() keywords must be strings"),
    ],
)
def test_a_refusal_names_the_tool_the_problem_and_the_signature(args: Any, problem: str) -> None:
    """The message is the problem as Python words it, then the signature."""
    with pytest.raises(ArgumentsError) as info:
        check(predict).check(args)
    assert str(info.value) == f"{problem}; predict(x: float, *, scale: float = 1.0)"
    assert isinstance(info.value, TypeError)


def test_a_refused_value_that_is_not_a_dict_says_it_is_one_positional_argument() -> None:
    """A list is one argument, not several: the message says how args map."""

    def add(a: float, b: float) -> float:
        return a + b

    with pytest.raises(ArgumentsError) as info:
        check(add).check([1, 2])
    assert str(info.value) == (
        "add() missing a required argument: 'b'; add(a: float, b: float); args of type list "
        "are one positional argument (a dict is keyword arguments)"
    )
    with pytest.raises(ArgumentsError, match=r"too many positional arguments; f\(\); args of"):
        check(defined("def f(): pass")).check(1)


def test_positional_only_parameters_take_no_keyword() -> None:
    """A dict cannot fill a positional-only parameter: as in a call, it is refused, unless
    ``**kwargs`` takes the name."""

    def first(value: Any, /) -> Any:
        return value

    with pytest.raises(ArgumentsError, match="positional only"):
        check(first).check({"value": 1})
    check(first).check(1)
    check(defined("def f(value=0, /, **rest): pass")).check({"value": 1})


PARAMETER_NAMES = ["a", "b", "c", "d"]
POSITIONAL_ONLY, EITHER, KEYWORD_ONLY = "positional-only", "positional-or-keyword", "keyword-only"


@st.composite
def functions(draw: st.DrawFn) -> Any:
    """A function of any legal shape over a few names, whose body does nothing: calling it
    fails only if the arguments do not bind."""
    names = draw(st.lists(st.sampled_from(PARAMETER_NAMES), unique=True, max_size=4))
    kinds = sorted(
        draw(st.lists(st.sampled_from([0, 1, 2]), min_size=len(names), max_size=len(names)))
    )
    positional = [n for n, k in zip(names, kinds, strict=True) if k < 2]
    first_default = draw(st.integers(0, len(positional)))
    parts: list[str] = []
    for index, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        if index and kinds[index - 1] == 0 and kind != 0:
            parts.append("/")
        if kind == 2 and not any(p.startswith("*") for p in parts):
            parts.append("*args" if draw(st.booleans()) else "*")
        has_default = index >= first_default if kind < 2 else draw(st.booleans())
        parts.append(f"{name}=0" if has_default else name)
    if kinds and kinds[-1] == 0:
        parts.append("/")
    if not any(p.startswith("*") for p in parts) and draw(st.booleans()):
        parts.append("*args")
    if draw(st.booleans()):
        parts.append("**kwargs")
    return defined(f"def f({', '.join(parts)}): return None\n")


ARGS = st.one_of(
    st.none(),
    st.integers(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(
        st.sampled_from([*PARAMETER_NAMES, "z", "args", "kwargs"]) | st.integers(0, 1),
        st.integers(),
        max_size=4,
    ),
)


@settings(max_examples=500)  # the shapes are many, and each example costs microseconds
@given(functions(), ARGS)
def test_a_call_is_refused_exactly_when_it_would_not_bind(function: Any, args: Any) -> None:
    """Whatever the signature and the arguments, the check accepts what the call accepts
    and refuses what it refuses."""
    positional, keywords = arguments(args)
    try:
        function(*positional, **keywords)
    except TypeError:
        with pytest.raises(ArgumentsError):
            check(function).check(args)
    else:
        check(function).check(args)


def binds(function: Any, args: Any) -> bool:
    positional, keywords = arguments(args)
    try:
        function(*positional, **keywords)
    except TypeError:
        return False
    return True


@settings(max_examples=200)  # as above: many shapes, microseconds each
@given(functions(), st.lists(ARGS, max_size=6), st.booleans())
def test_a_map_s_inputs_are_refused_exactly_when_one_would_not_bind(
    function: Any, inputs: list[Any], one_kind: bool
) -> None:
    """A map's inputs, checked together (once per kind, once per tuple of keys), are
    refused exactly when one of them would be refused alone; with ``one_kind``, inputs of
    one type, the case checked once per kind."""
    if one_kind and inputs:
        inputs = [args for args in inputs if type(args) is type(inputs[0])]
    many = check(function)
    if all(binds(function, args) for args in inputs):
        many.check_many(inputs, set(map(type, inputs)))
    else:
        with pytest.raises(ArgumentsError):
            many.check_many(inputs, set(map(type, inputs)))


def test_dict_inputs_with_keys_in_another_order_are_each_checked() -> None:
    """Dicts with the same keys in another order, or one key more, are other tuples of
    keys: each is checked."""
    many = check(predict)
    inputs: list[Any] = [{"x": 1.0}, {"x": 2.0, "scale": 3.0}, {"scale": 3.0, "x": 2.0}]
    many.check_many(inputs, {dict})
    with pytest.raises(ArgumentsError, match="unexpected keyword argument 'y'"):
        many.check_many([*inputs, {"x": 1.0, "y": 2}], {dict})


class Methods:
    def takes_any(self, **options: Any) -> None:
        """A method that takes any keyword argument but the name it binds."""

    @classmethod
    def of_class(cls, **options: Any) -> None:
        """A class method: it binds ``cls``."""

    @staticmethod
    def plain(**options: Any) -> None:
        """A static method binds nothing: ``self`` is a keyword like any other."""


@pytest.mark.parametrize(
    ("method", "bound"),
    [(Methods().takes_any, "self"), (Methods.of_class, "cls"), (Methods.plain, None)],
)
def test_the_name_a_method_binds_is_refused_as_a_keyword(method: Any, bound: str | None) -> None:
    """A tool that takes ``**kwargs`` takes every keyword but the one its method binds,
    which the call would pass twice: refused as the call would refuse it."""
    parameters = describe(method)
    assert parameters is not None
    checked = ArgumentCheck("tool", parameters, bound_name(method))
    assert bound_name(method) == bound
    checked.check({"x": 1})
    checked.check_many([{"x": 1}, {"y": 2}], {dict})
    if bound is None:
        checked.check({"self": 1})
        method(self=1)
        return
    with pytest.raises(TypeError):
        method(**{bound: 1})
    with pytest.raises(ArgumentsError, match=f"multiple values for argument '{bound}'"):
        checked.check({bound: 1, "x": 2})
    with pytest.raises(ArgumentsError, match=f"multiple values for argument '{bound}'"):
        checked.check_many([{"x": 1}, {bound: 1}], {dict})


def test_a_tool_description_reads_its_parameters_from_the_wire() -> None:
    """A reported tool becomes a frozen description with typed parameters."""
    reported = _wire.Tool("predict", "Scale x", False, describe(predict), True)
    tool = from_wire(reported)
    assert tool == ToolDescription(
        "predict",
        "Scale x",
        False,
        (
            Parameter("x", "positional-or-keyword", None, "float"),
            Parameter("scale", "keyword-only", "1.0", "float"),
        ),
        is_async=True,
    )
    assert tool.signature() == "predict(x: float, *, scale: float = 1.0)"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        tool.name = "other"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(tool)) == tool


def test_a_tool_description_made_as_before_still_works() -> None:
    """The three fields it had are still enough: its parameters are then unknown."""
    tool = ToolDescription("echo", "Return the arguments", False)
    assert (tool.parameters, tool.is_async) == (None, False)
    assert tool.signature() == "echo(...)"

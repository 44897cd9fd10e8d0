"""What travels over the wire: every kind of value the table of docs/configuration.md names,
both ways, and the table itself."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pypit import ProtocolError, SerializationError, _wire
from tests.adapters import nested
from tests.values import WIRE_VALUES, typed

ROOT = Path(__file__).parents[1]

SAME = {"dict", "list", "str", "bytes", "int", "float", "bool", "None", "nested"}
SAME |= {"scalar keys", "tuple keys"}
"""Kinds that arrive as themselves: the same types, the same values."""

CONVERTED: dict[str, Any] = {
    "tuple": [1, "two"],
    "tuples within": {"pairs": [[1, 2], [3, [4, 5]]]},
    "bytearray": b"ab",
    "memoryview": b"ab",
}
"""Kinds that arrive as another type, as the table says, and what arrives."""

REFUSED: dict[str, str] = {
    "set": "sorted(value)",
    "frozenset": "sorted(value)",
    "set within": "sorted(value)",
    "datetime": "value.isoformat()",
    "aware datetime": "value.isoformat()",
    "date": "value.isoformat()",
    "time": "value.isoformat()",
    "timedelta": "value.total_seconds()",
    "Decimal": "str(value)",
    "UUID": "str(value)",
    "Path": "str(value)",
    "dataclass": "dataclasses.asdict(value)",
    "attrs class": "attrs.asdict(value)",
    "Enum": "value.value",
    "IntEnum": "value.value",
    "StrEnum": "value.value",
    "named tuple": "value._asdict()",
    "OrderedDict": "dict(value)",
    "Counter": "dict(value)",
    "str subclass": "str(value)",
    "int subclass": "int(value)",
    "float subclass": "float(value)",
    "numpy-like": "value.tolist()",
    "Fraction": "convert it first",
    "complex": "convert it first",
    "object": "convert it first",
    "int over 64 bits": "2**64 - 1",
    "frozenset key": "a dict key must arrive as itself",
}
"""Kinds that are refused, and what the error says to do (or why)."""

TABLE_ROWS: dict[str, list[str]] = {
    "`dict`": ["dict", "nested", "scalar keys", "tuple keys"],
    "`list`": ["list"],
    "`str`": ["str"],
    "`bytes`": ["bytes"],
    "`int`": ["int"],
    "`float`": ["float"],
    "`bool`": ["bool"],
    "`None`": ["None"],
    "`tuple`": ["tuple", "tuples within"],
    "`bytearray`": ["bytearray"],
    "`memoryview`": ["memoryview"],
    "`set`": ["set", "set within"],
    "`frozenset`": ["frozenset"],
    "`datetime`": ["datetime", "aware datetime"],
    "`date`": ["date"],
    "`time`": ["time"],
    "`timedelta`": ["timedelta"],
    "`Decimal`": ["Decimal"],
    "`UUID`": ["UUID"],
    "`Path`": ["Path"],
    "dataclass": ["dataclass"],
    "attrs class": ["attrs class"],
    "`Enum`": ["Enum"],
    "`IntEnum`": ["IntEnum"],
    "`StrEnum`": ["StrEnum"],
    "named tuple": ["named tuple"],
    "subclass of a type above": [
        "OrderedDict",
        "Counter",
        "str subclass",
        "int subclass",
        "float subclass",
    ],
    "numpy array or scalar": ["numpy-like"],
    "anything else": ["Fraction", "complex", "object"],
}
"""Each name in the first column of the table, and the kinds that stand for it."""

BULLETS = {"int over 64 bits", "frozenset key"}
"""Kinds the notes under the table speak of."""


def what_travels() -> str:
    page = (ROOT / "docs" / "configuration.md").read_text()
    return page.split("## What travels\n")[1].split("\n## ")[0]


def table() -> dict[str, str]:
    """The table of What travels: each name of the first column, with its row's outcome."""
    rows: dict[str, str] = {}
    for line in what_travels().splitlines():
        if not line.startswith("| ") or line.startswith(("| sent", "|---")):
            continue
        sent, arrives = (cell.strip() for cell in line.strip("|").split(" | "))
        for name in re.sub(r" \(.*?\)", "", sent).split(", "):
            rows[name] = arrives
    return rows


def test_the_table_and_these_tests_name_the_same_kinds() -> None:
    """Every name of the table stands for kinds tested here, and every kind tested here is
    in the table or in the notes under it: neither can gain a type without the other."""
    assert set(table()) == set(TABLE_ROWS)
    in_table = {kind for kinds in TABLE_ROWS.values() for kind in kinds}
    assert in_table | BULLETS == set(WIRE_VALUES)
    assert SAME | set(CONVERTED) | set(REFUSED) == set(WIRE_VALUES)
    assert not SAME & set(CONVERTED)
    assert not (SAME | set(CONVERTED)) & set(REFUSED)


@pytest.mark.parametrize("name", sorted(TABLE_ROWS))
def test_each_row_says_what_its_kinds_do(name: str) -> None:
    """A row says "itself", the type its kinds arrive as, or "refused" with what the error
    tells the sender to do."""
    outcome = table()[name]
    for kind in TABLE_ROWS[name]:
        if outcome.startswith("itself"):
            assert kind in SAME
        elif outcome.startswith("refused: "):
            codes = re.findall(r"`([^`]+)`", outcome) or [outcome.removeprefix("refused: ")]
            assert REFUSED[kind] in codes
        else:
            arrives_as = re.match(r"`(\w+)`", outcome)
            assert arrives_as is not None, outcome
            assert arrives_as[1] in str(typed(CONVERTED[kind]))
            assert "tuple" not in str(typed(CONVERTED[kind])), "what arrives holds no tuple"


def test_the_notes_under_the_table_say_what_the_errors_say() -> None:
    """The range of an int is the one the encoder enforces."""
    assert REFUSED["int over 64 bits"] in what_travels()


@pytest.mark.parametrize("kind", sorted(WIRE_VALUES))
@pytest.mark.parametrize(
    ("direction", "message", "decode"),
    [
        ("args", lambda v: _wire.Call(1, "tool", v, "c"), _wire.decode_to_worker),
        ("result", lambda v: _wire.Result(1, v), _wire.decode_from_worker),
        ("chunk", lambda v: _wire.Chunk(1, 1, v), _wire.decode_from_worker),
    ],
)
def test_a_value_travels_as_the_table_says(
    kind: str, direction: str, message: Any, decode: Any
) -> None:
    """Arguments (parent to worker), results and chunks (worker to parent): a value arrives
    as itself or as the table says, or is refused with what to send instead."""
    value = WIRE_VALUES[kind]()
    if kind in REFUSED:
        with pytest.raises(SerializationError) as info:
            _wire.encode(message(value))
        assert REFUSED[kind] in str(info.value)
        return
    decoded = decode(_wire.encode(message(value))[_wire.HEADER.size :])
    received = decoded.args if direction == "args" else decoded.value
    expected = WIRE_VALUES[kind]() if kind in SAME else CONVERTED[kind]
    assert typed(received) == typed(expected)


def test_a_refusal_names_where_the_value_is_its_type_and_what_to_send() -> None:
    """The path into the value, its type with its module, its repr, and the fix."""
    value = {"rows": [{"id": 1}, {"id": 2, "when": WIRE_VALUES["datetime"]()}]}
    with pytest.raises(SerializationError) as info:
        _wire.encode(_wire.Call(1, "tool", value, "c"))
    message = str(info.value)
    assert message.startswith("cannot send args['rows'][1]['when'], of type datetime.datetime: ")
    assert "datetime.datetime(2024, 5, 1, 12, 30)" in message
    assert message.endswith("send value.isoformat() or a timestamp instead")
    assert "tuples arrive as lists" in message
    assert "\n" not in message


def test_a_refused_key_is_named_with_the_dict_that_holds_it() -> None:
    """A key of a type that would not arrive as itself."""
    with pytest.raises(SerializationError) as info:
        _wire.encode(_wire.Result(1, [{"a": 1}, {frozenset({1}): "x"}]))
    assert str(info.value).startswith("cannot send a key of result[1], of type frozenset: ")


def test_a_value_whose_attributes_raise_is_refused_without_advice() -> None:
    """Finding what to suggest reads the value's attributes; one that raises on every
    attribute still gets a SerializationError, never its own exception."""

    class Hostile:
        def __getattribute__(self, name: str) -> Any:
            raise RuntimeError("no attributes here")

    with pytest.raises(SerializationError, match="convert it first"):
        _wire.encode(_wire.Call(1, "tool", [Hostile()], "c"))


def test_shared_containers_travel_and_cycles_are_refused() -> None:
    """A container met twice is checked once and sent twice; a value that contains itself
    is refused with where: the path of the container met again, and where it was first."""
    shared = [{"a": [1, 2]}]
    frame = _wire.encode(_wire.Call(1, "tool", [shared, shared, {"k": shared}], "c"))
    decoded = _wire.decode_to_worker(frame[_wire.HEADER.size :])
    assert isinstance(decoded, _wire.Call)
    assert decoded.args == [shared, shared, {"k": shared}]

    cycle: list[Any] = [1]
    cycle.append({"again": cycle})
    with pytest.raises(SerializationError) as info:
        _wire.encode(_wire.Call(1, "tool", [shared, {"x": cycle}], "c"))
    assert str(info.value) == (
        "cannot send args[1]['x'][1]['again']: it is args[1]['x'] again, a value that "
        "contains itself; the wire carries values nested as trees, not cycles"
    )
    with pytest.raises(
        SerializationError, match=r"cannot send result\[1\]\['again'\]: it is result "
    ):
        _wire.encode(_wire.Result(1, cycle))


def test_a_key_nested_past_the_recursion_limit_is_refused() -> None:
    """Tuple keys are checked recursively: one nested deeper than the interpreter allows
    is a SerializationError like any value nested too deep."""
    key: tuple[Any, ...] = ()
    for _ in range(5000):
        key = (key,)
    with pytest.raises(SerializationError, match="nested too deep"):
        _wire.encode(_wire.Call(1, "tool", {"k": [{key: 1}]}, "c"))


def test_values_nested_deep_are_checked_at_every_level() -> None:
    """The check has no depth limit of its own: a set at the bottom of a value nested five
    hundred deep is found, and its path given."""
    value = nested(500)
    bottom = value
    while bottom:
        bottom = bottom[0]
    bottom.append({1})
    with pytest.raises(SerializationError, match=r"cannot send args(\[0\]){501}, of type set"):
        _wire.encode(_wire.Call(1, "tool", value, "c"))


def test_an_int_out_of_range_is_named_where_it_is_even_when_too_long_to_print() -> None:
    """msgpack holds 64 bits: a larger int is refused with its path; one with more digits
    than Python prints still gets a SerializationError."""
    with pytest.raises(SerializationError) as info:
        _wire.encode(_wire.Call(1, "tool", {"ids": [1, 2**64]}, "c"))
    assert str(info.value) == (
        "cannot send args['ids'][1], an int out of range: 18446744073709551616; "
        "an int is from -2**63 to 2**64 - 1"
    )
    with pytest.raises(SerializationError, match="an int out of range: <int that cannot be shown>"):
        _wire.encode(_wire.Result(1, [10**5000]))
    with pytest.raises(SerializationError, match="of type set: <set that cannot be shown>"):
        _wire.encode(_wire.Result(1, {10**5000}))


def test_an_int_out_of_range_beside_a_value_that_contains_itself_is_found() -> None:
    """The search for the int out of range looks into each container once: a value that
    contains itself after the int ends it instead of growing without end."""
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    shared = [3, 4]
    with pytest.raises(SerializationError, match=r"cannot send args\[0\], an int out of range"):
        _wire.encode(_wire.Call(1, "tool", [2**64, cyclic, shared, shared], "c"))
    with pytest.raises(SerializationError, match=r"result\[2\]\[1\], an int out of range"):
        _wire.encode(_wire.Result(1, [shared, shared, [1, -(2**63) - 1]]))


def test_a_class_that_claims_to_equal_int_is_still_refused() -> None:
    """An enum member whose metaclass says its class equals every class would pass a
    count of the values whose type equals the first one's; among many ints, in a list of
    any length, it is still refused, and a map's inputs are told apart as well."""

    class AnyEq(enum.EnumType):
        def __eq__(cls, other: object) -> bool:
            return True

        __hash__ = enum.EnumType.__hash__

    class Level(enum.IntEnum, metaclass=AnyEq):
        HIGH = 7

    for n in (1, 63, 64, 10_000):
        values = [0] * n + [Level.HIGH]
        with pytest.raises(SerializationError, match=rf"result\[{n}\]"):
            _wire.check(values, "result")
        assert len(_wire.kinds(values)) == 2


@pytest.mark.parametrize(
    "inputs",
    [
        range(10),
        range(-5, 20, 3),
        range(20, -5, -7),
        range(7, 8, 2**100),  # one input: the step does not matter
        range(-(2**63), 2**63, 2**62),
        range(2**63 - 3, 2**63),
    ],
)
def test_a_range_travels_as_its_first_int_count_and_step(inputs: range) -> None:
    """A map's range of inputs travels as three ints, and the worker makes the same ints."""
    carried = _wire.span(inputs)
    assert carried is not None
    call = _wire.Call(1, "identity", carried, "c", batch=True, positional=True, span=True)
    decoded = _wire.decode_to_worker(_wire.encode(call)[4:])
    assert isinstance(decoded, _wire.Call)
    assert _wire.span_inputs(decoded.args) == list(inputs)


def test_a_range_past_signed_64_bit_ints_travels_as_its_list() -> None:
    """A range whose first int, count or step is past a signed 64-bit int has no span (its
    inputs travel as a list, each checked as any int is), nor has an empty one."""
    for inputs in (range(2**63, 2**63 + 3), range(0, 2**64, 2**63 + 1), range(0)):
        assert _wire.span(inputs) is None


@pytest.mark.parametrize(
    "args", [[0, 1], [0, 1, 1, 1], (0, 1, 1), [0, 0, 1], [0, -1, 1], [0, 3, 0], [0, 1.0, 1], 7]
)
def test_a_range_that_is_not_first_count_and_step_is_refused(args: Any) -> None:
    """What a batch call carries as its range must be three ints, a count of at least one
    and a step other than zero: anything else is a TypeError, which fails the call."""
    with pytest.raises(TypeError, match="first, count, step"):
        _wire.span_inputs(args)


def test_a_call_without_a_session_id_decodes() -> None:
    """A Call frame written before calls carried a session id still decodes, with none."""
    old = msgspec.msgpack.encode([1, 7, "echo", None, "cid", None, False, None, 0])
    call = _wire.decode_to_worker(old)
    assert isinstance(call, _wire.Call)
    assert call.session_id is None


def test_a_call_carries_its_session_id() -> None:
    """The session id travels with the call."""
    frame = _wire.encode(_wire.Call(7, "echo", None, "cid", session_id="user-42"))
    call = _wire.decode_to_worker(frame[4:])
    assert isinstance(call, _wire.Call)
    assert call.session_id == "user-42"


def test_tools_and_ready_framed_before_signatures_decode() -> None:
    """A Ready framed before tools carried their parameters, and before it carried the start
    times, still decodes: parameters unknown (the tools are called unchecked), times 0."""
    old = msgspec.msgpack.encode([22, [[21, "echo", "Return the arguments", False]]])
    ready = _wire.decode_from_worker(old)
    assert isinstance(ready, _wire.Ready)
    (tool,) = ready.tools
    assert (tool.name, tool.stream, tool.parameters, tool.is_async) == ("echo", False, None, False)
    assert (ready.import_time, ready.setup_time) == (0, 0)


def test_a_tool_carries_its_parameters() -> None:
    """Parameters travel with their kinds, defaults and annotations; a kind the protocol
    does not know is a protocol error."""
    parameters = [
        _wire.Parameter("x", "positional-or-keyword", None, "float"),
        _wire.Parameter("scale", "keyword-only", "1.0", "float"),
    ]
    ready = _wire.Ready([_wire.Tool("predict", "", False, parameters, True)], 5, 7)
    decoded = _wire.decode_from_worker(_wire.encode(ready)[_wire.HEADER.size :])
    assert decoded == ready
    forged = msgspec.msgpack.encode([22, [[21, "predict", "", False, [["x", "sideways"]]]]])
    with pytest.raises(ProtocolError, match="sideways"):
        _wire.decode_from_worker(forged)


def test_a_call_framed_before_batches_decodes_as_a_single_call() -> None:
    """A Call frame written before batch calls existed decodes, as one call."""
    old = msgspec.msgpack.encode([1, 7, "echo", None, "cid", None, False, None, 0, "s"])
    call = _wire.decode_to_worker(old)
    assert isinstance(call, _wire.Call)
    assert (call.session_id, call.batch, call.stop_on_error) == ("s", False, False)


def test_the_results_of_a_batch_travel_with_their_errors() -> None:
    """A batch call and its Results round-trip; a value of the results that cannot travel
    is refused as the result's, naming its place."""
    call = _wire.Call(7, "echo", [1, {"a": 2}], "cid", batch=True, stop_on_error=True)
    decoded = _wire.decode_to_worker(_wire.encode(call)[4:])
    assert isinstance(decoded, _wire.Call)
    assert (decoded.args, decoded.batch, decoded.stop_on_error) == ([1, {"a": 2}], True, True)
    error = _wire.ItemError(1, "tool", "ValueError", "boom", "Traceback ...")
    results = _wire.Results(7, [1, None], [error], waited=3, took=4)
    assert _wire.decode_from_worker(_wire.encode(results)[4:]) == results
    with pytest.raises(SerializationError, match=r"cannot send result\[1\], of type set"):
        _wire.encode(_wire.Results(7, [1, {2}]))

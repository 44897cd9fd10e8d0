"""The framed protocol spoken between the pool and its workers.

A frame is a 4-byte big-endian length followed by one msgpack message. Every
message is a msgspec ``Struct`` encoded as an array whose first element is a
small integer tag, so decoding validates both the shape and the types: a peer
that sends anything else gets a :class:`~pypit.ProtocolError`, never an object
built from its bytes. Nothing is pickled in either direction.

The values a message carries for the other side (a call's arguments, a result, a
chunk) must arrive as themselves: :func:`check` refuses what msgpack would carry only
by changing its type (a set, a datetime, a dataclass...).

The parent never trusts the worker: :class:`FrameReader` refuses a length
over the limit before buffering the body, and :func:`decode_from_worker`
accepts only the messages a worker may send.
"""

from __future__ import annotations

import contextlib
import enum
import reprlib
import struct
import sys
import threading
from collections.abc import Iterator
from itertools import compress, repeat
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec

from pypit._errors import FrameTooLargeError, ProtocolError, SerializationError

PROTOCOL_VERSION: Final = 2
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
HEADER: Final = struct.Struct(">I")
_HEADER_SIZE: Final = HEADER.size


class _Message(msgspec.Struct, array_like=True, tag_field="t"):
    pass


# -- parent -> worker --------------------------------------------------------


class Call(_Message, tag=1):
    """Run ``command`` with ``args``; ``stream`` asks for a generator tool's chunks.

    ``window`` is a stream's flow control: the worker may have at most that many chunks
    sent and not yet taken by the consumer (see :class:`Credit`). A stream with a window
    under 1 is refused (the call fails); calls that do not stream leave it at 0.
    ``session_id`` is the caller's, which the tool reads with ``get_session_id()``.
    ``batch`` makes ``args`` a list of inputs, each what ``args`` is for one call: the tool
    runs once per input and the worker answers with one :class:`Results`;
    ``stop_on_error`` ends the batch at its first failing input; ``positional`` says that
    each input is one positional argument (none is a dict or None), so the worker may run
    them in runs; ``span`` says that ``args`` is ``[first, count, step]``, a range of ints
    that are the inputs (see :func:`span_inputs`). Fields are added at the end, with a
    default, so that a Call framed before one of them existed still decodes.
    """

    id: int
    command: str
    args: Any
    correlation_id: str
    timeout: float | None = None
    stream: bool = False
    trace_context: dict[str, str] | None = None
    window: Annotated[int, msgspec.Meta(ge=0)] = 0
    session_id: str | None = None
    batch: bool = False
    stop_on_error: bool = False
    positional: bool = False
    span: bool = False


class Cancel(_Message, tag=2):
    """Stop call ``id``.

    A call that has not started is dropped at once and answered with an error of
    kind ``dropped``: it never runs. A running call is cancelled and answered
    with an error of kind ``cancelled``, or with its result if it ended first.
    ``if_waiting`` drops the call only if it has not started, and leaves a
    running call alone (the queue timeout of a call the worker holds).
    """

    id: int
    if_waiting: bool = False


class Ping(_Message, tag=3):
    seq: int


class Shutdown(_Message, tag=4):
    """Stop reading, run ``teardown()`` and exit; calls still running are not awaited
    (the pool drains them before it sends this)."""


class Configure(_Message, tag=5):
    """Worker settings the parent may change at any time; when ``seq`` is not 0 the worker
    answers ``Ack(seq)``.

    ``listened`` names the python events someone in the parent listens to
    (``"call.stop"``, ``"tool.execution.stop"``, ...): the worker ships only
    those. ``allow`` and ``deny`` are name patterns (exact, ``"a.*"`` or
    ``"*"``). ``log_level`` is the worker's level (None: as it started).
    """

    seq: int = 0
    listened: list[str] = []
    enabled: bool = True
    sampling_rate: float = 1.0
    allow: list[str] = []
    deny: list[str] = []
    log_level: str | None = None
    sample_interval: float = 0.0


class Credit(_Message, tag=6):
    """The consumer of stream ``id`` has taken ``consumed`` of its chunks in all: the
    worker may advance the generator while fewer than the call's ``window`` chunks are
    sent and not taken.

    The count is cumulative rather than an increment, so a credit lost with a broken
    channel is made good by the next one (the pool sends its count again when the worker
    reconnects), and a repeated one changes nothing. A count that goes down, or that is
    over the chunks the worker sent, is a protocol error: the worker stops. A credit for
    a call the worker no longer runs is ignored (it crossed the stream's end).
    """

    id: int
    consumed: Annotated[int, msgspec.Meta(ge=1)]


# -- worker -> parent --------------------------------------------------------


class Hello(_Message, tag=20):
    """First message on a new connection: who the worker is.

    On a reconnection, ``running`` lists the calls still in progress in the
    worker; any other call the pool had sent it lost its answer.
    """

    token: str
    pid: int
    version: int = PROTOCOL_VERSION
    running: list[int] = []


ParameterKind: TypeAlias = Literal[
    "positional-only", "positional-or-keyword", "var-positional", "keyword-only", "var-keyword"
]
"""How a parameter takes its argument, as ``inspect.Parameter.kind`` says."""


class Parameter(msgspec.Struct, array_like=True):
    """A parameter of a tool: its ``default`` (``repr`` text) and ``annotation`` as text,
    None where it has none."""

    name: str
    kind: ParameterKind
    default: str | None = None
    annotation: str | None = None


class Tool(_Message, tag=21):
    """A tool of the adapter. ``parameters`` is None when the worker could not read the
    method's signature (the pool then calls it unchecked). Fields are added at the end,
    with a default, so that a Tool framed before one of them existed still decodes."""

    name: str
    description: str
    stream: bool
    parameters: list[Parameter] | None = None
    is_async: bool = False
    bound: str | None = None
    """The parameter the method binds (``self``), which no keyword argument may name."""


class Ready(_Message, tag=22):
    """The adapter is imported and set up; these are its tools. ``import_time`` and
    ``setup_time`` are the nanoseconds the adapter's import and its instantiation and
    ``setup()`` took (0 from a worker that did not say)."""

    tools: list[Tool]
    import_time: Annotated[int, msgspec.Meta(ge=0)] = 0
    setup_time: Annotated[int, msgspec.Meta(ge=0)] = 0


class Failed(_Message, tag=23):
    """The worker could not start: the adapter import or ``setup()`` raised."""

    reason: str
    message: str
    traceback: str = ""


class Result(_Message, tag=24):
    """Call ``id`` returned ``value``. Every final answer (``Result``, ``Error``, ``End``)
    says how long the call waited in the worker before it started (``waited``) and how
    long it ran (``took``), in nanoseconds."""

    id: int
    value: Any
    waited: int = 0
    took: int = 0


class Error(_Message, tag=25):
    """Call ``id`` failed. ``kind`` is ``tool``, ``unknown_command``, ``serialization``,
    ``frame_too_large``, ``cancelled``, ``dropped`` (cancelled before it started: it never
    ran) or ``usage``."""

    id: int
    kind: str
    type: str
    message: str
    traceback: str = ""
    waited: int = 0
    took: int = 0


class ItemError(msgspec.Struct, array_like=True):
    """Why input ``index`` of a batch failed: ``kind`` is ``tool`` (the tool raised),
    ``serialization`` (its result cannot travel) or ``too_large`` (its result alone is
    over the frame size limit)."""

    index: Annotated[int, msgspec.Meta(ge=0)]
    kind: str
    type: str
    message: str
    traceback: str = ""


class Results(_Message, tag=32):
    """The answer of batch call ``id``: ``values[i]`` is the result of input ``i`` (None
    where ``errors`` names it). Every input ran, in order, unless the call asked to stop
    at its first error: then ``values`` ends with that input's place, and the inputs after
    it never ran.

    Results over the frame size limit travel in parts, in order: each part but the last
    has ``more``, and carries the values of the inputs after those of the part before it;
    ``errors`` index the whole batch.
    """

    id: int
    values: list[Any]
    errors: list[ItemError] = []
    waited: int = 0
    took: int = 0
    more: bool = False


class Chunk(_Message, tag=26):
    """Chunk ``seq`` (from 1) of stream ``id``; at most the call's ``window`` of them
    are sent ahead of the parent's :class:`Credit`, more is a protocol error."""

    id: int
    seq: int
    value: Any


class End(_Message, tag=27):
    """The stream of call ``id`` is complete."""

    id: int
    waited: int = 0
    took: int = 0


class Events(_Message, tag=28):
    """A batch of worker telemetry: ``[name, measurements, metadata]`` triples,
    plus drop counts ``[reason, event_name or "", count]``."""

    events: list[tuple[str, dict[str, int | float], dict[str, Any]]]
    dropped: list[tuple[str, str, int]] = []


class Pong(_Message, tag=29):
    seq: int


class Ack(_Message, tag=30):
    """The Configure numbered ``seq`` is applied."""

    seq: int


class _Entry(msgspec.Struct, array_like=True, tag_field="t"):
    pass


class Line(_Entry, tag=1):
    """A line the worker's code wrote to ``sys.stdout`` or ``sys.stderr`` (no newline)."""

    stream: Literal["stdout", "stderr"]
    text: str


class Record(_Entry, tag=2):
    """A log record of the worker's code: its level (the stdlib's numbers: 10 debug ...
    50 critical), its logger's name ("" for none), its message, and its fields."""

    level: int
    logger: str
    message: str
    fields: dict[str, str | int | float | bool | None] = {}


class Output(_Message, tag=31):
    """What the worker's code printed and logged, in the order it was written. ``dropped``
    counts the entries lost because the worker's buffer was full (or, rarely, because
    an entry could not be encoded even cut to fit a frame)."""

    entries: list[Line | Record]
    dropped: Annotated[int, msgspec.Meta(ge=0)] = 0


Answer: TypeAlias = Result | Results | Error | End
"""A call's final message from its worker."""
ToWorker: TypeAlias = Call | Cancel | Ping | Shutdown | Configure | Credit
FromWorker: TypeAlias = (
    Hello | Ready | Failed | Result | Results | Error | Chunk | End | Events | Output | Pong | Ack
)


# Bounded: a value's own __repr__ may build megabytes.
_preview = reprlib.Repr()
_preview.maxstring = _preview.maxother = 200


def _show(value: Any) -> str:
    """A short repr of ``value`` that never raises: reprlib catches what an instance's
    ``__repr__`` raises, not the ``ValueError`` of an int too long to print."""
    try:
        return _preview.repr(value)
    except Exception:
        return f"<{type(value).__qualname__} that cannot be shown>"


ATOMS: Final = frozenset({str, bytes, int, float, bool, type(None)})
"""The types that travel and arrive as themselves (exact types: a subclass is refused)."""
_ATOMS: Final = ATOMS


_INT64: Final = range(-(2**63), 2**63)
INTS: Final = range(-(2**63), 2**64)
"""The ints msgpack carries."""


def span(inputs: range) -> list[int] | None:
    """A range of inputs as a batch call carries it (``Call.span``): its first int, how
    many and the step between them; None if one of those is past a signed 64-bit int,
    and for an empty range."""
    count = len(inputs)
    if not count:
        return None
    step = inputs.step if count > 1 else 1
    if inputs.start not in _INT64 or step not in _INT64 or count not in _INT64:
        return None
    return [inputs.start, count, step]


def span_inputs(args: Any) -> list[int]:
    """The inputs of a batch call that carries a range (``Call.span``); ``TypeError`` if
    ``args`` is not ``[first, count, step]`` of ints, a count of at least one and a step
    other than zero."""
    if (
        type(args) is not list
        or len(args) != 3
        or not all(type(value) is int for value in args)
        or args[1] < 1
        or args[2] == 0
    ):
        raise TypeError(f"a batch call's range is [first, count, step] of ints, not {args!r}")
    first, count, step = args
    return list(range(first, first + count * step, step))


def kinds(values: list[Any] | tuple[Any, ...]) -> set[type]:
    """The types of ``values``, collected at C speed. They are told apart as a set tells
    its members apart (by hash and ``==``), not by counting those equal to the first: a
    metaclass whose ``==`` says its classes equal ``int`` would pass a count."""
    return set(map(type, values))


_NOT_ATOM: Final = dict.fromkeys(_ATOMS, False)
"""``_NOT_ATOM.get(kind, True)``: whether the walk looks into values of that type."""

_RULE: Final = (
    "a value must arrive as it was sent, so it is made of dict, list, str, bytes, int, float, "
    "bool and None (tuples arrive as lists, bytearray and memoryview as bytes)"
)


def check(value: Any, where: str) -> None:
    """Raise :class:`SerializationError` unless ``value`` arrives as itself on the other side.

    msgspec would encode far more than msgpack's types, and change them on the way: a set
    arrives as a list, a datetime or a Decimal as a str, a dataclass as a dict, an enum as
    its value. A caller who sends one and a tool that receives it would not know, so such
    values are refused, naming the value (``where`` and a path into it, such as
    ``args['when']``) and what to send instead.

    The check is Python, so the usual shapes come first: a scalar, a flat list, and a dict
    of scalars and flat lists (keyword arguments) take a few steps, and a list's items are
    checked by a C loop. Deeper values are walked (:func:`_walk`). A value of bytes costs
    nothing whatever its size.
    """
    kind = type(value)
    if kind in _ATOMS:
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) not in _ATOMS:
                break
            kind = type(item)
            if kind not in _ATOMS and not (
                (kind is list or kind is tuple) and _ATOMS.issuperset(map(type, item))
            ):
                break
        else:
            return
    elif (kind is list or kind is tuple) and _ATOMS.issuperset(map(type, value)):
        return
    _walk(value, where)


def _walk(root: Any, where: str) -> None:
    """Check ``root`` depth first, a container at a time: a dict's items by a Python loop,
    a list's by C loops (``issuperset(map(type, ...))``, then ``compress`` to keep the
    containers in it); a flat list inside a dict is checked on the spot. A container is
    looked into once, so a shared one costs once and a cycle ends (the encoder then
    refuses it as nested too deep)."""
    stack = [root]
    walked: set[int] = set()
    inner: Any
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is dict:
            inner = []
            for key, item in value.items():
                if type(key) not in _ATOMS and not _good_key(key):
                    raise _refused_key(root, where, value, key)
                kind = type(item)
                if kind not in _ATOMS and not (
                    (kind is list or kind is tuple) and _ATOMS.issuperset(map(type, item))
                ):
                    inner.append(item)
            if not inner:
                continue
        elif kind is list or kind is tuple:
            if _ATOMS.issuperset(map(type, value)):
                continue
            inner = compress(value, map(_NOT_ATOM.get, map(type, value), repeat(True)))
        elif kind is bytearray or kind is memoryview:
            continue
        else:
            raise _refused(root, where, value)
        if id(value) not in walked:
            walked.add(id(value))
            stack.extend(inner)


def _good_key(key: Any) -> bool:
    """A dict key that arrives as itself: an atom, or a tuple of them (msgpack's decoder
    makes an array in a key a tuple, since a list cannot be one)."""
    kind = type(key)
    return kind in _ATOMS or (kind is tuple and all(_good_key(item) for item in key))


def _refused(root: Any, where: str, value: Any) -> SerializationError:
    return SerializationError(
        f"cannot send {where}{_path(root, value)}, of type {_type_name(value)}: "
        f"{_show(value)}; {_RULE}: {_instead(value)}"
    )


def _refused_key(root: Any, where: str, mapping: Any, key: Any) -> SerializationError:
    return SerializationError(
        f"cannot send a key of {where}{_path(root, mapping)}, of type {_type_name(key)}: "
        f"{_show(key)}; a dict key must arrive as itself: str, bytes, int, float, "
        "bool, None, or a tuple of them"
    )


def _type_name(value: Any) -> str:
    kind = type(value)
    if kind.__module__ in ("builtins", "__main__"):
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _instead(value: Any) -> str:
    """What to send instead of ``value``."""
    try:
        return _suggestion(value)
    except Exception:  # a value's own attributes may raise: then there is no suggestion
        return "convert it first"


def _loaded(module: str, *names: str) -> tuple[type, ...]:
    """The classes ``names`` of ``module`` if something imported it: a value cannot be an
    instance of a class of a module nobody imported, so a worker does not import these
    modules to name what it refuses."""
    loaded = sys.modules.get(module)
    return () if loaded is None else tuple(getattr(loaded, name) for name in names)


def _suggestion(value: Any) -> str:
    if isinstance(value, set | frozenset):
        return "send a list instead (sorted(value), say)"
    if isinstance(value, enum.Enum):
        return "send value.value or value.name instead"
    if isinstance(value, _loaded("datetime", "date", "time")):
        return "send value.isoformat() or a timestamp instead"
    if isinstance(value, _loaded("datetime", "timedelta")):
        return "send value.total_seconds() instead"
    if isinstance(
        value,
        (*_loaded("decimal", "Decimal"), *_loaded("uuid", "UUID"), *_loaded("pathlib", "PurePath")),
    ):
        return "send str(value) instead"
    if hasattr(type(value), "__dataclass_fields__"):
        return "send dataclasses.asdict(value) instead"
    if hasattr(type(value), "__attrs_attrs__"):
        return "send attrs.asdict(value) instead"
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return "send value._asdict() or tuple(value) instead"
    for base in (dict, list, tuple, str, bytes, int, float):
        if isinstance(value, base):
            return f"send {base.__name__}(value) instead"
    if callable(getattr(value, "tolist", None)):
        return "send value.tolist() instead"  # numpy's arrays and scalars, among others
    return "convert it first"


def _path(root: Any, target: Any) -> str:
    """Where ``target`` is inside ``root``, as subscripts (``"['items'][3]"``); only on the
    way to an error, so a plain search."""
    stack: list[tuple[Any, str]] = [(root, "")]
    seen: set[int] = set()
    while stack:
        value, path = stack.pop()
        if value is target:
            return path
        if id(value) in seen:
            continue
        seen.add(id(value))
        if type(value) is dict:
            stack.extend((item, f"{path}[{_show(key)}]") for key, item in value.items())
        elif type(value) is list or type(value) is tuple:
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
    return ""


def _children(value: Any, path: str) -> Iterator[tuple[Any, str]]:
    if type(value) is dict:
        return ((item, f"{path}[{_show(key)}]") for key, item in value.items())
    if type(value) is list or type(value) is tuple:
        return ((item, f"{path}[{i}]") for i, item in enumerate(value))
    return iter(())


def _cycle(root: Any) -> tuple[str, str] | None:
    """Where ``root`` contains itself: the path of a container met again inside itself,
    and the path where it was first met; None if it holds no cycle. Only on the way to an
    error, so a plain search (depth first, keeping the containers on the way)."""
    ancestors: dict[int, str] = {id(root): ""}
    done: set[int] = set()
    stack = [(root, _children(root, ""))]
    while stack:
        value, children = stack[-1]
        for child, path in children:
            if type(child) not in (dict, list, tuple) or id(child) in done:
                continue
            if id(child) in ancestors:
                return path, ancestors[id(child)]
            ancestors[id(child)] = path
            stack.append((child, _children(child, path)))
            break
        else:
            stack.pop()
            del ancestors[id(value)]
            done.add(id(value))
    return None


def _too_deep(message: _Message) -> SerializationError:
    """The error of a message whose value is nested past the recursion limit: where it
    contains itself, if it does."""
    where, value = {
        Call: ("args", "args"),
        Result: ("result", "value"),
        Results: ("result", "values"),
        Chunk: ("chunk", "value"),
    }.get(type(message), ("", ""))
    cycle = _cycle(getattr(message, value)) if where else None
    if cycle is not None:
        again, first = cycle
        return SerializationError(
            f"cannot send {where}{again}: it is {where}{first} again, a value that contains "
            "itself; the wire carries values nested as trees, not cycles"
        )
    return SerializationError(
        "cannot encode the message: a value in it is nested too deep (the interpreter's "
        "recursion limit bounds the nesting of a value on the wire)"
    )


def _refuse(value: Any) -> Any:
    raise SerializationError(
        f"cannot send a value of type {_type_name(value)}: {_show(value)}; {_RULE}: "
        f"{_instead(value)}"
    )


_encoder = msgspec.msgpack.Encoder(enc_hook=_refuse)
# Annotated rather than inferred: how a decoder built from a union alias is typed differs
# between msgspec releases, and these annotations hold for all of them.
_from_worker: msgspec.msgpack.Decoder[FromWorker] = msgspec.msgpack.Decoder(FromWorker)
_to_worker: msgspec.msgpack.Decoder[ToWorker] = msgspec.msgpack.Decoder(ToWorker)


def encode(
    message: _Message, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, *, checked: bool = False
) -> bytes:
    """One frame: the length header and the message.

    The value a message carries for the other side (a call's ``args``, a result's or a
    chunk's ``value``) is checked first (see :func:`check`), unless ``checked``: the caller
    knows it travels (a map's inputs, whose types the pool has collected already).

    Raises:
        SerializationError: a value in the message cannot be encoded, or would not arrive
            as itself.
        FrameTooLargeError: the frame is over ``max_frame_size``.
    """
    try:
        if type(message) is Call:
            if not checked:
                check(message.args, "args")
        elif type(message) is Result:
            check(message.value, "result")
        elif type(message) is Chunk:
            check(message.value, "chunk")
        elif type(message) is Results:
            check(message.values, "result")
        body = _encoder.encode(message)
    except SerializationError:
        raise
    except OverflowError:
        raise _out_of_range(message) from None
    except RecursionError:
        raise _too_deep(message) from None
    except Exception as exc:
        # Not only msgspec's own errors: encoding reads the value's attributes, and whatever
        # that raises means the value cannot travel, never that the sender must fail.
        raise SerializationError(f"cannot encode the message: {_reason(exc)}") from None
    size = len(body)
    if size > max_frame_size:
        raise FrameTooLargeError(f"a frame of {size} bytes is over the limit of {max_frame_size}")
    return HEADER.pack(size) + body


def _out_of_range(message: _Message) -> SerializationError:
    """The error for an int msgpack cannot hold, naming it where it is (found by a plain
    search: only on the way to an error)."""
    rule = "an int is from -2**63 to 2**64 - 1"
    carried = {
        Call: ("args", "args"),
        Result: ("result", "value"),
        Results: ("result", "values"),
        Chunk: ("chunk", "value"),
    }
    where, field = carried.get(type(message), ("", ""))
    stack: list[tuple[Any, str]] = [(getattr(message, field), where)] if where else []
    # A container is looked into once: a shared one costs once, and a cycle ends.
    seen: set[int] = set()
    while stack:
        value, path = stack.pop()
        if type(value) in (dict, list, tuple):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if type(value) is int and value not in INTS:
            return SerializationError(
                f"cannot send {path}, an int out of range: {_show(value)}; {rule}"
            )
        if type(value) is dict:
            for key, item in value.items():
                if type(key) is int and key not in INTS:
                    return SerializationError(
                        f"cannot send a key of {path}, an int out of range: {_show(key)}; {rule}"
                    )
                stack.append((item, f"{path}[{_show(key)}]"))
        elif type(value) is list or type(value) is tuple:
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
    return SerializationError(f"cannot encode the message: {rule}")


def _reason(exc: Exception) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return f"{type(exc).__name__}: <unprintable>"


def decode_from_worker(payload: bytes | memoryview) -> FromWorker:
    """A message a worker may send, or :class:`ProtocolError`."""
    try:
        return _from_worker.decode(payload)
    except RecursionError:
        # Nesting counts against the recursion limit together with the stack of the thread
        # that decodes, deeper in the pool's event loop than the worker's was when it
        # encoded: what the worker could send, a thread of its own can read.
        return _decode_on_a_fresh_stack(payload)
    except Exception as exc:
        # Not only MsgspecError: invalid UTF-8 in a string surfaces as
        # UnicodeDecodeError. Whatever the bytes were, they are refused.
        raise ProtocolError(f"malformed message from worker: {exc!r}") from None


def _decode_on_a_fresh_stack(payload: bytes | memoryview) -> FromWorker:
    """Decode a message from a worker in a new thread, and wait for it (a matter of
    microseconds, and only for values nested close to the recursion limit)."""
    decoded: list[FromWorker] = []

    def decode() -> None:
        with contextlib.suppress(Exception):
            decoded.append(_from_worker.decode(payload))

    thread = threading.Thread(target=decode, name="pypit-decode")
    thread.start()
    thread.join()
    if not decoded:
        raise ProtocolError("malformed message from worker: a value nested too deep")
    return decoded[0]


def decode_to_worker(payload: bytes | memoryview) -> ToWorker:
    """A message the parent may send, or :class:`ProtocolError`."""
    try:
        return _to_worker.decode(payload)
    except Exception as exc:
        raise ProtocolError(f"malformed message from the pool: {exc!r}") from None


class FrameReader:
    """Splits a byte stream into frame payloads.

    Feed it what the socket returned; :meth:`feed` returns the payload of every
    frame it completed, in order. A header announcing more than ``max_frame_size`` raises
    :class:`FrameTooLargeError` at once, before the body is buffered. ``first_frame_size``,
    when given, bounds the first frame instead (a greeting, from a peer not yet trusted).
    """

    __slots__ = ("_buffer", "_first", "_max")

    def __init__(
        self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, first_frame_size: int | None = None
    ) -> None:
        self._buffer = bytearray()
        self._max = max_frame_size
        self._first = first_frame_size

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        position = 0
        available = len(buffer)
        while available - position >= _HEADER_SIZE:
            (size,) = HEADER.unpack_from(buffer, position)
            limit = self._max if self._first is None else self._first
            if size > limit:
                raise FrameTooLargeError(
                    f"the peer announced a frame of {size} bytes, over the limit of {limit}"
                )
            end = position + _HEADER_SIZE + size
            if end > available:
                break
            frames.append(bytes(buffer[position + _HEADER_SIZE : end]))
            self._first = None
            position = end
        if position:
            del buffer[:position]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

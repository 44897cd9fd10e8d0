"""The handler registry: ``attach``, ``attach_many``, ``detach``, ``execute``, ``list_handlers``.

The design follows Erlang's ``:telemetry``. Everything is decided at attach
time: the registry keeps one mapping from event name to an immutable tuple of
``(function, config, handler_id)`` triples, and ``execute`` is a dictionary
lookup plus a loop. Readers take no lock; writers build a new mapping under a
lock and swap it in with one assignment, so a dispatch always sees a complete
snapshot and a handler detached during a dispatch still runs in that dispatch.

Trade-off: attaching and detaching copy the mapping, which makes them O(number
of events with handlers). They happen at start-up and teardown; ``execute``
happens on every event.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import attrs

from pypit._errors import HandlerExistsError, HandlerNotFoundError
from pypit._log import get_logger

EventName: TypeAlias = tuple[str, ...]
"""An event name: a non-empty tuple of non-empty strings, e.g. ``("pypit", "pool", "status")``."""

Measurements: TypeAlias = Mapping[str, Any]
Metadata: TypeAlias = Mapping[str, Any]
HandlerFunction: TypeAlias = Callable[[EventName, Measurements, Metadata, Any], object]
"""``function(event_name, measurements, metadata, config)``; its return value is ignored."""

HANDLER_FAILURE_EVENT: Final[EventName] = ("telemetry", "handler", "failure")

_NO_METADATA: Final[Metadata] = MappingProxyType({})

_log = get_logger("telemetry")


@attrs.frozen
class Handler:
    """One handler attached to one event, as :func:`list_handlers` reports it."""

    id: str
    event_name: EventName
    function: HandlerFunction
    config: Any


_Entry: TypeAlias = tuple[HandlerFunction, Any, str]


class _Dotted:
    """What ``execute`` finds under ``"a.b.c"`` when ``("a", "b", "c")`` has handlers: it
    refuses to be iterated, so that a dotted string -- which would otherwise reach no
    handler, silently -- raises ``TypeError`` in the caller, at no cost to ``execute``."""

    __slots__ = ("_name",)

    def __init__(self, name: EventName) -> None:
        self._name = name

    def __iter__(self) -> Iterator[_Entry]:
        raise TypeError(
            f"an event name is a tuple of str, not a str: {'.'.join(self._name)!r}; "
            f"write {self._name!r}"
        )


def _with_dotted(table: dict[Any, Any]) -> dict[Any, Any]:
    """``table``'s entries under their tuple names, and a :class:`_Dotted` under each
    name's dotted string."""
    names = {name: entries for name, entries in table.items() if type(name) is tuple}
    return {**names, **{".".join(name): _Dotted(name) for name in names}}


_lock = threading.Lock()
# Both mappings are replaced, never mutated, so readers need no lock. _table also holds,
# under each attached event's dotted string, an entry that refuses it (see _Dotted).
_table: dict[EventName, tuple[_Entry, ...]] = {}
_by_id: dict[str, tuple[Handler, ...]] = {}
# Bumped by every attach and detach, so that emitters in other processes can
# be told cheaply when the set of listened-to events changed.
generation = 0


def event_name(value: object) -> EventName:
    """Return ``value`` as a valid event name, or raise ``TypeError``/``ValueError``.

    A tuple or list of non-empty strings is accepted; a list is converted.
    """
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, str):
        raise TypeError(
            f"an event name is a tuple of str, not a str: {value!r}; "
            f"write {tuple(value.split('.'))!r}"
        )
    if not isinstance(value, tuple):
        raise TypeError(f"an event name is a tuple of str, not {type(value).__name__}: {value!r}")
    if not value:
        raise ValueError("an event name must have at least one segment")
    for segment in value:
        if not isinstance(segment, str):
            raise TypeError(
                f"event name segments must be str, got {type(segment).__name__} in {value!r}"
            )
        if not segment:
            raise ValueError(f"event name segments must not be empty: {value!r}")
    return value


def _check_id(handler_id: object) -> None:
    if not isinstance(handler_id, str):
        raise TypeError(f"a handler id is a str, not {handler_id!r}")


def _check_handler(handler_id: object, function: object) -> None:
    _check_id(handler_id)
    if not callable(function):
        raise TypeError(f"the handler function must be callable, got {function!r}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        # Some callables (a few builtins and extension types) do not say what
        # they take: they are trusted, as :telemetry trusts every function.
        return
    try:
        signature.bind(None, None, None, None)
    except TypeError:
        name = getattr(function, "__qualname__", None) or repr(function)
        raise TypeError(
            f"handler {handler_id!r}: {name}{signature} cannot be called as "
            "function(event, measurements, metadata, config); a handler takes those "
            "four arguments"
        ) from None


def _check_events(events: object) -> None:
    """Refuse what is not a list of event names, with a message of its own for one event
    name where a list of them belongs."""
    if not isinstance(events, Iterable):
        raise TypeError(f"attach_many takes a list of event names (tuples of str), not {events!r}")
    if isinstance(events, str) or (
        isinstance(events, tuple | list) and events and all(isinstance(e, str) for e in events)
    ):
        raise TypeError(
            "attach_many takes a list of event names (tuples of str), not one event name: "
            f"{events!r}; use attach(...) for one event, or wrap it in a list"
        )


def attach(
    handler_id: str, event: EventName | list[str], function: HandlerFunction, config: Any = None
) -> None:
    """Attach ``function`` to one event under ``handler_id``.

    ``function(event_name, measurements, metadata, config)`` runs synchronously
    in the emitter on every :func:`execute` of that event. The id is unique
    across the whole registry.

    The handler's signature is checked here when Python can read it, so a
    handler that cannot take the four arguments fails at attach, not at its
    first event. A name that pypit never emits under one of its roots,
    ``("pypit", ...)`` or ``("telemetry", ...)``, or under ``pypit`` in another case
    (a typo, most likely) is attached all the same, with an
    :class:`UnknownEventWarning` naming the closest event of the catalog;
    ``("pypit", "python", ...)`` names are not checked, since a pool may allow
    any worker event.

    Raises:
        HandlerExistsError: a handler with this id is attached (nothing changes).
        TypeError, ValueError: a malformed id, event name or function (nothing changes).
    """
    attach_many(handler_id, [event_name(event)], function, config)


def attach_many(
    handler_id: str,
    events: Iterable[EventName | list[str]],
    function: HandlerFunction,
    config: Any = None,
) -> None:
    """Attach ``function`` to several events under one ``handler_id``.

    Duplicate names in ``events`` are attached once. The rules of :func:`attach` apply.
    """
    global _table, _by_id, generation
    _check_handler(handler_id, function)
    _check_events(events)
    names = tuple(dict.fromkeys(event_name(e) for e in events))
    if not names:
        raise ValueError("attach_many needs at least one event")
    # Imported here: the catalog module imports this one.
    from pypit.telemetry._catalog import warn_unknown

    # Warned before the change, so that an application that turns warnings
    # into errors gets nothing attached.
    warn_unknown(handler_id, names)
    records = tuple(Handler(handler_id, name, function, config) for name in names)
    with _lock:
        if handler_id in _by_id:
            raise HandlerExistsError(f"a handler with id {handler_id!r} is already attached")
        table = dict(_table)
        for name in names:
            table[name] = (*table.get(name, ()), (function, config, handler_id))
        by_id = dict(_by_id)
        by_id[handler_id] = records
        _table, _by_id = _with_dotted(table), by_id
        generation += 1


def detach(handler_id: str) -> None:
    """Remove the handler ``handler_id`` from every event it is attached to.

    Raises:
        HandlerNotFoundError: no handler with this id is attached.
        TypeError: ``handler_id`` is not a str.
    """
    global _table, _by_id, generation
    _check_id(handler_id)
    with _lock:
        records = _by_id.get(handler_id)
        if records is None:
            raise HandlerNotFoundError(f"no handler with id {handler_id!r} is attached")
        table = dict(_table)
        for record in records:
            remaining = tuple(e for e in table[record.event_name] if e[2] != handler_id)
            if remaining:
                table[record.event_name] = remaining
            else:
                del table[record.event_name]
        by_id = dict(_by_id)
        del by_id[handler_id]
        _table, _by_id = _with_dotted(table), by_id
        generation += 1


def execute(event: EventName, measurements: Measurements, metadata: Metadata | None = None) -> None:
    """Run every handler attached to ``event``, in attach order, in the caller.

    A handler that raises an ``Exception`` is detached from all its events and
    reported through ``("telemetry", "handler", "failure")``; the other
    handlers still run and the caller sees nothing. ``BaseException``
    (cancellation, ``KeyboardInterrupt``) propagates.

    ``event`` is not checked, to keep this path at the floor's cost, with one
    exception that costs nothing: a dotted string naming an event that has
    handlers (``"pypit.rpc.call.stop"``) raises ``TypeError``.
    """
    try:
        entries = _table.get(event, ())
    except TypeError:
        event = event_name(event)
        entries = _table.get(event, ())
    if metadata is None:
        metadata = _NO_METADATA
    for function, config, handler_id in entries:
        try:
            function(event, measurements, metadata, config)
        except Exception as exc:
            _handler_failed(handler_id, event, config, exc)


def _dispatch(
    entries: tuple[_Entry, ...], event: EventName, measurements: Measurements, metadata: Metadata
) -> None:
    """``execute`` for emitters that already looked up the handlers (see ``has_handlers``)."""
    for function, config, handler_id in entries:
        try:
            function(event, measurements, metadata, config)
        except Exception as exc:
            _handler_failed(handler_id, event, config, exc)


def has_handlers(event: EventName) -> bool:
    """Whether any handler is attached to ``event``: emitters check this before building dicts."""
    return event in _table


def list_handlers(prefix: EventName | list[str] = ()) -> list[Handler]:
    """Every (handler, event) pair whose event starts with ``prefix``, whole segments.

    ``()`` lists all of them. Entries come in attach order. A prefix is an event name
    (``("myapp",)``, ``("myapp", "db")``): a dotted string is refused as
    :func:`attach` refuses it, since it would list nothing.
    """
    if isinstance(prefix, list):
        prefix = tuple(prefix)
    if prefix != ():
        prefix = event_name(prefix)
    size = len(prefix)
    return [
        record
        for records in _by_id.values()
        for record in records
        if record.event_name[:size] == prefix
    ]


def _handler_failed(handler_id: str, event: EventName, config: Any, exc: Exception) -> None:
    try:
        detach(handler_id)
    except HandlerNotFoundError:
        # Already detached: it failed in a concurrent dispatch that took the
        # same snapshot, and that dispatch reports it.
        return
    execute(
        HANDLER_FAILURE_EVENT,
        {"monotonic_time": time.monotonic_ns(), "system_time": time.time_ns()},
        {
            "event_name": event,
            "handler_id": handler_id,
            "handler_config": config,
            "kind": "error",
            "reason": exc,
            "stacktrace": exc.__traceback__,
        },
    )
    _log.error(
        "telemetry handler failed and was detached",
        handler_id=handler_id,
        event_name=".".join(event),
        exc_info=exc,
    )

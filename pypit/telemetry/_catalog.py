"""The event catalog as data: every event pypit emits, with its exact keys.

Users write dashboards against these names and keys, so the catalog is a
contract. The documentation page ``docs/events.md`` is generated from this
module (``python -m pypit.telemetry > docs/events.md``) and a test fails when the two
drift; the tests of each emitter check the emitted keys against the entry here.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from pypit.telemetry._registry import EventName

NANOSECONDS: Final = "nanosecond"
MONOTONIC: Final = "nanosecond, monotonic clock"
EPOCH: Final = "nanosecond since the epoch"
COUNT: Final = "count"
BYTES: Final = "byte"
PERCENT: Final = "percent"


@attrs.frozen
class Measurement:
    """One measurement key of an event and its unit."""

    name: str
    unit: str


@attrs.frozen
class MetadataKey:
    """One metadata key of an event: its name, the type of its value, and whether the
    value may be ``None``.

    ``type`` is written as in an annotation (``"str"``, ``"int"``,
    ``"BaseException"``, ``"tuple[str, ...]"``).
    """

    name: str
    type: str
    nullable: bool = False


@attrs.frozen
class EventSpec:
    """One event of the catalog.

    ``measurements`` and ``metadata`` are the exact keys an emitted event
    carries, each metadata key with its type. Where ``open`` is true (user
    events shipped from workers) the keys are the ones the emitter chose, plus
    ``metadata``.
    """

    name: EventName
    measurements: tuple[Measurement, ...]
    metadata: tuple[MetadataKey, ...]
    when: str
    open: bool = False

    @property
    def measurement_keys(self) -> frozenset[str]:
        return frozenset(m.name for m in self.measurements)

    @property
    def metadata_keys(self) -> frozenset[str]:
        return frozenset(key.name for key in self.metadata)

    @property
    def nullable(self) -> frozenset[str]:
        """The metadata keys whose value may be ``None``."""
        return frozenset(key.name for key in self.metadata if key.nullable)

    @property
    def metadata_types(self) -> Mapping[str, str]:
        """Each metadata key's type, as :attr:`MetadataKey.type` writes it."""
        return {key.name: key.type for key in self.metadata}


def _m(*pairs: tuple[str, str]) -> tuple[Measurement, ...]:
    return tuple(Measurement(name, unit) for name, unit in pairs)


# The type of each metadata key wherever it appears; an event whose key has
# another type says so where it is listed (``reason`` of an exception event).
_TYPES: Final = {
    "adapter": "str",
    "available_workers": "int",
    "busy_workers": "int",
    "command": "str",
    "correlation_id": "str",
    "error_message": "str",
    "error_type": "str",
    "event_name": "str",
    "exit_code": "int",
    "handler_config": "Any",
    "handler_id": "str",
    "kind": "str",
    "mode": "str",
    "new_pid": "int",
    "node": "str",
    "planned": "bool",
    "pool_name": "str",
    "previous_pid": "int",
    "python_pid": "int",
    "reason": "str",
    "request_id": "int",
    "session_id": "str",
    "stacktrace": "TracebackType",
    "stream_id": "int",
    "telemetry_span_context": "int",
    "worker_id": "str",
    "worker_pid": "int",
}


def _k(*names: str, nullable: Iterable[str] = (), **types: str) -> tuple[MetadataKey, ...]:
    """Metadata keys with their usual types, unless ``types`` gives another."""
    optional = frozenset(nullable)
    return tuple(
        MetadataKey(name, types.get(name, _TYPES[name]), name in optional) for name in names
    )


_POOL: Final = ("pypit", "pool")
_RPC: Final = ("pypit", "rpc")
_PYTHON: Final = ("pypit", "python")
_WORKER_KEYS: Final = ("pool_name", "worker_id", "python_pid")
# rpc.call's span context is its request id.
_RPC_CALL_KEYS: Final = (
    "pool_name",
    "worker_id",
    "command",
    "request_id",
    "correlation_id",
    "session_id",
    "telemetry_span_context",
)
_PYTHON_CALL_KEYS: Final = (*_WORKER_KEYS, "command", "request_id", "correlation_id")

CATALOG: Final[tuple[EventSpec, ...]] = (
    # -- pool ---------------------------------------------------------------
    EventSpec(
        (*_POOL, "initialized"),
        _m(("duration", NANOSECONDS), ("total_workers", COUNT), ("ready_workers", COUNT)),
        _k("pool_name", "adapter", "node"),
        "start-up done: every initial worker ready or failed",
    ),
    EventSpec(
        (*_POOL, "status"),
        _m(
            ("queue_depth", COUNT),
            ("available_workers", COUNT),
            ("busy_workers", COUNT),
            ("total_workers", COUNT),
            ("in_flight", COUNT),
        ),
        _k("pool_name"),
        "every `status_interval` (default 5 s; 0 disables) and on `pool.emit_status()`",
    ),
    EventSpec(
        (*_POOL, "queue", "enqueued"),
        _m(("queue_depth", COUNT), ("system_time", EPOCH)),
        _k(
            "pool_name",
            "command",
            "request_id",
            "correlation_id",
            "session_id",
            nullable=("session_id",),
        ),
        "a request cannot start at once: it waits in the pool's queue, or in a busy worker "
        "that will run it next",
    ),
    EventSpec(
        (*_POOL, "queue", "dequeued"),
        _m(("queue_time", NANOSECONDS), ("queue_depth", COUNT)),
        _k("pool_name", "command", "request_id", "correlation_id", "worker_id"),
        "a waiting request starts on a worker; for one that waited in its worker, this comes "
        "with its answer, `queue_time` still the time until it started",
    ),
    EventSpec(
        (*_POOL, "queue", "timeout"),
        _m(("queue_time", NANOSECONDS), ("queue_depth", COUNT)),
        _k("pool_name", "command", "request_id", "correlation_id"),
        "a waiting request's queue deadline (or deadline) passed; it never ran",
    ),
    EventSpec(
        (*_POOL, "saturated"),
        _m(("queue_depth", COUNT), ("max_queue_size", COUNT)),
        _k("pool_name", "command", "available_workers", "busy_workers"),
        "a request is rejected because the queue is full",
    ),
    EventSpec(
        (*_POOL, "worker", "spawn_started"),
        _m(("system_time", EPOCH)),
        _k("pool_name", "worker_id", "reason"),
        "a worker process is being started; `reason` is `initial`, `restart` or `recycle`",
    ),
    EventSpec(
        (*_POOL, "worker", "spawned"),
        _m(("duration", NANOSECONDS), ("system_time", EPOCH)),
        _k("node", "pool_name", "worker_id", "worker_pid", "python_pid", "mode"),
        'the worker finished its handshake and takes work; `mode` is `"process"`, or '
        '`"ray_actor"` for a worker on Ray',
    ),
    EventSpec(
        (*_POOL, "worker", "spawn_failed"),
        _m(("duration", NANOSECONDS), ("system_time", EPOCH)),
        _k("pool_name", "worker_id", "reason", "exit_code", nullable=("exit_code",)),
        "the start or handshake failed; `reason` is `exec_failed`, `import_failed`, "
        "`setup_failed`, `handshake_timeout`, `exited`, and on Ray `not_placed` (no node had "
        "the worker's resources free within `startup_timeout`) or `actor_failed`",
    ),
    EventSpec(
        (*_POOL, "worker", "terminated"),
        _m(("lifetime", NANOSECONDS), ("total_commands", COUNT)),
        _k(
            "node",
            "pool_name",
            "worker_id",
            "worker_pid",
            "reason",
            "planned",
            "exit_code",
            nullable=("exit_code",),
        ),
        "a worker process is gone, for any reason; `planned` is true for shutdown and "
        "recycling; `reason` `connection_lost`: a Ray node stopped answering past "
        "`reconnect_window`",
    ),
    EventSpec(
        (*_POOL, "worker", "restarted"),
        _m(("downtime", NANOSECONDS), ("restart_count", COUNT)),
        _k("pool_name", "worker_id", "previous_pid", "new_pid", "reason"),
        "the replacement of an unplanned termination is ready",
    ),
    EventSpec(
        (*_POOL, "worker", "degraded"),
        _m(("failed_starts", COUNT), ("system_time", EPOCH)),
        _k("pool_name", "worker_id", "reason"),
        "a slot's start failed: it serves nothing until a start succeeds, and is retried "
        "with back-off meanwhile; `reason` says what the start failed with",
    ),
    EventSpec(
        (*_POOL, "worker", "recovered"),
        _m(("downtime", NANOSECONDS), ("failed_starts", COUNT)),
        _k("pool_name", "worker_id", "worker_pid"),
        "a degraded slot's worker got ready: it serves again",
    ),
    EventSpec(
        (*_POOL, "worker", "recycled"),
        _m(("lifetime", NANOSECONDS), ("total_commands", COUNT), ("rss_bytes", BYTES)),
        _k("pool_name", "worker_id", "reason"),
        "a worker was retired on purpose (`max_requests`, `ttl`, `memory`, `manual`), "
        "then `terminated` follows with `planned=True`",
    ),
    # -- rpc ----------------------------------------------------------------
    EventSpec(
        (*_RPC, "call", "start"),
        _m(("monotonic_time", MONOTONIC), ("system_time", EPOCH)),
        _k(*_RPC_CALL_KEYS, nullable=("session_id",)),
        "the parent sends a call to a worker; a frame of `pool.map` is one call, whatever "
        "the number of inputs it carries",
    ),
    EventSpec(
        (*_RPC, "call", "stop"),
        _m(
            ("duration", NANOSECONDS),
            ("monotonic_time", MONOTONIC),
            ("request_bytes", BYTES),
            ("response_bytes", BYTES),
            ("items", COUNT),
            ("failed_items", COUNT),
        ),
        _k(*_RPC_CALL_KEYS, nullable=("session_id",)),
        "a result came back; `items` counts the inputs the call carried (1, or a map's "
        "frame's), `failed_items` those of a map whose tool raised or whose result could not "
        "travel (0 for `execute`): sum `items` to count inputs, count events to count calls",
    ),
    EventSpec(
        (*_RPC, "call", "exception"),
        _m(("duration", NANOSECONDS), ("monotonic_time", MONOTONIC), ("items", COUNT)),
        _k(
            *_RPC_CALL_KEYS,
            "kind",
            "reason",
            "stacktrace",
            "error_type",
            "error_message",
            nullable=("session_id", "stacktrace"),
            reason="BaseException",
        ),
        "the caller gets an error: tool error, crash, timeout or cancellation; `items` "
        "counts the inputs the call carried, all of which failed with it",
    ),
    EventSpec(
        (*_RPC, "stream", "opened"),
        _m(("system_time", EPOCH)),
        _k("pool_name", "worker_id", "command", "stream_id", "correlation_id"),
        "a streaming call starts on a worker",
    ),
    EventSpec(
        (*_RPC, "stream", "message"),
        _m(("bytes", BYTES), ("sequence_number", COUNT)),
        _k("pool_name", "worker_id", "stream_id"),
        "a chunk of a stream arrives",
    ),
    EventSpec(
        (*_RPC, "stream", "closed"),
        _m(("duration", NANOSECONDS), ("message_count", COUNT)),
        _k("pool_name", "worker_id", "stream_id", "reason"),
        "a stream ends; `reason` is `complete`, `cancelled` or `error`",
    ),
    EventSpec(
        (*_RPC, "connection", "established"),
        _m(("duration", NANOSECONDS), ("system_time", EPOCH)),
        _k(*_WORKER_KEYS),
        "a worker's channel is connected",
    ),
    EventSpec(
        (*_RPC, "connection", "lost"),
        _m(("system_time", EPOCH)),
        _k(*_WORKER_KEYS, "reason"),
        "a worker's channel broke or closed",
    ),
    EventSpec(
        (*_RPC, "connection", "reconnected"),
        _m(("downtime", NANOSECONDS)),
        _k(*_WORKER_KEYS),
        "a worker whose channel broke connected again",
    ),
    # -- python (emitted inside the workers) --------------------------------
    EventSpec(
        (*_PYTHON, "call", "start"),
        _m(("system_time", EPOCH)),
        _k(*_PYTHON_CALL_KEYS),
        "the worker starts a command",
    ),
    EventSpec(
        (*_PYTHON, "call", "stop"),
        _m(("duration", NANOSECONDS)),
        _k(*_PYTHON_CALL_KEYS),
        "the worker finished a command",
    ),
    EventSpec(
        (*_PYTHON, "call", "exception"),
        _m(("duration", NANOSECONDS)),
        _k(*_PYTHON_CALL_KEYS, "error_type", "error_message"),
        "the command's tool raised, or the call was cancelled (`error_type` `Cancelled`)",
    ),
    *(
        EventSpec(
            (*_PYTHON, "tool", "execution", phase),
            _m(("duration", NANOSECONDS), ("bytes", BYTES)),
            _k(*_WORKER_KEYS),
            f'user code: `telemetry.emit("tool.execution.{phase}", ...)`; '
            "measurements and metadata as emitted (conventionally `duration`, `bytes`)",
            open=True,
        )
        for phase in ("start", "stop", "exception")
    ),
    EventSpec(
        (*_PYTHON, "memory", "sampled"),
        _m(("rss_bytes", BYTES), ("vms_bytes", BYTES)),
        _k(*_WORKER_KEYS),
        "every `sample_interval` (default 10 s; 0 disables)",
    ),
    EventSpec(
        (*_PYTHON, "cpu", "sampled"),
        _m(("cpu_percent", PERCENT)),
        _k(*_WORKER_KEYS),
        "every `sample_interval` (default 10 s; 0 disables)",
    ),
    # -- the bus itself -----------------------------------------------------
    EventSpec(
        ("telemetry", "handler", "failure"),
        _m(("monotonic_time", MONOTONIC), ("system_time", EPOCH)),
        _k(
            "event_name",
            "handler_id",
            "handler_config",
            "kind",
            "reason",
            "stacktrace",
            nullable=("handler_config", "stacktrace"),
            event_name="tuple[str, ...]",
            reason="Exception",
        ),
        "a handler raised; it was detached from all its events",
    ),
    EventSpec(
        ("pypit", "telemetry", "dropped"),
        _m(("count", COUNT)),
        _k("pool_name", "worker_id", "reason", "event_name", nullable=("event_name",)),
        "worker events were refused or lost (`unknown_event`, `invalid_measurements`, "
        "`invalid_metadata`, `buffer_full`); one event per reason per flush",
    ),
)

_BY_NAME: Final = {spec.name: spec for spec in CATALOG}


@attrs.frozen
class _SpanKey:
    """A metadata key that spans add to the caller's metadata, in each process."""

    name: str
    events: str
    parent: str  # its type in pypit.telemetry.span; "" where absent
    worker: str  # its type in the workers' telemetry.span; "" where absent
    meaning: str


SPAN_KEYS: Final = (
    _SpanKey(
        "telemetry_span_context",
        "start, stop, exception",
        "int, or the caller's own value",
        "str",
        "the span's id, the same in its start and its stop or exception: pair them with it "
        "(compare it, do not compute with it)",
    ),
    _SpanKey(
        "span_id",
        "start, stop, exception",
        "",
        "str",
        "the same value as `telemetry_span_context`",
    ),
    _SpanKey(
        "parent_span_id",
        "start, stop, exception",
        "",
        "str or None",
        "`span_id` of the enclosing span in the same worker; None at the top",
    ),
    _SpanKey(
        "kind",
        "exception",
        "str",
        "str",
        '`"error"` for an `Exception`, `"exit"` for a cancellation or another `BaseException`',
    ),
    _SpanKey(
        "error_type",
        "exception",
        "str",
        "str",
        "the exception's class name, `type(exc).__name__`",
    ),
    _SpanKey(
        "error_message",
        "exception",
        "str",
        "str",
        "`str(exc)`; in a worker, its first 1024 characters",
    ),
    _SpanKey(
        "reason",
        "exception",
        "BaseException",
        "",
        "the exception itself, as in `:telemetry`; objects do not cross the process "
        "boundary, so worker spans carry only `error_type` and `error_message`",
    ),
    _SpanKey("stacktrace", "exception", "TracebackType or None", "", "the exception's traceback"),
)
"""The keys ``span`` adds to the caller's metadata, in the application and in a worker."""


def catalog_event(name: EventName) -> EventSpec:
    """The catalog entry of ``name``; ``KeyError`` if pypit does not emit it."""
    return _BY_NAME[name]


class UnknownEventWarning(UserWarning):
    """A handler was attached to a name that pypit never emits, under one of its roots:
    ``("pypit", ...)``, the bus's own ``("telemetry", ...)``, or ``pypit`` in another case
    (``("PYPIT", ...)``: names are case-sensitive).

    Most likely a typo: the message names the closest event of the catalog. The
    handler is attached all the same, since an application may attach ahead of
    a newer pypit; ``warnings.filterwarnings("ignore", category=UnknownEventWarning)``
    silences it. Names under ``("pypit", "python", ...)`` are never warned
    about: a pool may allow any worker event.
    """


def _worker_event(name: EventName) -> bool:
    return len(name) > 2 and name[0] == "pypit" and name[1] == "python"


def _never_emitted(name: EventName) -> bool:
    """Whether ``name`` is under one of pypit's roots and no event of pypit can have it."""
    root = name[0]
    if root == "pypit":
        return name not in _BY_NAME and not _worker_event(name)
    if root == "telemetry":
        return name not in _BY_NAME
    return root.lower() == "pypit"


def warn_unknown(handler_id: str, names: Iterable[EventName]) -> None:
    """Warn about each name under pypit's roots that is not in the catalog (see
    :class:`UnknownEventWarning`)."""
    for name in names:
        if _never_emitted(name):
            warnings.warn(_unknown(handler_id, name), UnknownEventWarning, stacklevel=_stacklevel())


def _unknown(handler_id: str, name: EventName) -> str:
    fixed = ("pypit", *name[1:]) if name[0] != "pypit" and name[0].lower() == "pypit" else name
    case = " (names are case-sensitive)" if fixed != name else ""
    below = [spec.name for spec in CATALOG if spec.name[: len(name)] == name]
    if case and (fixed in _BY_NAME or _worker_event(fixed)):
        hint = f"did you mean {fixed!r}?{case}"
    elif below:
        events = f"{len(below)} events, such as {below[0]!r}," if below[1:] else repr(below[0])
        hint = (
            f"it is a prefix of {events} and a handler gets the events of the exact names it "
            "is attached to (attach_many takes several)"
        )
    else:
        dotted = {".".join(spec.name): spec.name for spec in CATALOG}
        close = difflib.get_close_matches(".".join(fixed), dotted, n=1)
        hint = (
            f"did you mean {dotted[close[0]]!r}?{case}"
            if close
            else f"no event of pypit is close{case}"
        )
    return (
        f"handler {handler_id!r} is attached to {name!r}, which pypit never emits: {hint} "
        "(attached all the same; pypit.telemetry.CATALOG and docs/events.md list the events)"
    )


def _stacklevel() -> int:
    """The ``stacklevel`` that makes the caller's warning point at the first frame outside
    pypit: the application's attach, even when it went through a reporter or a capture."""
    level = 1
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").split(".")[0] == "pypit":
        frame = frame.f_back
        level += 1
    return level


def _typed(key: MetadataKey) -> str:
    kind = f"{key.type} or None" if key.nullable and key.type != "Any" else key.type
    return f"`{key.name}` ({kind})"


def render_markdown() -> str:
    """The ``docs/events.md`` page, generated from :data:`CATALOG`."""
    lines = [
        "# Events",
        "",
        "<!-- Generated from pypit/telemetry/_catalog.py by `make docs`; do not edit. -->",
        "",
        "Every event pypit emits, with its exact measurement and metadata keys. Attach",
        "handlers with `pypit.telemetry.attach`; the catalog is also available in code as",
        "`pypit.telemetry.CATALOG`.",
        "",
        "Durations (`duration`, `lifetime`, `queue_time`, `downtime`) and `monotonic_time` are",
        "integer nanoseconds of `time.monotonic_ns()`; `system_time` is integer nanoseconds",
        "since the epoch (`time.time_ns()`); sizes are bytes. Each metadata key is shown with",
        "the type of its value (`or None` where it may be `None`). `worker_id` is stable for a",
        'pool slot across restarts (`"<pool_name>_worker_<n>"`), so it is safe as a metric tag.',
        "",
        "`reason` is a `str` in every event but two, where it follows `:telemetry`'s",
        "convention and is the exception object itself: `rpc.call.exception` and",
        "`telemetry.handler.failure` (and the `exception` event of every span of your own, see",
        "[Spans](#spans)). For text, read `error_message` (a `str`) where it exists, or",
        '`str(metadata["reason"])`. `error_type` is the exception\'s class name; in',
        "`python.call.exception` it is qualified by its module (`myapp.errors.Invalid`; bare",
        "for builtins).",
        "",
        "Workers on Ray (`ray=RayWorkers(...)`, see [scaling](scaling.md)) emit the same",
        "events with the same keys. There `node` is the id of the Ray node the worker runs",
        "on (the pool's host name elsewhere), `worker_pid`, `python_pid`, `previous_pid` and",
        "`new_pid` are pids on that node, and `exit_code` is `None` where Ray has no exit",
        "status: a worker whose actor died (`ray.kill`, its node lost) ends with `reason`",
        "`killed` and `exit_code` `None`; a worker that exits or is killed on its node has its",
        "real status, which its actor reports.",
    ]
    sections = (
        ("Pool", ("pypit", "pool")),
        ("Calls over the channel", ("pypit", "rpc")),
        ("From inside the workers", ("pypit", "python")),
        ("The bus itself", ()),
    )
    seen: set[EventName] = set()
    for title, prefix in sections:
        lines += ["", f"## {title}", ""]
        lines += ["| event | measurements | metadata | when |", "|---|---|---|---|"]
        for spec in CATALOG:
            if spec.name in seen or spec.name[: len(prefix)] != prefix:
                continue
            seen.add(spec.name)
            measurements = ", ".join(f"`{m.name}` ({m.unit})" for m in spec.measurements)
            metadata = ", ".join(_typed(key) for key in spec.metadata)
            if spec.open:
                measurements = f"as emitted, e.g. {measurements}"
                metadata = f"as emitted + {metadata}"
            name = ", ".join(f'"{segment}"' for segment in spec.name)
            lines.append(f"| `({name})` | {measurements} | {metadata} | {spec.when} |")
    lines += [
        "",
        "Worker events outside the catalog are accepted only when the application allowlists",
        'them (`a.b.c` arrives as `("pypit", "python", "a", "b", "c")`, as emitted plus',
        "`pool_name, worker_id, python_pid`); anything refused is counted in",
        '`("pypit", "telemetry", "dropped")`.',
        "",
        'Attaching a handler to a name under `("pypit", ...)` or `("telemetry", ...)` that is',
        "not on this page, or to one whose first segment is `pypit` in another case",
        '(`("PYPIT", ...)`: names are case-sensitive), a typo most likely, warns with',
        "`pypit.telemetry.UnknownEventWarning`, naming the closest event; the handler is",
        'attached all the same. Names under `("pypit", "python", ...)` are not checked: a pool',
        "may allow any worker event.",
        "",
        "## Spans",
        "",
        "`pypit.telemetry.span(prefix, metadata)` in the application and",
        "`pypit.worker.telemetry.span(name, metadata)` inside a worker both emit a start event,",
        "then a stop or an exception event, with the caller's metadata plus the keys below, so",
        "one handler serves both: pair a span's events with `telemetry_span_context`, and read",
        "a failure from `kind`, `error_type` and `error_message`. The application's span",
        "follows `:telemetry` (start `monotonic_time, system_time`; stop and exception",
        "`duration, monotonic_time`; the stop metadata replaces the start metadata when the",
        "code sets it); a worker's span arrives as",
        '`("pypit", "python", *name.split("."), phase)` (start `system_time`; stop and',
        "exception `duration`) with the pool's three keys added.",
        "",
        "| key | in | application (`pypit.telemetry.span`) | worker (`telemetry.span`) | meaning |",
        "|---|---|---|---|---|",
    ]
    for key in SPAN_KEYS:
        parent = key.parent or "absent"
        worker = key.worker or "absent"
        lines.append(f"| `{key.name}` | {key.events} | {parent} | {worker} | {key.meaning} |")
    lines.append("")
    return "\n".join(lines)

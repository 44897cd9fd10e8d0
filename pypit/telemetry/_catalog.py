"""The event catalog as data: every event pypit emits, with its exact keys.

Users write dashboards against these names and keys, so the catalog is a
contract. The documentation page ``docs/events.md`` is generated from this
module (``python -m pypit.telemetry > docs/events.md``) and a test fails when the two
drift; the tests of each emitter check the emitted keys against the entry here.
"""

from __future__ import annotations

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
class EventSpec:
    """One event of the catalog.

    ``measurements`` and ``metadata`` are the exact keys an emitted event
    carries; ``nullable`` names the metadata keys whose value may be ``None``.
    Where ``open`` is true (user events shipped from workers) the keys are the
    ones the emitter chose, plus ``metadata``.
    """

    name: EventName
    measurements: tuple[Measurement, ...]
    metadata: tuple[str, ...]
    when: str
    nullable: frozenset[str] = frozenset()
    open: bool = False

    @property
    def measurement_keys(self) -> frozenset[str]:
        return frozenset(m.name for m in self.measurements)

    @property
    def metadata_keys(self) -> frozenset[str]:
        return frozenset(self.metadata)


def _m(*pairs: tuple[str, str]) -> tuple[Measurement, ...]:
    return tuple(Measurement(name, unit) for name, unit in pairs)


_POOL: Final = ("pypit", "pool")
_RPC: Final = ("pypit", "rpc")
_PYTHON: Final = ("pypit", "python")
_WORKER_KEYS: Final = ("pool_name", "worker_id", "python_pid")
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
        ("pool_name", "adapter", "node"),
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
        ("pool_name",),
        "every `status_interval` (default 5 s; 0 disables) and on `pool.emit_status()`",
    ),
    EventSpec(
        (*_POOL, "queue", "enqueued"),
        _m(("queue_depth", COUNT), ("system_time", EPOCH)),
        ("pool_name", "command", "request_id", "correlation_id", "session_id"),
        "a request cannot start at once: it waits in the pool's queue, or in a busy worker "
        "that will run it next",
        nullable=frozenset({"session_id"}),
    ),
    EventSpec(
        (*_POOL, "queue", "dequeued"),
        _m(("queue_time", NANOSECONDS), ("queue_depth", COUNT)),
        ("pool_name", "command", "request_id", "correlation_id", "worker_id"),
        "a waiting request starts on a worker; for one that waited in its worker, this comes "
        "with its answer, `queue_time` still the time until it started",
    ),
    EventSpec(
        (*_POOL, "queue", "timeout"),
        _m(("queue_time", NANOSECONDS), ("queue_depth", COUNT)),
        ("pool_name", "command", "request_id", "correlation_id"),
        "a waiting request's queue deadline (or deadline) passed; it never ran",
    ),
    EventSpec(
        (*_POOL, "saturated"),
        _m(("queue_depth", COUNT), ("max_queue_size", COUNT)),
        ("pool_name", "command", "available_workers", "busy_workers"),
        "a request is rejected because the queue is full",
    ),
    EventSpec(
        (*_POOL, "worker", "spawn_started"),
        _m(("system_time", EPOCH)),
        ("pool_name", "worker_id", "reason"),
        "a worker process is being started; `reason` is `initial`, `restart` or `recycle`",
    ),
    EventSpec(
        (*_POOL, "worker", "spawned"),
        _m(("duration", NANOSECONDS), ("system_time", EPOCH)),
        ("node", "pool_name", "worker_id", "worker_pid", "python_pid", "mode"),
        'the worker finished its handshake and takes work; `mode` is `"process"`',
    ),
    EventSpec(
        (*_POOL, "worker", "spawn_failed"),
        _m(("duration", NANOSECONDS), ("system_time", EPOCH)),
        ("pool_name", "worker_id", "reason", "exit_code"),
        "the start or handshake failed",
        nullable=frozenset({"exit_code"}),
    ),
    EventSpec(
        (*_POOL, "worker", "terminated"),
        _m(("lifetime", NANOSECONDS), ("total_commands", COUNT)),
        ("node", "pool_name", "worker_id", "worker_pid", "reason", "planned", "exit_code"),
        "a worker process is gone, for any reason; `planned` is true for shutdown and recycling",
        nullable=frozenset({"exit_code"}),
    ),
    EventSpec(
        (*_POOL, "worker", "restarted"),
        _m(("downtime", NANOSECONDS), ("restart_count", COUNT)),
        ("pool_name", "worker_id", "previous_pid", "new_pid", "reason"),
        "the replacement of an unplanned termination is ready",
    ),
    EventSpec(
        (*_POOL, "worker", "degraded"),
        _m(("failed_starts", COUNT), ("system_time", EPOCH)),
        ("pool_name", "worker_id", "reason"),
        "a slot's start failed: it serves nothing until a start succeeds, and is retried "
        "with back-off meanwhile; `reason` says what the start failed with",
    ),
    EventSpec(
        (*_POOL, "worker", "recovered"),
        _m(("downtime", NANOSECONDS), ("failed_starts", COUNT)),
        ("pool_name", "worker_id", "worker_pid"),
        "a degraded slot's worker got ready: it serves again",
    ),
    EventSpec(
        (*_POOL, "worker", "recycled"),
        _m(("lifetime", NANOSECONDS), ("total_commands", COUNT), ("rss_bytes", BYTES)),
        ("pool_name", "worker_id", "reason"),
        "a worker was retired on purpose (`max_requests`, `ttl`, `memory`, `manual`), "
        "then `terminated` follows with `planned=True`",
    ),
    # -- rpc ----------------------------------------------------------------
    EventSpec(
        (*_RPC, "call", "start"),
        _m(("monotonic_time", MONOTONIC), ("system_time", EPOCH)),
        _RPC_CALL_KEYS,
        "the parent sends a call to a worker",
        nullable=frozenset({"session_id"}),
    ),
    EventSpec(
        (*_RPC, "call", "stop"),
        _m(
            ("duration", NANOSECONDS),
            ("monotonic_time", MONOTONIC),
            ("request_bytes", BYTES),
            ("response_bytes", BYTES),
        ),
        _RPC_CALL_KEYS,
        "a result came back",
        nullable=frozenset({"session_id"}),
    ),
    EventSpec(
        (*_RPC, "call", "exception"),
        _m(("duration", NANOSECONDS), ("monotonic_time", MONOTONIC)),
        (*_RPC_CALL_KEYS, "kind", "reason", "stacktrace", "error_type"),
        "the caller gets an error: tool error, crash, timeout or cancellation",
        nullable=frozenset({"session_id", "stacktrace"}),
    ),
    EventSpec(
        (*_RPC, "stream", "opened"),
        _m(("system_time", EPOCH)),
        ("pool_name", "worker_id", "command", "stream_id", "correlation_id"),
        "a streaming call starts on a worker",
    ),
    EventSpec(
        (*_RPC, "stream", "message"),
        _m(("bytes", BYTES), ("sequence_number", COUNT)),
        ("pool_name", "worker_id", "stream_id"),
        "a chunk of a stream arrives",
    ),
    EventSpec(
        (*_RPC, "stream", "closed"),
        _m(("duration", NANOSECONDS), ("message_count", COUNT)),
        ("pool_name", "worker_id", "stream_id", "reason"),
        "a stream ends; `reason` is `complete`, `cancelled` or `error`",
    ),
    EventSpec(
        (*_RPC, "connection", "established"),
        _m(("duration", NANOSECONDS), ("system_time", EPOCH)),
        _WORKER_KEYS,
        "a worker's channel is connected",
    ),
    EventSpec(
        (*_RPC, "connection", "lost"),
        _m(("system_time", EPOCH)),
        (*_WORKER_KEYS, "reason"),
        "a worker's channel broke or closed",
    ),
    EventSpec(
        (*_RPC, "connection", "reconnected"),
        _m(("downtime", NANOSECONDS)),
        _WORKER_KEYS,
        "a worker whose channel broke connected again",
    ),
    # -- python (emitted inside the workers) --------------------------------
    EventSpec(
        (*_PYTHON, "call", "start"),
        _m(("system_time", EPOCH)),
        _PYTHON_CALL_KEYS,
        "the worker starts a command",
    ),
    EventSpec(
        (*_PYTHON, "call", "stop"),
        _m(("duration", NANOSECONDS)),
        _PYTHON_CALL_KEYS,
        "the worker finished a command",
    ),
    EventSpec(
        (*_PYTHON, "call", "exception"),
        _m(("duration", NANOSECONDS)),
        (*_PYTHON_CALL_KEYS, "error_type", "error_message"),
        "the command's tool raised, or the call was cancelled (`error_type` `Cancelled`)",
    ),
    *(
        EventSpec(
            (*_PYTHON, "tool", "execution", phase),
            _m(("duration", NANOSECONDS), ("bytes", BYTES)),
            _WORKER_KEYS,
            f'user code: `telemetry.emit("tool.execution.{phase}", ...)`; '
            "measurements and metadata as emitted (conventionally `duration`, `bytes`)",
            open=True,
        )
        for phase in ("start", "stop", "exception")
    ),
    EventSpec(
        (*_PYTHON, "memory", "sampled"),
        _m(("rss_bytes", BYTES), ("vms_bytes", BYTES)),
        _WORKER_KEYS,
        "every `sample_interval` (default 10 s; 0 disables)",
    ),
    EventSpec(
        (*_PYTHON, "cpu", "sampled"),
        _m(("cpu_percent", PERCENT)),
        _WORKER_KEYS,
        "every `sample_interval` (default 10 s; 0 disables)",
    ),
    # -- the bus itself -----------------------------------------------------
    EventSpec(
        ("telemetry", "handler", "failure"),
        _m(("monotonic_time", MONOTONIC), ("system_time", EPOCH)),
        ("event_name", "handler_id", "handler_config", "kind", "reason", "stacktrace"),
        "a handler raised; it was detached from all its events",
        nullable=frozenset({"handler_config", "stacktrace"}),
    ),
    EventSpec(
        ("pypit", "telemetry", "dropped"),
        _m(("count", COUNT)),
        ("pool_name", "worker_id", "reason", "event_name"),
        "worker events were refused or lost (`unknown_event`, `invalid_measurements`, "
        "`invalid_metadata`, `buffer_full`); one event per reason per flush",
        nullable=frozenset({"event_name"}),
    ),
)

_BY_NAME: Final = {spec.name: spec for spec in CATALOG}


def catalog_event(name: EventName) -> EventSpec:
    """The catalog entry of ``name``; ``KeyError`` if pypit does not emit it."""
    return _BY_NAME[name]


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
        "since the epoch (`time.time_ns()`); sizes are bytes. Metadata keys marked `?` may be",
        "`None`. `worker_id` is stable for a pool slot across restarts",
        '(`"<pool_name>_worker_<n>"`), so it is safe as a metric tag.',
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
            metadata = ", ".join(
                f"`{key}`?" if key in spec.nullable else f"`{key}`" for key in spec.metadata
            )
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
    ]
    return "\n".join(lines)

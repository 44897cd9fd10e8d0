"""The pool's events: their names, and one function per event that builds and emits it.

This is the one place on the pool's side that knows the catalog's ``pool.*``
and ``rpc.*`` events. Each function checks for handlers before it builds a
measurement dict, so an event nobody listens to costs a lookup. The per-call
events (``rpc.call.*``, the queue's) look their handlers up in the registry's
table once and dispatch directly: with handlers attached, that is most of what
telemetry costs a call.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from pypit.telemetry import _registry
from pypit.telemetry._registry import _dispatch, execute, has_handlers
from pypit.telemetry._span import error_message

if TYPE_CHECKING:
    from pypit.pool._request import Request

NODE: Final = socket.gethostname()

INITIALIZED: Final = ("pypit", "pool", "initialized")
STATUS: Final = ("pypit", "pool", "status")
ENQUEUED: Final = ("pypit", "pool", "queue", "enqueued")
DEQUEUED: Final = ("pypit", "pool", "queue", "dequeued")
QUEUE_TIMEOUT: Final = ("pypit", "pool", "queue", "timeout")
SATURATED: Final = ("pypit", "pool", "saturated")
SPAWN_STARTED: Final = ("pypit", "pool", "worker", "spawn_started")
SPAWNED: Final = ("pypit", "pool", "worker", "spawned")
SPAWN_FAILED: Final = ("pypit", "pool", "worker", "spawn_failed")
TERMINATED: Final = ("pypit", "pool", "worker", "terminated")
RESTARTED: Final = ("pypit", "pool", "worker", "restarted")
RECYCLED: Final = ("pypit", "pool", "worker", "recycled")
SLOT_DEGRADED: Final = ("pypit", "pool", "worker", "degraded")
SLOT_RECOVERED: Final = ("pypit", "pool", "worker", "recovered")
CALL_START: Final = ("pypit", "rpc", "call", "start")
CALL_STOP: Final = ("pypit", "rpc", "call", "stop")
CALL_EXCEPTION: Final = ("pypit", "rpc", "call", "exception")
STREAM_OPENED: Final = ("pypit", "rpc", "stream", "opened")
STREAM_MESSAGE: Final = ("pypit", "rpc", "stream", "message")
STREAM_CLOSED: Final = ("pypit", "rpc", "stream", "closed")
CONNECTION_ESTABLISHED: Final = ("pypit", "rpc", "connection", "established")
CONNECTION_LOST: Final = ("pypit", "rpc", "connection", "lost")
RECONNECTED: Final = ("pypit", "rpc", "connection", "reconnected")
DROPPED: Final = ("pypit", "telemetry", "dropped")


class TraceHook(Protocol):
    """What a tracing bridge needs from the pool (see pypit.telemetry.otel)."""

    def capture(self, request_id: int) -> None:
        """Called in the caller's context when the call is made."""

    def inject(self, request_id: int) -> dict[str, str] | None:
        """Called once ``rpc.call.start`` was emitted: headers to send to the worker."""


trace_hook: TraceHook | None = None
"""The installed tracing bridge, if any."""


# -- calls -----------------------------------------------------------------------------


def call_started(pool_name: str, worker_id: str, request: Request) -> None:
    """``rpc.call.start``; keeps the call's metadata for its stop or exception."""
    table = _registry._table
    if CALL_START in table or CALL_STOP in table or CALL_EXCEPTION in table:
        request.started = now = request.sent_at
        request.metadata = {
            "pool_name": pool_name,
            "worker_id": worker_id,
            "command": request.command,
            "request_id": request.request_id,
            "correlation_id": request.correlation_id,
            "session_id": request.session_id,
            "telemetry_span_context": request.request_id,
        }
        entries = table.get(CALL_START)
        if entries:
            _dispatch(
                entries,
                CALL_START,
                {"monotonic_time": now, "system_time": time.time_ns()},
                request.metadata,
            )


def call_stopped(request: Request) -> None:
    if request.started and (entries := _registry._table.get(CALL_STOP)):
        now = time.monotonic_ns()
        _dispatch(
            entries,
            CALL_STOP,
            {
                "duration": now - request.started,
                "monotonic_time": now,
                "request_bytes": len(request.frame),
                "response_bytes": request.size,
                "items": request.inputs,
                "failed_items": request.failed_items,
            },
            request.metadata,
        )


def call_failed(request: Request, exc: BaseException) -> None:
    if request.started and has_handlers(CALL_EXCEPTION):
        now = time.monotonic_ns()
        execute(
            CALL_EXCEPTION,
            {"duration": now - request.started, "monotonic_time": now, "items": request.inputs},
            {
                **request.metadata,
                "kind": "error" if isinstance(exc, Exception) else "exit",
                "reason": exc,
                "stacktrace": exc.__traceback__,
                "error_type": type(exc).__name__,
                "error_message": error_message(exc),
            },
        )


# -- the queue -------------------------------------------------------------------------


def enqueued(pool_name: str, request: Request, queue_depth: int) -> None:
    if entries := _registry._table.get(ENQUEUED):
        _dispatch(
            entries,
            ENQUEUED,
            {"queue_depth": queue_depth, "system_time": time.time_ns()},
            {
                "pool_name": pool_name,
                "command": request.command,
                "request_id": request.request_id,
                "correlation_id": request.correlation_id,
                "session_id": request.session_id,
            },
        )


def dequeued(
    pool_name: str, worker_id: str, request: Request, queue_time: int, queue_depth: int
) -> None:
    if entries := _registry._table.get(DEQUEUED):
        _dispatch(
            entries,
            DEQUEUED,
            {"queue_time": queue_time, "queue_depth": queue_depth},
            {
                "pool_name": pool_name,
                "command": request.command,
                "request_id": request.request_id,
                "correlation_id": request.correlation_id,
                "worker_id": worker_id,
            },
        )


def queue_timed_out(pool_name: str, request: Request, queue_time: int, queue_depth: int) -> None:
    if has_handlers(QUEUE_TIMEOUT):
        execute(
            QUEUE_TIMEOUT,
            {"queue_time": queue_time, "queue_depth": queue_depth},
            {
                "pool_name": pool_name,
                "command": request.command,
                "request_id": request.request_id,
                "correlation_id": request.correlation_id,
            },
        )


def saturated(
    pool_name: str,
    command: str,
    queue_depth: int,
    max_queue_size: int,
    available_workers: int,
    busy_workers: int,
) -> None:
    if has_handlers(SATURATED):
        execute(
            SATURATED,
            {"queue_depth": queue_depth, "max_queue_size": max_queue_size},
            {
                "pool_name": pool_name,
                "command": command,
                "available_workers": available_workers,
                "busy_workers": busy_workers,
            },
        )


# -- the pool and its workers ------------------------------------------------------------


def emit(event: tuple[str, ...], measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Emit an event of the pool's life (rare: the dicts are built either way)."""
    if has_handlers(event):
        execute(event, measurements, metadata)


def listened(event: tuple[str, ...]) -> bool:
    """Whether anyone listens to ``event``: check before building what it carries."""
    return has_handlers(event)

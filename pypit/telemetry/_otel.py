"""The OpenTelemetry bridge: rpc.call and python.call spans as OpenTelemetry spans.

``rpc.call`` becomes a CLIENT span named ``pypit.rpc.call``, a child of the
span active where the caller made the call. ``python.call`` becomes a SERVER
span named ``pypit.python.call``, a child of that client span. The W3C trace
context of the client span also travels to the worker with the call, where
``pypit.worker.telemetry.get_trace_context()`` returns it. Attributes come
from the events' metadata (``pypit.command``, ``pypit.worker_id``, ...); an
exception event sets the span's status to error.

Needs the ``otel`` extra.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from pypit.pool import _events as _pool_events
from pypit.telemetry._registry import EventName, Measurements, Metadata, attach_many, detach

_RPC: Final = ("pypit", "rpc", "call")
_PYTHON: Final = ("pypit", "python", "call")
_QUEUE_TIMEOUT: Final = ("pypit", "pool", "queue", "timeout")
_TERMINATED: Final = ("pypit", "pool", "worker", "terminated")
_EVENTS: Final = [
    *((*prefix, phase) for prefix in (_RPC, _PYTHON) for phase in ("start", "stop", "exception")),
    _QUEUE_TIMEOUT,
    _TERMINATED,
]
_REMEMBERED: Final = 10_000
_ids = itertools.count(1)


class OpenTelemetryBridge:
    """Turns pypit's call spans into OpenTelemetry spans while started.

    ``tracer_provider``: where spans go (default: the global provider). Use
    :func:`configure_opentelemetry` to export over OTLP/HTTP.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        #: The provider given, or None for the global one. The bridge made by
        #: :func:`configure_opentelemetry` owns its provider: shut it down there.
        self.provider: Any = tracer_provider
        self._tracer = trace.get_tracer("pypit", tracer_provider=tracer_provider)
        self._handler_id = f"pypit.otel.{next(_ids)}"
        # The calls in flight. Every entry leaves when its call ends, however it
        # ends: a caller's context at rpc.call.start or the queue's timeout; a
        # client span at rpc.call.stop or exception; a server span at
        # python.call.stop or exception, at the end of its rpc.call (the worker's
        # end may never come: it crashed, or its events were denied), or when its
        # worker terminated. Only a call that ends without any event naming it
        # (rejected by a full queue, cancelled while it waited, a stream) leaves a
        # caller's context behind, so that map is also bounded.
        self._callers: OrderedDict[int, Any] = OrderedDict()
        self._clients: OrderedDict[int, Any] = OrderedDict()
        self._servers: dict[tuple[str, int], tuple[Any, int]] = {}
        self._started = False

    # -- the pool's trace hook ---------------------------------------------------------

    def capture(self, request_id: int) -> None:
        self._callers[request_id] = otel_context.get_current()
        if len(self._callers) > _REMEMBERED:
            self._callers.popitem(last=False)

    def inject(self, request_id: int) -> dict[str, str] | None:
        span = self._clients.get(request_id)
        if span is None:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    # -- events ----------------------------------------------------------------------

    def _handle(
        self, event: EventName, measurements: Measurements, metadata: Metadata, config: Any
    ) -> None:
        if event == _TERMINATED:
            self._worker_gone(str(metadata.get("worker_id")), str(metadata.get("reason")))
            return
        request_id = metadata.get("request_id")
        if not isinstance(request_id, int):
            return
        if event == _QUEUE_TIMEOUT:
            self._callers.pop(request_id, None)
            return
        prefix, phase = event[:3], event[3]
        if prefix == _RPC:
            self._rpc(phase, request_id, measurements, metadata)
        else:
            self._python(phase, request_id, measurements, metadata)

    def _rpc(
        self, phase: str, request_id: int, measurements: Measurements, metadata: Metadata
    ) -> None:
        if phase == "start":
            parent = self._callers.pop(request_id, None)
            span = self._tracer.start_span(
                "pypit.rpc.call",
                context=parent,
                kind=SpanKind.CLIENT,
                attributes=_attributes(metadata),
                start_time=int(measurements["system_time"]),
            )
            self._clients[request_id] = span
            if len(self._clients) > _REMEMBERED:
                self._clients.popitem(last=False)[1].end()
            return
        self._callers.pop(request_id, None)
        span = self._clients.pop(request_id, None)
        server = self._servers.pop((str(metadata.get("worker_id")), request_id), None)
        if span is None and server is None:
            return
        error_type = str(metadata.get("error_type"))
        message = str(metadata.get("error_message"))
        ended: int | None = None
        if span is not None:
            started = getattr(span, "start_time", None) or 0
            ended = started + int(measurements["duration"])
            if phase == "exception":
                _record_error(span, error_type, message)
            span.end(end_time=ended)
        if server is not None:
            # The worker's end of the call never came (its worker crashed, or its
            # events were denied): the server span ends with the call.
            server_span, server_started = server
            if phase == "exception":
                _record_error(server_span, error_type, message)
            server_span.end(end_time=max(server_started, ended or time.time_ns()))

    def _python(
        self, phase: str, request_id: int, measurements: Measurements, metadata: Metadata
    ) -> None:
        key = (str(metadata.get("worker_id")), request_id)
        if phase == "start":
            client = self._clients.get(request_id)
            parent = trace.set_span_in_context(client) if client is not None else None
            start_time = int(measurements["system_time"])
            span = self._tracer.start_span(
                "pypit.python.call",
                context=parent,
                kind=SpanKind.SERVER,
                attributes=_attributes(metadata),
                start_time=start_time,
            )
            self._servers[key] = (span, start_time)
            return
        entry = self._servers.pop(key, None)
        if entry is None:
            return
        span, start_time = entry
        if phase == "exception":
            _record_error(span, str(metadata.get("error_type")), str(metadata.get("error_message")))
        span.end(end_time=start_time + int(measurements["duration"]))

    def _worker_gone(self, worker_id: str, reason: str) -> None:
        """A worker terminated: the server spans it left open end now."""
        gone = [key for key in self._servers if key[0] == worker_id]
        if not gone:
            return
        now = time.time_ns()
        for key in gone:
            span, started = self._servers.pop(key)
            _record_error(span, "WorkerTerminated", f"the worker ended ({reason}) during the call")
            span.end(end_time=max(started, now))

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        if _pool_events.trace_hook is not None:
            raise RuntimeError("another tracing bridge is installed")
        attach_many(self._handler_id, _EVENTS, self._handle)
        _pool_events.trace_hook = self
        self._started = True

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        detach(self._handler_id)
        if _pool_events.trace_hook is self:
            _pool_events.trace_hook = None
        for span in self._clients.values():
            span.end()
        for span, _ in self._servers.values():
            span.end()
        self._clients.clear()
        self._servers.clear()
        self._callers.clear()

    def __enter__(self) -> OpenTelemetryBridge:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _attributes(metadata: Metadata) -> dict[str, Any]:
    return {
        f"pypit.{key}": value
        for key, value in metadata.items()
        if isinstance(value, str | int | float | bool) and key != "telemetry_span_context"
    }


def _record_error(span: Any, error_type: str, message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"))
    span.set_attribute("error.type", error_type)


def configure_opentelemetry(
    *,
    enabled: bool = True,
    endpoint: str = "http://localhost:4318",
    service_name: str = "pypit",
    batch: bool = True,
) -> OpenTelemetryBridge | None:
    """Export pypit's call spans over OTLP/HTTP to ``endpoint`` (default
    ``http://localhost:4318``).

    Builds its own tracer provider (the application's global provider is not
    touched) and returns the started bridge; call its ``stop()`` and the
    provider's ``shutdown()`` (``bridge.provider``) to flush. ``enabled=False``
    returns None.
    """
    if not enabled:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    bridge = OpenTelemetryBridge(provider)
    bridge.start()
    return bridge

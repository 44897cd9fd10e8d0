"""The OpenTelemetry bridge, end to end: spans exported over OTLP/HTTP to a local server."""

from __future__ import annotations

import http.server
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider

from pypit import ToolError, WorkerCrashedError, telemetry
from pypit.pool import open_pool
from pypit.telemetry.otel import OpenTelemetryBridge, configure_opentelemetry
from tests.pool.conftest import adapter, options, wait_until

pytestmark = pytest.mark.anyio


class Collector:
    """A local OTLP/HTTP endpoint that decodes what it receives."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.paths: list[str] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.paths.append(self.path)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        collector.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()
    running.thread.join()


def attributes(span: Any) -> dict[str, Any]:
    values = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = getattr(value, value.WhichOneof("value"))
    return values


async def test_spans_are_exported_with_parents_across_the_process_boundary(
    collector: Collector,
) -> None:
    """caller span → pypit.rpc.call (CLIENT) → pypit.python.call (SERVER), one trace,
    attributes from metadata, error status on a tool error; the worker got the context."""
    bridge = configure_opentelemetry(endpoint=collector.endpoint, batch=False)
    assert bridge is not None
    tracer = bridge.provider.get_tracer("test")
    try:
        async with open_pool(adapter("Traced"), **options()) as pool:
            with tracer.start_as_current_span("caller"):
                headers = await pool.execute("trace_context", correlation_id="corr-9")
                with pytest.raises(ToolError):
                    await pool.execute("fail")
    finally:
        bridge.stop()
        bridge.provider.shutdown()

    assert set(collector.paths) == {"/v1/traces"}
    by_name: dict[str, list[Any]] = {}
    for span in collector.spans:
        by_name.setdefault(span.name, []).append(span)
    (caller,) = by_name["caller"]
    clients = by_name["pypit.rpc.call"]
    servers = by_name["pypit.python.call"]
    assert len(clients) == len(servers) == 2
    assert {s.trace_id for s in collector.spans} == {caller.trace_id}
    assert {c.parent_span_id for c in clients} == {caller.span_id}
    client_ids = {c.span_id for c in clients}
    assert {s.parent_span_id for s in servers} == client_ids
    assert {c.kind for c in clients} == {3}  # SPAN_KIND_CLIENT
    assert {s.kind for s in servers} == {2}  # SPAN_KIND_SERVER

    ok_client = next(c for c in clients if attributes(c)["pypit.command"] == "trace_context")
    assert attributes(ok_client)["pypit.correlation_id"] == "corr-9"
    assert attributes(ok_client)["pypit.worker_id"] == "default_worker_1"
    assert ok_client.status.code == 0
    failed = [s for s in clients + servers if attributes(s)["pypit.command"] == "fail"]
    assert {s.status.code for s in failed} == {2}  # STATUS_CODE_ERROR
    assert any("ValueError" in s.status.message for s in failed)
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano for s in collector.spans)

    assert headers is not None
    trace_id = headers["traceparent"].split("-")[1]
    assert bytes.fromhex(trace_id) == caller.trace_id
    assert bytes.fromhex(headers["traceparent"].split("-")[2]) == ok_client.span_id


async def test_without_a_caller_span_the_call_starts_a_trace() -> None:
    """No active span: the client span is a root, the server span its child."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with OpenTelemetryBridge(provider):
        async with open_pool(adapter(), **options()) as pool:
            await pool.execute("identity", 1)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["pypit.rpc.call"].parent is None
    parent = spans["pypit.python.call"].parent
    assert parent is not None
    assert parent.span_id == spans["pypit.rpc.call"].context.span_id


def test_disabled_configuration_installs_nothing() -> None:
    """enabled=False returns None and leaves the pool untraced."""
    from pypit.pool import _events

    assert configure_opentelemetry(enabled=False) is None
    assert _events.trace_hook is None


RPC_CALL = ("pypit", "rpc", "call")
PYTHON_CALL = ("pypit", "python", "call")


def in_memory() -> tuple[Any, OpenTelemetryBridge]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, OpenTelemetryBridge(provider)


def in_flight(bridge: OpenTelemetryBridge) -> dict[str, int]:
    """How many entries each of the bridge's maps of calls in flight holds."""
    return {
        "callers": len(bridge._callers),
        "clients": len(bridge._clients),
        "servers": len(bridge._servers),
    }


def call_events(request_id: int, worker_id: str = "w_1") -> dict[str, Any]:
    return {
        "pool_name": "w",
        "worker_id": worker_id,
        "command": "hold",
        "request_id": request_id,
        "correlation_id": "c",
    }


def test_a_call_whose_worker_crashed_leaves_nothing_in_flight() -> None:
    """python.call.start arrived, then the worker died: rpc.call.exception ends the
    client span and the server span (both with an error), and every map is empty."""
    exporter, bridge = in_memory()
    with bridge:
        bridge.capture(1)
        meta = call_events(1)
        telemetry.execute((*RPC_CALL, "start"), {"system_time": 1_000}, meta)
        telemetry.execute((*PYTHON_CALL, "start"), {"system_time": 2_000}, meta)
        assert in_flight(bridge) == {"callers": 0, "clients": 1, "servers": 1}
        crash = WorkerCrashedError("worker w_1 was killed by SIGKILL")
        telemetry.execute(
            (*RPC_CALL, "exception"),
            {"duration": 9_000, "monotonic_time": 1},
            {
                **meta,
                "kind": "error",
                "reason": crash,
                "stacktrace": None,
                "error_type": "WorkerCrashedError",
                "error_message": str(crash),
            },
        )
        assert in_flight(bridge) == {"callers": 0, "clients": 0, "servers": 0}
        spans = {s.name: s for s in exporter.get_finished_spans()}

    assert set(spans) == {"pypit.rpc.call", "pypit.python.call"}
    for span in spans.values():
        assert span.status.description == "WorkerCrashedError: worker w_1 was killed by SIGKILL"
        assert span.end_time == 10_000


def test_a_terminated_worker_ends_the_server_spans_it_left_open() -> None:
    """A server span whose call ended nowhere else ends when its worker terminates, with
    an error naming the termination; the other worker's span stays open."""
    exporter, bridge = in_memory()
    with bridge:
        telemetry.execute((*PYTHON_CALL, "start"), {"system_time": 5}, call_events(7))
        telemetry.execute((*PYTHON_CALL, "start"), {"system_time": 5}, call_events(8, "w_2"))
        telemetry.execute(
            ("pypit", "pool", "worker", "terminated"),
            {"lifetime": 1, "total_commands": 1},
            {"worker_id": "w_1", "reason": "killed", "planned": False},
        )
        assert in_flight(bridge) == {"callers": 0, "clients": 0, "servers": 1}
        (span,) = exporter.get_finished_spans()

    assert span.attributes["pypit.request_id"] == 7
    assert span.status.description == (
        "WorkerTerminated: the worker ended (killed) during the call"
    )


def test_calls_that_end_normally_or_wait_too_long_leave_nothing_in_flight() -> None:
    """stop and exception clear the call's entries; a call that timed out in the queue
    (no rpc.call.start) clears its caller's context."""
    _, bridge = in_memory()
    with bridge:
        for request_id in (1, 2):
            bridge.capture(request_id)
            meta = call_events(request_id)
            telemetry.execute((*RPC_CALL, "start"), {"system_time": 1}, meta)
            telemetry.execute((*PYTHON_CALL, "start"), {"system_time": 1}, meta)
            phase = "stop" if request_id == 1 else "exception"
            telemetry.execute((*PYTHON_CALL, phase), {"duration": 1}, meta)
            telemetry.execute((*RPC_CALL, phase), {"duration": 2, "monotonic_time": 1}, meta)
        bridge.capture(3)
        assert in_flight(bridge) == {"callers": 1, "clients": 0, "servers": 0}
        telemetry.execute(
            ("pypit", "pool", "queue", "timeout"),
            {"queue_time": 1, "queue_depth": 0},
            {"pool_name": "w", "command": "hold", "request_id": 3, "correlation_id": "c"},
        )
        assert in_flight(bridge) == {"callers": 0, "clients": 0, "servers": 0}


async def test_a_real_worker_crash_leaves_nothing_in_flight(tmp_path: Path) -> None:
    """A worker killed while it runs a call whose start reached the parent: the bridge
    ends both spans with an error and keeps no entry for the call."""
    exporter, bridge = in_memory()
    with bridge:
        async with open_pool(adapter(), **options()) as pool:
            pid = await pool.execute("pid")

            async def doomed() -> None:
                with pytest.raises(WorkerCrashedError):
                    await pool.execute("hold", {"gate": str(tmp_path / "never")})

            async with anyio.create_task_group() as group:
                group.start_soon(doomed)
                await wait_until(lambda: len(bridge._servers) == 1, "the worker's call start")
                os.kill(pid, signal.SIGKILL)
            assert in_flight(bridge) == {"callers": 0, "clients": 0, "servers": 0}
            spans = [
                s
                for s in exporter.get_finished_spans()
                if s.attributes is not None and s.attributes.get("pypit.command") == "hold"
            ]

    assert sorted(s.name for s in spans) == ["pypit.python.call", "pypit.rpc.call"]
    assert all(s.status.status_code.name == "ERROR" for s in spans)

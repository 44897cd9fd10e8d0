"""The seed's "complete monitoring example", in Python.

Two handlers (slow calls, high queue depth) and five metrics served on
``/metrics`` for Prometheus and, with the pool's workers and its events, on a live
dashboard page, while a pool of the demo adapter works::

    python -m examples.monitoring --port 9568 --dashboard-port 9569 --seconds 30
"""

from __future__ import annotations

import argparse
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog

from pypit import PoolSaturatedError, ToolError, telemetry
from pypit.pool import open_pool
from pypit.telemetry import metrics

log = structlog.get_logger("monitoring")


def slow_calls(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
    if measurements["duration"] / 1_000_000 > 1000:
        log.warning(f"Slow call: {metadata['command']}")


def queue_depth(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
    depth = measurements["queue_depth"]
    if depth > 50:
        log.error(f"High queue depth: {depth}")


def definitions() -> list[metrics.Metric]:
    return [
        metrics.last_value("pypit.pool.status.queue_depth", tags=["pool_name"]),
        metrics.last_value("pypit.pool.status.available_workers", tags=["pool_name"]),
        metrics.summary(
            "pypit.python.call.stop.duration", unit=("native", "millisecond"), tags=["command"]
        ),
        metrics.counter("pypit.python.call.exception.count", tags=["error_type"]),
        metrics.counter("pypit.pool.worker.spawned.count", tags=["pool_name"]),
    ]


async def monitor(
    port: int,
    seconds: float | None,
    on_ready: Callable[[int, str], Awaitable[None]] | None = None,
    dashboard_port: int = 9569,
) -> None:
    """Attach the handlers, serve the metrics and the dashboard, and run a pool under
    load. ``on_ready`` gets the port of ``/metrics`` and the dashboard's address."""
    telemetry.attach("slow-calls", ("pypit", "python", "call", "stop"), slow_calls)
    telemetry.attach("queue-depth", ("pypit", "pool", "status"), queue_depth)
    try:
        with (
            metrics.PrometheusReporter(definitions(), port=port) as reporter,
            metrics.DashboardReporter(definitions(), port=dashboard_port) as dashboard,
        ):
            assert reporter.port is not None
            assert dashboard.url is not None
            print(f"metrics on http://127.0.0.1:{reporter.port}/metrics", flush=True)
            print(f"dashboard on {dashboard.url}", flush=True)
            async with (
                open_pool(
                    "examples.demo_adapter:DemoModel",
                    size=2,
                    name="monitored",
                    status_interval=0.2,
                    max_queue_size=64,
                ) as pool,
                dashboard.watch(pool),
            ):

                async def load() -> None:
                    while True:
                        with contextlib.suppress(ToolError, PoolSaturatedError):
                            if random.random() < 0.1:
                                await pool.execute("flaky")
                            else:
                                await pool.execute("predict", {"x": random.random()})
                        await anyio.sleep(0.005)

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(load)
                    if on_ready is not None:
                        await anyio.sleep(0.5)
                        await on_ready(reporter.port, dashboard.url)
                    elif seconds is None:
                        await anyio.sleep_forever()
                    else:
                        await anyio.sleep(seconds)
                    tasks.cancel_scope.cancel()
    finally:
        telemetry.detach("slow-calls")
        telemetry.detach("queue-depth")


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9568, help="/metrics for Prometheus")
    parser.add_argument("--dashboard-port", type=int, default=9569, help="the dashboard page")
    parser.add_argument("--seconds", type=float, default=None, help="default: until Ctrl-C")
    options = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(monitor, options.port, options.seconds, None, options.dashboard_port)


if __name__ == "__main__":
    cli()

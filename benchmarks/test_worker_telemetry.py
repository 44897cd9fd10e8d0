"""Worker telemetry: the cost of emit in a worker's code, and events delivered per second."""

from __future__ import annotations

import statistics
import time
from typing import Any

import anyio
from pytest_benchmark.fixture import BenchmarkFixture

from pypit import telemetry
from pypit.pool import open_pool
from pypit.worker import _telemetry

STOP = ("pypit", "python", "tool", "execution", "stop")
DROPPED = ("pypit", "telemetry", "dropped")


def test_emit_in_worker(benchmark: BenchmarkFixture) -> None:
    """telemetry.emit of an allowed, listened-to event, as a tool calls it."""
    state = _telemetry.WorkerTelemetry(_telemetry.EventBuffer(100_000))
    state.settings = _telemetry.Settings(listened=["tool.execution.stop"])
    emit = _telemetry.emit
    measurements = {"duration": 1234, "bytes": 5000}
    metadata = {"tool": "predict", "status": "success"}
    per_emit: list[float] = []
    _telemetry.current = state
    try:

        def batch() -> None:
            for _ in range(20):
                started = time.perf_counter()
                for _ in range(20_000):
                    emit("tool.execution.stop", measurements, metadata)
                per_emit.append((time.perf_counter() - started) / 20_000)
                while state.buffer.drain() is not None:
                    pass

        benchmark.pedantic(batch, rounds=1, iterations=1)
    finally:
        _telemetry.current = None
    benchmark.extra_info["ns_per_emit"] = round(statistics.median(per_emit) * 1e9)


def _delivered(command: str, args: dict[str, Any]) -> tuple[float, int, int]:
    received = [0]
    dropped = [0]

    def on_event(*_: Any) -> None:
        received[0] += 1

    def on_dropped(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        dropped[0] += measurements["count"]

    async def main() -> tuple[float, int, int]:
        async with open_pool("benchmarks.adapters:Emitter", size=2, status_interval=0) as pool:
            started = time.perf_counter()
            sent: list[int] = []

            async def run() -> None:
                sent.append(await pool.execute(command, args))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run)
                tasks.start_soon(run)
            while received[0] + dropped[0] < sum(sent):
                await anyio.sleep(0.001)
            return received[0] / (time.perf_counter() - started), received[0], dropped[0]

    telemetry.attach("bench-events", STOP, on_event)
    telemetry.attach("bench-dropped", DROPPED, on_dropped)
    try:
        return anyio.run(main, backend="asyncio")
    finally:
        telemetry.detach("bench-events")
        telemetry.detach("bench-dropped")


def test_events_delivered_at_100k_per_second(benchmark: BenchmarkFixture) -> None:
    """2 workers emitting 60k events/s each for 2 s: all delivered, none dropped."""
    results: list[tuple[float, int, int]] = []
    benchmark.pedantic(
        lambda: results.append(_delivered("emit_paced", {"rate": 60_000, "seconds": 2.0})),
        rounds=1,
        iterations=1,
    )
    rate, received, dropped = results[0]
    benchmark.extra_info.update(events_per_s=round(rate), received=received, dropped=dropped)


def test_events_delivered_flat_out(benchmark: BenchmarkFixture) -> None:
    """2 workers emitting as fast as they can: the most the parent takes in."""
    results: list[tuple[float, int, int]] = []
    benchmark.pedantic(
        lambda: results.append(_delivered("emit", {"n": 200_000})), rounds=1, iterations=1
    )
    rate, received, dropped = results[0]
    benchmark.extra_info.update(events_per_s=round(rate), received=received, dropped=dropped)

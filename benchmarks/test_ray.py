"""Workers on Ray beside local workers: what the cluster costs a call (information only,
no target; docs/scaling.md quotes the figures).

One local Ray (2 CPUs, no dashboard) for the module. Compare with
``test_round_trip_pypit`` and ``test_throughput_pypit`` of test_pool.py, measured
in the same run, and with a plain Ray actor, the floor of any design that calls
an actor per message.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.test_pool import CALLERS, _callers, record, run_async
from pypit.pool import RayWorkers, open_pool

ADAPTER = "benchmarks.adapters:Bench"
ROUND_TRIPS = 500
CALLS = 4000


@pytest.fixture(scope="module", autouse=True)
def _ray() -> Iterator[None]:
    directory = tempfile.mkdtemp(prefix="pypit-ray-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=directory,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


@ray.remote
class _Plain:
    async def identity(self, value: Any) -> Any:
        return value


def test_ray_round_trip_plain_actor(benchmark: BenchmarkFixture) -> None:
    """``ray.get`` of an async actor's method that returns its argument."""
    actor = _Plain.remote()  # type: ignore[attr-defined]
    latencies: list[float] = []

    def batch() -> None:
        for i in range(100):
            ray.get(actor.identity.remote(i))
        for i in range(ROUND_TRIPS):
            started = time.perf_counter()
            ray.get(actor.identity.remote(i))
            latencies.append(time.perf_counter() - started)

    benchmark.pedantic(batch, rounds=1, iterations=1)
    record(benchmark, latencies)
    ray.kill(actor)


def test_ray_round_trip_pypit(benchmark: BenchmarkFixture) -> None:
    """One worker on Ray, one caller: a call's round trip through the actor."""
    latencies: list[float] = []

    async def main() -> None:
        async with open_pool(ADAPTER, size=1, status_interval=0, ray=RayWorkers()) as pool:
            for i in range(100):
                await pool.execute("identity", i)
            for i in range(ROUND_TRIPS):
                started = time.perf_counter()
                await pool.execute("identity", i)
                latencies.append(time.perf_counter() - started)

    benchmark.pedantic(run_async, args=(main,), rounds=1, iterations=1)
    record(benchmark, latencies)


def test_ray_throughput_pypit(benchmark: BenchmarkFixture) -> None:
    """Two workers on Ray, CALLERS concurrent callers of a trivial call."""
    rates: list[float] = []

    async def main() -> None:
        async with open_pool(ADAPTER, size=2, status_interval=0, ray=RayWorkers()) as pool:
            await _callers(pool, 2 * CALLERS)
            for _ in range(3):
                rates.append(await _callers(pool, CALLS))

    benchmark.pedantic(run_async, args=(main,), rounds=1, iterations=1)
    benchmark.extra_info["tasks_per_s"] = round(statistics.median(rates))


def test_ray_open_to_first_result(benchmark: BenchmarkFixture) -> None:
    """``open_pool(size=2)`` on a running Ray to the first result: actors, workers, handshake."""
    times: list[float] = []

    async def main() -> None:
        for _ in range(3):
            started = time.perf_counter()
            async with open_pool(ADAPTER, size=2, status_interval=0, ray=RayWorkers()) as pool:
                await pool.execute("identity", 1)
                times.append(time.perf_counter() - started)

    benchmark.pedantic(run_async, args=(main,), rounds=1, iterations=1)
    benchmark.extra_info["open_ms"] = round(statistics.median(times) * 1e3, 1)

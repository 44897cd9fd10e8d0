"""pool.map against multiprocessing.Pool.map and ProcessPoolExecutor.map, and the parent's
memory while mapping a long generator.

Each peer maps the same 100,000 trivial inputs over 2 workers; inputs per second, median
of the rounds, go in ``extra_info`` for ``benchmarks/run.py``.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import anyio
import psutil
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.adapters import identity
from pypit.pool import open_pool, start_pool

ADAPTER = "benchmarks.adapters:Bench"
INPUTS = 100_000
ROUNDS = 5
SAME_CHUNKSIZE = 12_500
"""multiprocessing.Pool.map's own choice for 100,000 inputs on 2 workers (len / (4 * 2))."""
PPE_CHUNKSIZES = (1, 100, 1000, SAME_CHUNKSIZE)
LONG = 10_000_000


def rate(benchmark: BenchmarkFixture, run: Callable[[], list[Any]]) -> None:
    """Time ``run`` (which maps INPUTS inputs) ROUNDS times; inputs per second."""
    rates: list[float] = []

    def once() -> None:
        started = time.perf_counter()
        results = run()
        rates.append(INPUTS / (time.perf_counter() - started))
        assert len(results) == INPUTS

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["inputs_per_s"] = round(statistics.median(rates))


def test_map_pypit(benchmark: BenchmarkFixture) -> None:
    """The blocking pool's map, at multiprocessing's chunksize."""
    with start_pool(ADAPTER, size=2, status_interval=0) as pool:
        with pool.map("identity", range(1000)) as warm:
            list(warm)

        def run() -> list[Any]:
            with pool.map("identity", range(INPUTS), chunksize=SAME_CHUNKSIZE) as results:
                return list(results)

        rate(benchmark, run)


def test_map_pypit_default_chunksize(benchmark: BenchmarkFixture) -> None:
    """The blocking pool's map, choosing its frames itself."""
    with start_pool(ADAPTER, size=2, status_interval=0) as pool:
        with pool.map("identity", range(1000)) as warm:
            list(warm)

        def run() -> list[Any]:
            with pool.map("identity", range(INPUTS)) as results:
                return list(results)

        rate(benchmark, run)


def test_map_pypit_async(benchmark: BenchmarkFixture) -> None:
    """The async pool's map, at multiprocessing's chunksize, iterated with async for."""
    rates: list[float] = []

    async def main() -> None:
        async with open_pool(ADAPTER, size=2, status_interval=0) as pool:
            async with pool.map("identity", range(1000)) as warm:
                [r async for r in warm]
            for _ in range(ROUNDS):
                started = time.perf_counter()
                async with pool.map("identity", range(INPUTS), chunksize=SAME_CHUNKSIZE) as rs:
                    results = [r async for r in rs]
                rates.append(INPUTS / (time.perf_counter() - started))
                assert len(results) == INPUTS

    benchmark.pedantic(lambda: anyio.run(main), rounds=1, iterations=1)
    benchmark.extra_info["inputs_per_s"] = round(statistics.median(rates))


def test_map_mp_pool(benchmark: BenchmarkFixture) -> None:
    with multiprocessing.Pool(2) as pool:
        pool.map(identity, range(1000))
        rate(benchmark, lambda: pool.map(identity, range(INPUTS), chunksize=SAME_CHUNKSIZE))


def test_map_ppe_best_chunksize(benchmark: BenchmarkFixture) -> None:
    """ProcessPoolExecutor(2).map at each of a few chunksizes; the best one's rate."""
    best: dict[int, float] = {}
    with ProcessPoolExecutor(2) as executor:
        list(executor.map(identity, range(1000)))
        for chunksize in PPE_CHUNKSIZES:
            rates = []
            for _ in range(2 if chunksize == 1 else ROUNDS):
                started = time.perf_counter()
                results = list(executor.map(identity, range(INPUTS), chunksize=chunksize))
                rates.append(INPUTS / (time.perf_counter() - started))
                assert len(results) == INPUTS
            best[chunksize] = statistics.median(rates)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    chunksize = max(best, key=best.__getitem__)
    benchmark.extra_info["inputs_per_s"] = round(best[chunksize])
    benchmark.extra_info["best_chunksize"] = chunksize


def test_map_memory_is_flat(benchmark: BenchmarkFixture) -> None:
    """Map a generator of ten million inputs, sampling the parent's RSS every half million
    taken: the growth is the median of the last four samples less the median of four
    after the first million (start-up and the window filling). What a map holds is its
    window, so the samples swing by a few MB around a level instead of climbing."""
    process = psutil.Process()
    samples: list[int] = []
    seconds: list[float] = []

    def inputs() -> Iterator[int]:
        for i in range(LONG):
            if i % 500_000 == 0:
                samples.append(process.memory_info().rss)
            yield i

    def run() -> None:
        with start_pool(ADAPTER, size=2, status_interval=0) as pool:
            started = time.perf_counter()
            count = 0
            with pool.map("identity", inputs()) as results:
                for _ in results:
                    count += 1
            seconds.append(time.perf_counter() - started)
            assert count == LONG

    benchmark.pedantic(run, rounds=1, iterations=1)
    early = statistics.median(samples[2:6])
    late = statistics.median(samples[-4:])
    benchmark.extra_info["growth_mb"] = round((late - early) / 2**20, 2)
    benchmark.extra_info["swing_mb"] = round((max(samples[2:]) - min(samples[2:])) / 2**20, 2)
    benchmark.extra_info["inputs_per_s"] = round(LONG / seconds[0])

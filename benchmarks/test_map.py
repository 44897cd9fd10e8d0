"""pool.map against multiprocessing.Pool.map and ProcessPoolExecutor.map, and the parent's
memory while mapping a long generator.

Each peer maps the same 100,000 trivial inputs over 2 workers; the figures go in
``extra_info`` for ``benchmarks/run.py``.
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
ROUNDS = 45
"""Alternating rounds per peer: a map of 100,000 trivial inputs takes about 10 ms, so a
round is at the mercy of a moment of the machine (one round's ratio moves by a third
either way on a shared 2-CPU machine); the median of 45 moves by a few hundredths."""
SAME_CHUNKSIZE = 12_500
"""multiprocessing.Pool.map's own choice for 100,000 inputs on 2 workers (len / (4 * 2))."""
PPE_CHUNKSIZES = (1, 100, 1000, SAME_CHUNKSIZE)
LONG = 10_000_000


def timed(run: Callable[[], list[Any]]) -> float:
    """Seconds ``run`` takes to map INPUTS inputs."""
    started = time.perf_counter()
    results = run()
    seconds = time.perf_counter() - started
    assert len(results) == INPUTS
    return seconds


def test_map_against_peers(benchmark: BenchmarkFixture) -> None:
    """pypit's blocking map, multiprocessing.Pool(2).map and ProcessPoolExecutor(2).map
    over the same inputs, in alternating rounds so that each ratio compares moments of
    the same machine: pypit at multiprocessing's chunksize against multiprocessing, and
    pypit choosing its own frames against the executor at the best of its chunksizes
    (found first). The ratios are medians of the rounds' ratios.

    The inputs are a range, which pypit sends as its ends; ``ratio_mp_pool_list`` (for
    information) is the first ratio with both mapping the same list of those ints, whose
    types pypit checks before they travel."""
    figures: dict[str, float] = {}

    def main() -> None:
        with (
            start_pool(ADAPTER, size=2, status_interval=0) as pool,
            multiprocessing.Pool(2) as peer,
            ProcessPoolExecutor(2) as executor,
        ):
            listed = list(range(INPUTS))

            def pypit(chunksize: int | None, inputs: Any = range(INPUTS)) -> list[Any]:
                with pool.map("identity", inputs, chunksize=chunksize) as results:
                    return list(results)

            def ppe(chunksize: int) -> list[Any]:
                return list(executor.map(identity, range(INPUTS), chunksize=chunksize))

            pypit(None)
            peer.map(identity, range(1000))
            best = min(PPE_CHUNKSIZES, key=lambda size: timed(lambda: ppe(size)))
            same, mine, mp, executors, same_list, mp_list = [], [], [], [], [], []
            for _ in range(ROUNDS):
                same.append(timed(lambda: pypit(SAME_CHUNKSIZE)))
                mp.append(timed(lambda: peer.map(identity, range(INPUTS), SAME_CHUNKSIZE)))
                mine.append(timed(lambda: pypit(None)))
                executors.append(timed(lambda: ppe(best)))
                same_list.append(timed(lambda: pypit(SAME_CHUNKSIZE, listed)))
                mp_list.append(timed(lambda: peer.map(identity, listed, SAME_CHUNKSIZE)))
            figures["ratio_mp_pool"] = statistics.median(
                m / p for m, p in zip(mp, same, strict=True)
            )
            figures["ratio_ppe"] = statistics.median(
                e / p for e, p in zip(executors, mine, strict=True)
            )
            figures["ratio_mp_pool_list"] = statistics.median(
                m / p for m, p in zip(mp_list, same_list, strict=True)
            )
            figures["ppe_best_chunksize"] = best
            for name, seconds in (
                ("pypit", same),
                ("pypit_default_chunksize", mine),
                ("mp_pool", mp),
                ("ppe", executors),
            ):
                figures[f"{name}_per_s"] = INPUTS / statistics.median(seconds)

    benchmark.pedantic(main, rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 2) for k, v in figures.items()})


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


def test_map_memory_is_flat(benchmark: BenchmarkFixture) -> None:
    """Map a generator of ten million inputs, sampling the parent's RSS every half million
    taken: the growth is the median of the last eight samples less the median of the
    eight after the first million (start-up and the window filling). What a map holds is
    its window, so the samples swing around a level instead of climbing; the swing is
    the allocator's (the loop's thread and the consumer's free into arenas of their own),
    so medians of several samples are compared, not two samples."""
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
    early = statistics.median(samples[2:10])
    late = statistics.median(samples[-8:])
    benchmark.extra_info["growth_mb"] = round((late - early) / 2**20, 2)
    benchmark.extra_info["swing_mb"] = round((max(samples[2:]) - min(samples[2:])) / 2**20, 2)
    benchmark.extra_info["inputs_per_s"] = round(LONG / seconds[0])

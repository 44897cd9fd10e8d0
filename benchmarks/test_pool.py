"""The pool against its peers and a raw floor, measured in one run.

Latency benchmarks record every operation and report p50/p95 in
``extra_info``; pytest-benchmark times the batches. ``benchmarks/run.py``
turns them into the ratios of docs/performance.md.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pebble
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.adapters import identity
from pypit import telemetry
from pypit.pool import open_pool

ADAPTER = "benchmarks.adapters:Bench"
ROUND_TRIPS = 2000
THROUGHPUT_TASKS = 20_000
CALLERS = 64


def record(benchmark: BenchmarkFixture, latencies: list[float], **extra: Any) -> None:
    latencies.sort()
    benchmark.extra_info["p50_us"] = round(statistics.median(latencies) * 1e6, 1)
    benchmark.extra_info["p95_us"] = round(latencies[int(len(latencies) * 0.95)] * 1e6, 1)
    benchmark.extra_info.update(extra)


def run_async(function: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(function, backend="asyncio")


# -- sequential round trip, 1 worker -------------------------------------------------


def test_round_trip_pypit(benchmark: BenchmarkFixture) -> None:
    latencies: list[float] = []

    async def main() -> None:
        async with open_pool(ADAPTER, size=1, status_interval=0) as pool:
            for i in range(200):
                await pool.execute("identity", i)

            async def batch() -> None:
                for i in range(ROUND_TRIPS):
                    started = time.perf_counter()
                    await pool.execute("identity", i)
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await batch()
            benchmark.extra_info["batch_s"] = time.perf_counter() - started

    benchmark.pedantic(run_async, args=(main,), rounds=1, iterations=1)
    record(benchmark, latencies)


def test_round_trip_ppe(benchmark: BenchmarkFixture) -> None:
    latencies: list[float] = []
    with ProcessPoolExecutor(1) as executor:
        for i in range(200):
            executor.submit(identity, i).result()

        def batch() -> None:
            for i in range(ROUND_TRIPS):
                started = time.perf_counter()
                executor.submit(identity, i).result()
                latencies.append(time.perf_counter() - started)

        benchmark.pedantic(batch, rounds=1, iterations=1)
    record(benchmark, latencies)


def test_round_trip_floor(benchmark: BenchmarkFixture) -> None:
    """Raw asyncio streams ping-pong with a child process over a Unix socket."""
    latencies: list[float] = []

    async def main() -> None:
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "floor.sock")
        connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.set_result((reader, writer))

        server = await asyncio.start_unix_server(on_connect, path)
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).with_name("echo_child.py")), path
        )
        reader, writer = await connected
        frame = struct.pack(">I", 8) + b"12345678"
        for _ in range(200):
            writer.write(frame)
            await reader.readexactly(12)
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            writer.write(frame)
            await reader.readexactly(12)
            latencies.append(time.perf_counter() - started)
        writer.close()
        await child.wait()
        server.close()

    benchmark.pedantic(lambda: asyncio.run(main()), rounds=1, iterations=1)
    record(benchmark, latencies)


# -- throughput, 2 workers -------------------------------------------------------------


async def _callers(pool: Any, total: int) -> float:
    """``total`` trivial calls from CALLERS concurrent callers; calls per second."""
    per_caller = total // CALLERS

    async def caller() -> None:
        for i in range(per_caller):
            await pool.execute("identity", i)

    started = time.perf_counter()
    async with anyio.create_task_group() as tasks:
        for _ in range(CALLERS):
            tasks.start_soon(caller)
    return per_caller * CALLERS / (time.perf_counter() - started)


def test_throughput_pypit(benchmark: BenchmarkFixture) -> None:
    rates: list[float] = []

    async def main() -> None:
        async with open_pool(ADAPTER, size=2, status_interval=0) as pool:
            await _callers(pool, 2000)
            for _ in range(3):
                rates.append(await _callers(pool, THROUGHPUT_TASKS))

    benchmark.pedantic(run_async, args=(main,), rounds=1, iterations=1)
    benchmark.extra_info["tasks_per_s"] = round(statistics.median(rates))


def test_throughput_handlers(benchmark: BenchmarkFixture) -> None:
    """The same pool with and without no-op handlers on every pool and rpc event,
    alternating, so that both see the same workers and the same machine moments."""
    without: list[float] = []
    with_handlers: list[float] = []
    events = [
        spec.name
        for spec in telemetry.CATALOG
        if spec.name[:2] in (("pypit", "pool"), ("pypit", "rpc"))
    ]

    def noop(*args: Any) -> None:
        return None

    async def main() -> None:
        async with open_pool(ADAPTER, size=2, status_interval=0) as pool:
            await _callers(pool, 2000)
            for _ in range(4):
                without.append(await _callers(pool, THROUGHPUT_TASKS))
                telemetry.attach_many("bench-all", events, noop)
                try:
                    with_handlers.append(await _callers(pool, THROUGHPUT_TASKS))
                finally:
                    telemetry.detach("bench-all")

    benchmark.pedantic(run_async, args=(main,), rounds=1, iterations=1)
    benchmark.extra_info["without_per_s"] = round(statistics.median(without))
    benchmark.extra_info["with_per_s"] = round(statistics.median(with_handlers))
    benchmark.extra_info["ratio"] = round(
        statistics.median(w / n for w, n in zip(with_handlers, without, strict=True)), 3
    )


def _peer_throughput(
    benchmark: BenchmarkFixture,
    submit: Callable[[int], Any],
    wait: Callable[[Any], Any],
    tasks: int,
) -> None:
    """Submit ``tasks`` trivial tasks at once to a peer, wait for all; tasks per second."""
    rates: list[float] = []

    def batch() -> None:
        started = time.perf_counter()
        for handle in [submit(i) for i in range(tasks)]:
            wait(handle)
        rates.append(tasks / (time.perf_counter() - started))

    benchmark.pedantic(batch, rounds=3, iterations=1)
    benchmark.extra_info["tasks_per_s"] = round(statistics.median(rates))


def test_throughput_ppe(benchmark: BenchmarkFixture) -> None:
    with ProcessPoolExecutor(2) as executor:
        list(executor.map(identity, range(200)))
        _peer_throughput(
            benchmark,
            lambda i: executor.submit(identity, i),
            lambda f: f.result(),
            THROUGHPUT_TASKS,
        )


def test_throughput_mp_pool(benchmark: BenchmarkFixture) -> None:
    with multiprocessing.Pool(2) as pool:
        pool.map(identity, range(200))
        _peer_throughput(
            benchmark,
            lambda i: pool.apply_async(identity, (i,)),
            lambda r: r.get(),
            THROUGHPUT_TASKS,
        )


def test_throughput_pebble(benchmark: BenchmarkFixture) -> None:
    with pebble.ProcessPool(2) as pool:
        pool.schedule(identity, args=(0,)).result()
        _peer_throughput(
            benchmark,
            lambda i: pool.schedule(identity, args=(i,)),
            lambda f: f.result(),
            THROUGHPUT_TASKS // 4,
        )


# -- start-up --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [4])
def test_open_to_first_result(benchmark: BenchmarkFixture, size: int) -> None:
    latencies: list[float] = []

    async def main() -> None:
        started = time.perf_counter()
        async with open_pool(ADAPTER, size=size, status_interval=0) as pool:
            await pool.execute("identity", 1)
            latencies.append(time.perf_counter() - started)

    benchmark.pedantic(run_async, args=(main,), rounds=5, iterations=1)
    record(benchmark, latencies)


# -- crash to replacement ----------------------------------------------------------------


def test_crash_to_replacement(benchmark: BenchmarkFixture) -> None:
    """SIGKILL a worker, time until its replacement takes work (the restarted event)."""
    latencies: list[float] = []

    async def main() -> None:
        restarted = anyio.Event()

        def on_restarted(*args: Any) -> None:
            restarted.set()

        telemetry.attach("bench-restarted", ("pypit", "pool", "worker", "restarted"), on_restarted)
        try:
            # Twenty kills in a row: past the default restart limit.
            async with open_pool(ADAPTER, size=1, status_interval=0) as pool:
                for _ in range(20):
                    restarted = anyio.Event()
                    (pid,) = pool.workers().values()
                    started = time.perf_counter()
                    os.kill(pid, 9)
                    await restarted.wait()
                    latencies.append(time.perf_counter() - started)
                    await pool.execute("identity", 1)
        finally:
            telemetry.detach("bench-restarted")

    benchmark.pedantic(run_async, args=(main,), rounds=1, iterations=1)
    record(benchmark, latencies)


# -- chaos -------------------------------------------------------------------------------


def test_chaos(benchmark: BenchmarkFixture) -> None:
    """4 workers, 32 callers, a random worker SIGKILLed every 50 ms for 6 s, at default
    settings: calls lost per kill, refusals, and the time back to full size."""
    outcomes: dict[str, int] = {}
    figures: dict[str, float] = {}

    async def main() -> None:
        kills = 0
        async with open_pool(ADAPTER, size=4, status_interval=0) as pool:
            stop = anyio.Event()

            async def caller() -> None:
                while not stop.is_set():
                    try:
                        await pool.execute("identity", 1, timeout=5.0)
                        name = "ok"
                    except Exception as exc:
                        name = type(exc).__name__
                    outcomes[name] = outcomes.get(name, 0) + 1

            async def killer() -> None:
                nonlocal kills
                ends = time.monotonic() + 6.0
                while time.monotonic() < ends:
                    await anyio.sleep(0.05)
                    alive = list(pool.workers().values())
                    if alive:
                        os.kill(alive[kills % len(alive)], 9)
                        kills += 1
                stop.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(killer)
                for _ in range(32):
                    tasks.start_soon(caller)
            last_kill = time.perf_counter()
            while pool.status().total_workers < 4:
                await anyio.sleep(0.001)
            figures["recovery_ms"] = (time.perf_counter() - last_kill) * 1e3
        figures["kills"] = kills
        lost = sum(n for name, n in outcomes.items() if name != "ok")
        figures["lost_per_kill"] = lost / max(1, kills)

    benchmark.pedantic(run_async, args=(main,), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 2) for k, v in figures.items()})
    benchmark.extra_info["ok"] = outcomes.get("ok", 0)
    benchmark.extra_info["degraded"] = outcomes.get("PoolDegradedError", 0)
    benchmark.extra_info["lost"] = sum(n for name, n in outcomes.items() if name != "ok")

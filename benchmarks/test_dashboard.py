"""The pool's throughput with the dashboard's page open, against no dashboard at all.

A page open is what costs most: the dashboard's metric handlers, its tail of events
attached to every event, the pool read each interval, and a frame built and sent each
interval. The page here is a reader of the stream in a process of its own, as a
browser's EventSource is; rounds alternate, so that both sides see the same workers and
the same moments of the machine.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.test_pool import ADAPTER, THROUGHPUT_TASKS, _callers, run_async
from pypit.pool import Pool, open_pool
from pypit.telemetry import metrics

ROUNDS = 6


def definitions() -> list[metrics.Metric]:
    """The calls' rate and latency by command, the queue, and failures by type: metrics of
    the parent's own events (a metric of the workers' call events has each worker ship
    them, whatever reports it; that cost is the metric's)."""
    return [
        metrics.last_value("pypit.pool.status.queue_depth", tags=["pool_name"]),
        metrics.counter("pypit.rpc.call.stop.count", tags=["command"]),
        metrics.summary(
            "pypit.rpc.call.stop.duration", unit=("native", "millisecond"), tags=["command"]
        ),
        metrics.distribution(
            "pypit.rpc.call.stop.duration",
            unit=("native", "millisecond"),
            reporter_options={"buckets": [0.1, 0.2, 0.5, 1, 2, 5, 10]},
        ),
        metrics.counter("pypit.rpc.call.exception.count", tags=["error_type"]),
    ]


# A page is another process (a browser): its reading costs the application nothing but
# the server's side of the stream. It says "frame" for each frame it read.
READER = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as stream:
    for line in stream:
        if line.startswith(b"event: frame"):
            print("frame", flush=True)
"""


@contextmanager
def page_open(url: str) -> Iterator[list[int]]:
    """A reader of the dashboard's stream, in a process of its own, while the block runs;
    the frames it read."""
    frames = [0]
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, url + "api/stream"], stdout=subprocess.PIPE, text=True
    )

    def count() -> None:
        assert reader.stdout is not None
        for _ in reader.stdout:
            frames[0] += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        yield frames
    finally:
        reader.terminate()
        reader.wait(timeout=10)
        counter.join()
        assert reader.stdout is not None
        reader.stdout.close()


def test_throughput_dashboard(benchmark: BenchmarkFixture) -> None:
    """Rounds of no dashboard, a dashboard with no page open (its metric handlers), and
    one with a page open: ``ratio`` is the target's (page open / no dashboard),
    ``ratio_page_alone`` what the page adds to the handlers (page open / no page)."""
    without: list[float] = []
    no_page: list[float] = []
    with_page: list[float] = []
    frames: list[int] = []

    async def main() -> None:
        async with open_pool(ADAPTER, size=2, status_interval=1.0) as pool:
            await _callers(pool, 2000)
            for _ in range(ROUNDS):
                without.append(await _callers(pool, THROUGHPUT_TASKS))
                no_page.append(await _with_dashboard(pool, frames, page=False))
                with_page.append(await _with_dashboard(pool, frames, page=True))

    benchmark.pedantic(run_async, args=(main,), rounds=1, iterations=1)
    benchmark.extra_info["without_per_s"] = round(statistics.median(without))
    benchmark.extra_info["no_page_per_s"] = round(statistics.median(no_page))
    benchmark.extra_info["with_page_per_s"] = round(statistics.median(with_page))
    benchmark.extra_info["frames_read"] = sum(frames)
    benchmark.extra_info["ratio"] = round(
        statistics.median(w / n for w, n in zip(with_page, without, strict=True)), 3
    )
    benchmark.extra_info["ratio_no_page"] = round(
        statistics.median(w / n for w, n in zip(no_page, without, strict=True)), 3
    )
    benchmark.extra_info["ratio_page_alone"] = round(
        statistics.median(w / n for w, n in zip(with_page, no_page, strict=True)), 3
    )
    assert sum(frames) > 0


async def _with_dashboard(pool: Pool, frames: list[int], *, page: bool) -> float:
    with metrics.DashboardReporter(definitions(), port=0) as dashboard:
        assert dashboard.url is not None
        async with dashboard.watch(pool):
            if not page:
                return await _callers(pool, THROUGHPUT_TASKS)
            with page_open(dashboard.url) as read:
                rate = await _callers(pool, THROUGHPUT_TASKS)
            frames.append(read[0])
    return rate

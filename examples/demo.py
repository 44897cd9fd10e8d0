"""``make demo``: an embedded pool under a mixed load, with live status and an event tally.

It first maps a batch of predictions with a progress bar, then runs the mixed load for a
few seconds by default; ``--seconds N`` changes that, ``--forever``
keeps it going until Ctrl-C, which stops the pool at once and prints the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections import Counter
from typing import Any

import anyio

from pypit import PoolSaturatedError, ToolError, telemetry
from pypit.pool import Pool, PoolStatus, open_pool

ADAPTER = "examples.demo_adapter:DemoModel"
SHOWN = {
    ("pypit", "pool", "worker", "spawned"): "worker {worker_id} ready (pid {worker_pid})",
    ("pypit", "pool", "worker", "terminated"): "worker {worker_id} gone: {reason}",
    ("pypit", "rpc", "stream", "closed"): "stream {stream_id} {reason}",
}


class Dashboard:
    """Counts every event and prints the interesting ones and the live status."""

    def __init__(self) -> None:
        self.tally: Counter[str] = Counter()
        self.durations: list[float] = []
        self.quiet = False  # while a progress bar holds the line

    def on_event(self, event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        self.tally[".".join(event[1:])] += 1
        if event == ("pypit", "rpc", "call", "stop"):
            self.durations.append(measurements["duration"] / 1_000_000)
        template = SHOWN.get(event)
        if template is not None:
            print(f"  · {template.format(**metadata)}")

    def on_status(self, event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        if self.quiet:
            return
        p50 = sorted(self.durations)[len(self.durations) // 2] if self.durations else 0.0
        self.durations.clear()
        print(
            f"[{metadata['pool_name']}] queue {measurements['queue_depth']:>2}  "
            f"available {measurements['available_workers']}  busy {measurements['busy_workers']}  "
            f"in flight {measurements['in_flight']:>2}  call p50 {p50:6.2f} ms"
        )


class TextBar:
    """A one-line progress bar for any terminal: a map's ``progress`` callback."""

    def __init__(self, label: str, width: int = 30) -> None:
        self.label = label
        self.width = width

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            filled = self.width * done // total
            bar = "#" * filled + "." * (self.width - filled)
            shown = f"[{bar}] {100 * done // total:3d}%  {done:,}/{total:,}"
        else:
            shown = f"{done:,}"
        end = "\n" if done == total else ""
        print(f"\r  {self.label} {shown}", end=end, flush=True)


async def map_batch(pool: Pool, dashboard: Dashboard, inputs: int = 20_000) -> None:
    """Map a batch of predictions over the pool, with a progress bar; the pool sends quick
    inputs many to a frame once it has learned that they are quick."""
    frames = dashboard.tally["rpc.call.stop"]
    started = time.monotonic()
    dashboard.quiet = True
    try:
        progress = TextBar("map predict")
        batch = [{"x": i % 1000} for i in range(inputs)]  # a list: the bar knows its total
        async with pool.map("predict", batch, progress=progress) as results:
            total = sum([result["y"] async for result in results])
    finally:
        dashboard.quiet = False
    took = time.monotonic() - started
    frames = dashboard.tally["rpc.call.stop"] - frames
    print(
        f"  · mapped {inputs:,} inputs in {frames} frames, {took:.2f}s "
        f"({inputs / took:,.0f}/s); sum of y {total:,.0f}"
    )


async def fast_calls(pool: Pool, stop: anyio.Event) -> None:
    while not stop.is_set():
        try:
            await pool.execute("predict", {"x": random.random() * 100})
        except PoolSaturatedError:
            await anyio.sleep(0.05)  # the burst filled the queue: back off
        await anyio.sleep(0.002)


async def slow_calls(pool: Pool, stop: anyio.Event) -> None:
    while not stop.is_set():
        try:
            await pool.execute("batch", {"milliseconds": random.randint(50, 150)})
        except PoolSaturatedError:
            await anyio.sleep(0.05)


async def streams(pool: Pool, stop: anyio.Event) -> None:
    while not stop.is_set():
        try:
            async with pool.stream("generate", {"prompt": "tok"}) as tokens:
                async for token in tokens:
                    if token.endswith("-5") and random.random() < 0.5:
                        break
        except PoolSaturatedError:
            pass
        await anyio.sleep(0.2)


async def failures(pool: Pool, stop: anyio.Event) -> None:
    while not stop.is_set():
        try:
            await pool.execute("flaky")
        except ToolError as exc:
            print(f"  · flaky call failed as expected: {type(exc).__name__}: {exc.remote_message}")
        except PoolSaturatedError:
            pass
        await anyio.sleep(1.0)


async def bursts(pool: Pool, stop: anyio.Event) -> None:
    while not stop.is_set():
        await anyio.sleep(1.5)
        rejected = 0

        async def one() -> None:
            nonlocal rejected
            try:
                await pool.execute("crunch", {"n": 200_000})
            except PoolSaturatedError:
                rejected += 1

        async with anyio.create_task_group() as tasks:
            for _ in range(40):
                tasks.start_soon(one)
        print(f"  · burst of 40 calls: {40 - rejected} served, {rejected} rejected")


async def main(seconds: float | None) -> None:
    dashboard = Dashboard()
    events = [spec.name for spec in telemetry.CATALOG if spec.name[0] == "pypit"]
    telemetry.attach_many("demo-dashboard", events, dashboard.on_event)
    telemetry.attach("demo-status", ("pypit", "pool", "status"), dashboard.on_status)
    started = time.monotonic()
    status: PoolStatus | None = None
    outcome = "done"
    try:
        async with open_pool(
            ADAPTER,
            size=2,
            name="demo",
            max_queue_size=16,
            prefetch=0,
            status_interval=0.5,
        ) as pool:
            tools = ", ".join(sorted(pool.tools()))
            print(f"pool 'demo' is up in {time.monotonic() - started:.2f}s; tools: {tools}")
            stop = anyio.Event()
            try:
                await map_batch(pool, dashboard)
                async with anyio.create_task_group() as tasks:
                    for job in (fast_calls, slow_calls, streams, failures, bursts):
                        tasks.start_soon(job, pool, stop)
                    if seconds is None:
                        await anyio.sleep_forever()
                    else:
                        await anyio.sleep(seconds)
                    stop.set()
            finally:
                status = pool.status()
    except BaseException:
        # Ctrl-C: the pool cancelled its calls and stopped; the summary is still worth seeing.
        outcome = "interrupted"
        raise
    finally:
        telemetry.detach("demo-dashboard")
        telemetry.detach("demo-status")
        if status is not None:
            summary(outcome, status, dashboard)


def summary(outcome: str, status: PoolStatus, dashboard: Dashboard) -> None:
    print(
        f"\n{outcome}: {status.requests} requests, {status.completed} completed, "
        f"{status.failed} failed, {status.rejected} rejected"
    )
    print("events seen:")
    for name, count in sorted(dashboard.tally.items()):
        print(f"  {name:<30} {count:>6}")


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="how long to run")
    parser.add_argument("--forever", action="store_true", help="run until interrupted")
    options = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(main, None if options.forever else options.seconds)


if __name__ == "__main__":
    cli(sys.argv[1:])

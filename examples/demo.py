"""``make demo``: an embedded pool under a mixed load, with a live view and an event tally.

It serves the dashboard (its address is printed first: open it in a browser, or run
``pypit top`` on it in another terminal), maps a batch of predictions with a progress bar,
then runs the mixed load for a few seconds by default; ``--seconds N`` changes that,
``--forever`` keeps it going until Ctrl-C, which stops the pool at once and prints the
summary. In a terminal the load is shown in place, as ``pypit top`` shows it; elsewhere
(``--view log``, or output to a file) as a log of status lines and events.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import anyio

from pypit import PoolSaturatedError, ToolError, telemetry
from pypit.pool import Pool, PoolStatus, open_pool
from pypit.telemetry import metrics

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
            self.say(f"  · {template.format(**metadata)}")

    def say(self, line: str) -> None:
        """Print a line of the log, unless the live view or a progress bar holds the
        screen."""
        if not self.quiet:
            print(line)

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


async def fast_calls(pool: Pool, stop: anyio.Event, say: Callable[[str], None]) -> None:
    while not stop.is_set():
        try:
            await pool.execute("predict", {"x": random.random() * 100})
        except PoolSaturatedError:
            await anyio.sleep(0.05)  # the burst filled the queue: back off
        await anyio.sleep(0.002)


async def slow_calls(pool: Pool, stop: anyio.Event, say: Callable[[str], None]) -> None:
    while not stop.is_set():
        try:
            await pool.execute("batch", {"milliseconds": random.randint(50, 150)})
        except PoolSaturatedError:
            await anyio.sleep(0.05)


async def streams(pool: Pool, stop: anyio.Event, say: Callable[[str], None]) -> None:
    while not stop.is_set():
        try:
            async with pool.stream("generate", {"prompt": "tok"}) as tokens:
                async for token in tokens:
                    if token.endswith("-5") and random.random() < 0.5:
                        break
        except PoolSaturatedError:
            pass
        await anyio.sleep(0.2)


async def failures(pool: Pool, stop: anyio.Event, say: Callable[[str], None]) -> None:
    while not stop.is_set():
        try:
            await pool.execute("flaky")
        except ToolError as exc:
            say(f"  · flaky call failed as expected: {type(exc).__name__}: {exc.remote_message}")
        except PoolSaturatedError:
            pass
        await anyio.sleep(1.0)


async def bursts(pool: Pool, stop: anyio.Event, say: Callable[[str], None]) -> None:
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
        say(f"  · burst of 40 calls: {40 - rejected} served, {rejected} rejected")


DEFINITIONS = [
    metrics.counter("pypit.rpc.call.stop.count", tags=["command"]),
    metrics.summary(
        "pypit.python.call.stop.duration", unit=("native", "millisecond"), tags=["command"]
    ),
    metrics.last_value("pypit.pool.status.queue_depth", tags=["pool_name"]),
    metrics.counter("pypit.pool.saturated.count", tags=["pool_name"]),
    metrics.counter("pypit.python.call.exception.count", tags=["error_type"]),
]


@contextlib.contextmanager
def serve_dashboard(port: int) -> Iterator[metrics.DashboardReporter]:
    """The dashboard on ``port``, or on a free port when that one is taken."""
    try:
        reporter = metrics.DashboardReporter(DEFINITIONS, port=port, interval=0.5)
        reporter.start()
    except OSError:
        reporter = metrics.DashboardReporter(DEFINITIONS, port=0, interval=0.5)
        reporter.start()
    try:
        yield reporter
    finally:
        reporter.stop()


@contextlib.contextmanager
def live_view(url: str, dashboard: Dashboard) -> Iterator[None]:
    """``pypit top``'s view of the dashboard, drawn in place while the block runs."""
    from pypit._top import show

    stop = threading.Event()
    view = threading.Thread(target=show, args=(url, stop), name="demo-view")
    dashboard.quiet = True
    view.start()
    try:
        yield
    finally:
        stop.set()
        view.join()
        dashboard.quiet = False


async def main(seconds: float | None, live: bool = False, dashboard_port: int = 9569) -> None:
    dashboard = Dashboard()
    events = [spec.name for spec in telemetry.CATALOG if spec.name[0] == "pypit"]
    telemetry.attach_many("demo-dashboard", events, dashboard.on_event)
    telemetry.attach("demo-status", ("pypit", "pool", "status"), dashboard.on_status)
    started = time.monotonic()
    status: PoolStatus | None = None
    outcome = "done"
    try:
        with serve_dashboard(dashboard_port) as reporter:
            assert reporter.url is not None
            print(f"dashboard on {reporter.url}  (in a terminal: pypit top {reporter.url})")
            async with (
                open_pool(
                    ADAPTER,
                    size=2,
                    name="demo",
                    max_queue_size=16,
                    prefetch=0,
                    status_interval=0.5,
                    sample_interval=1.0,
                ) as pool,
                reporter.watch(pool),
            ):
                tools = ", ".join(sorted(pool.tools()))
                print(f"pool 'demo' is up in {time.monotonic() - started:.2f}s; tools: {tools}")
                stop = anyio.Event()
                try:
                    await map_batch(pool, dashboard)
                    view = live_view(reporter.url, dashboard) if live else contextlib.nullcontext()
                    async with anyio.create_task_group() as tasks:
                        for job in (fast_calls, slow_calls, streams, failures, bursts):
                            tasks.start_soon(job, pool, stop, dashboard.say)
                        # The view ends with the load still on: its last screen shows it.
                        with view:
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
    parser.add_argument(
        "--view",
        choices=("auto", "live", "log"),
        default="auto",
        help="live: drawn in place (needs rich); log: status lines and events; "
        "auto (the default): live in a terminal",
    )
    parser.add_argument("--dashboard-port", type=int, default=9569, help="the dashboard page")
    options = parser.parse_args(argv)
    live = options.view == "live" or (options.view == "auto" and _can_draw())
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(main, None if options.forever else options.seconds, live, options.dashboard_port)


def _can_draw() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return sys.stdout.isatty()


if __name__ == "__main__":
    cli(sys.argv[1:])

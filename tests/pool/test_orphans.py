"""Nothing outlives the pool: workers, and every process their tools started, end with it,
whatever group or session those moved to, stopped or not -- and only then.

These are Linux guarantees (subreaper, pidfd): see docs/supervision.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import anyio
import psutil
import pytest

from pypit import telemetry
from pypit.pool import open_pool
from tests.pool.conftest import adapter, options, wait_until
from tests.processes import kill, running, track

ROOT = Path(__file__).parents[2]
PARENT = Path(__file__).with_name("orphan_parent.py")
TERMINATED = ("pypit", "pool", "worker", "terminated")
GONE_WITHIN = 3.0
"""Seconds the processes get to disappear once they have to."""

LINUX = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="subreaper and pidfd guarantees are Linux's"
)
pytestmark = LINUX


def left_after(
    processes: Iterable[psutil.Process], seconds: float = GONE_WITHIN
) -> list[psutil.Process]:
    """Those of ``processes`` still running once they all ended or ``seconds`` passed."""
    processes = list(processes)
    deadline = time.monotonic() + seconds
    while any(map(running, processes)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [process for process in processes if running(process)]


async def left_after_async(
    processes: Iterable[psutil.Process], seconds: float = GONE_WITHIN
) -> list[psutil.Process]:
    """:func:`left_after`, without blocking the event loop."""
    processes = list(processes)
    with anyio.move_on_after(seconds):
        while any(map(running, processes)):
            await anyio.sleep(0.01)
    return [process for process in processes if running(process)]


def threads() -> set[int]:
    """The ids of this process's threads, as the kernel knows them."""
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def forking_thread(pid: int) -> int | None:
    """The thread of this process that ``pid`` is the child of, as the kernel sees it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            children = Path(f"/proc/self/task/{tid}/children").read_text().split()
        except OSError:
            continue
        if str(pid) in children:
            return int(tid)
    return None


@pytest.mark.anyio
async def test_workers_outlive_the_thread_that_started_them(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers live as long as the pool, not as long as the thread that forked them (on
    trio, a cached thread that retires when idle): once it exited, the same workers
    still serve calls and none was terminated."""
    if anyio_backend == "trio":
        # trio.lowlevel.open_process runs Popen in trio.to_thread, whose cached threads exit
        # after IDLE_TIMEOUT (10 s) idle. trio has no public setting for it; the constant,
        # read at each wait, is lowered so that the test takes seconds rather than tens.
        import trio._core._thread_cache

        monkeypatch.setattr(trio._core._thread_cache, "IDLE_TIMEOUT", 2.0)
    with telemetry.capture(TERMINATED) as terminated:
        async with open_pool(adapter(), **options(size=2)) as pool:
            workers = pool.workers()
            forkers = {forking_thread(pid) for pid in workers.values()}
            assert None not in forkers
            # On asyncio the loop's own thread forks, and lives on.
            retiring = forkers - {threading.get_native_id()}
            if anyio_backend == "trio":
                assert retiring, "the workers were not forked by trio's cached threads"

            with anyio.move_on_after(15):
                while retiring & threads() and pool.workers() == workers:
                    await anyio.sleep(0.01)
            # A signal sent as the thread exited would have landed by now.
            await anyio.sleep(0.5)

            assert pool.workers() == workers
            if anyio_backend == "trio":
                # A cached thread that trio hands other work stays alive; one that forked a
                # worker and retired is enough to show the worker outlives it.
                assert retiring - threads(), "no thread that forked a worker exited"
            served = {await pool.execute("pid") for _ in range(4)}
            assert served <= set(workers.values())
    assert [e.metadata for e in terminated.events if not e.metadata["planned"]] == []


@pytest.mark.anyio
async def test_closing_the_pool_ends_what_the_tools_started_in_any_group() -> None:
    """Once the pool closed, no process a tool started is left: not a child in the
    worker's process group, not one that called setsid(), not a daemon whose parent had
    exited."""
    started: list[psutil.Process] = []
    try:
        async with open_pool(adapter(), **options()) as pool:
            started = track((await pool.execute("spawn_escapers")).values())
            assert len(started) == 3
            assert all(map(running, started))
        left = await left_after_async(started)
    finally:
        kill(started)
    assert left == []


@pytest.mark.anyio
async def test_a_stopped_worker_is_killed_with_everything_below_it() -> None:
    """A worker stopped (SIGSTOP) when the pool closes cannot end what its tools started:
    the pool kills it and every process below it, in its group or not."""
    family: list[psutil.Process] = []
    try:
        async with open_pool(adapter(), **options(stop_grace=0.2)) as pool:
            started = await pool.execute("spawn_escapers")
            family = track([pool.workers()["default_worker_1"], *started.values()])
            family[0].suspend()
        left = await left_after_async(family)
    finally:
        kill(family)
    assert left == []


@pytest.mark.anyio
async def test_a_stopped_worker_is_stopped_within_stop_grace() -> None:
    """A worker stopped (SIGSTOP) while the pool closes does not answer the request to
    stop; after stop_grace it gets SIGTERM and SIGCONT, and acts on it at once, instead of
    holding SIGTERM until the SIGKILL of a second stop_grace."""
    worker: list[psutil.Process] = []
    try:
        # The default stop_grace, which options() shortens for other tests.
        async with open_pool(adapter(), **options(stop_grace=3.0)) as pool:
            worker = track([pool.workers()["default_worker_1"]])
            worker[0].suspend()
            while worker[0].status() != psutil.STATUS_STOPPED:
                await anyio.sleep(0.005)
            closing = anyio.current_time()
        closed = anyio.current_time() - closing
    finally:
        kill(worker)
    # A liveness bound, not a timing: twice the default stop_grace (6 s) fails it, one
    # stop_grace (3 s) and the moment SIGTERM takes pass with 2 s to spare.
    assert closed < 5.0
    assert not running(worker[0])


@pytest.mark.parametrize("stopped", [False, True], ids=["running", "stopped"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigkilled_parent_leaves_no_process(backend: str, stopped: bool) -> None:
    """Within 3 s of the parent's SIGKILL, no process is left of its pool: no worker, even
    a stopped one (SIGSTOP), and nothing a tool started, in the worker's group, in a
    session of its own, or a daemon whose parent had exited."""
    family: list[psutil.Process] = []
    with subprocess.Popen(
        [sys.executable, str(PARENT), backend],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    ) as parent:
        try:
            assert parent.stdout is not None
            report = json.loads(parent.stdout.readline())
            workers: list[int] = report["workers"]
            started = {pid for family in report["started"] for pid in family.values()}
            below = {p.pid for w in workers for p in psutil.Process(w).children(recursive=True)}
            family = track(sorted({*workers, *below, *started}))
            assert len(workers) == 2
            assert len(started) == 6
            assert len(family) == len({*workers, *below, *started})
            assert all(map(running, family))
            if stopped:
                for worker in workers:
                    os.kill(worker, signal.SIGSTOP)
                for worker in workers:
                    while psutil.Process(worker).status() != psutil.STATUS_STOPPED:
                        time.sleep(0.005)

            parent.send_signal(signal.SIGKILL)
            parent.wait()
            left = left_after(family)
        finally:
            parent.kill()
            kill(family)
    assert left == []
    # Even the daemons were below a worker: it adopted them when their shell exited.
    assert started <= below


@pytest.mark.anyio
async def test_a_worker_adopts_orphans_and_reaps_them() -> None:
    """A process whose parent exited is re-parented to its worker (where the pool can still
    find it), and reaped by the worker once it exits: it does not linger as a zombie."""
    async with open_pool(adapter(), **options()) as pool:
        worker = pool.workers()["default_worker_1"]
        orphan = await pool.execute("background", {"seconds": 0.2})
        try:
            assert psutil.Process(orphan).ppid() == worker
        except psutil.NoSuchProcess:
            pytest.fail("the orphan was reaped by a process other than its worker")
        await wait_until(lambda: not psutil.pid_exists(orphan), "the orphan to be reaped", 5.0)


@pytest.mark.anyio
async def test_a_tool_gets_the_exit_code_of_its_own_child() -> None:
    """The worker reaps only the orphans it adopted: a tool that waits for its own child
    long after that child exited still gets its exit code."""
    async with open_pool(adapter(), **options()) as pool:
        assert await pool.execute("exit_code_later", {"code": 3, "seconds": 1.5}) == 3

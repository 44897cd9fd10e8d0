"""Chaos: many callers while a killer SIGKILLs a random worker every 50 ms."""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import anyio
import psutil
import pytest

from pypit import PypitError
from pypit.pool import open_pool
from tests.pool.conftest import adapter, options, wait_until

pytestmark = pytest.mark.anyio

WORKERS = 4
CALLERS = 32
KILLING = 6.0  # seconds of kills, one every 50 ms
TIMEOUT = 5.0


@pytest.mark.limit(90)
async def test_chaos(tmp_path: Path) -> None:
    """For six seconds a random worker is SIGKILLed every 50 ms under 32 callers: every call
    ends with its result or a typed error before its deadline, none that is not idempotent
    runs twice, the pool never reports itself degraded, it is back to full size after the
    last kill, and no worker process is left once it closed."""
    log = tmp_path / "executions"
    outcomes: Counter[str] = Counter()
    late: list[float] = []
    pids: set[int] = set()
    kills = 0
    # The default policy, at default settings. The workers run without coverage
    # measurement: it slows their start-up enough that a kill every 50 ms outpaces it.
    settings = options(
        size=WORKERS, env={"COVERAGE_PROCESS_CONFIG": "", "COVERAGE_PROCESS_START": ""}
    )
    async with open_pool(adapter(), **settings) as pool:
        stop = anyio.Event()

        async def caller(n: int) -> None:
            for i in itertools.count():
                if stop.is_set():
                    return
                tag = f"{'i' if i % 2 else 'n'}-{n}-{i}"
                started = time.monotonic()
                try:
                    result = await pool.execute(
                        "record",
                        {"path": str(log), "tag": tag, "seconds": 0.001},
                        timeout=TIMEOUT,
                        idempotent=tag.startswith("i"),
                    )
                    assert result == tag
                    outcomes["ok"] += 1
                except PypitError as exc:
                    outcomes[type(exc).__name__] += 1
                elapsed = time.monotonic() - started
                if elapsed > TIMEOUT + 0.5:
                    late.append(elapsed)

        async def killer() -> None:
            nonlocal kills
            ends = time.monotonic() + KILLING
            while time.monotonic() < ends:
                await anyio.sleep(0.05)
                alive = list(pool.workers().values())
                pids.update(alive)
                if alive:
                    os.kill(random.choice(alive), signal.SIGKILL)
                    kills += 1
                assert not pool.status().degraded
            stop.set()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(killer)
                for n in range(CALLERS):
                    tasks.start_soon(caller, n)
        last_kill = time.monotonic()
        await wait_until(lambda: pool.status().total_workers == WORKERS, "a full pool again")
        recovery = time.monotonic() - last_kill
        pids.update(pool.workers().values())
        status = pool.status()

    executions = Counter(log.read_text().split())
    twice = [tag for tag, count in executions.items() if count > 1 and tag.startswith("n")]
    print(
        f"\nchaos: {sum(outcomes.values())} calls, {kills} kills, outcomes {dict(outcomes)}, "
        f"restarts {status.restarts}, back to {WORKERS} workers {recovery * 1000:.0f} ms "
        "after the last kill"
    )
    assert set(outcomes) <= {"ok", "WorkerCrashedError", "WorkerTimeoutError", "QueueTimeoutError"}
    assert outcomes["ok"] > 0
    assert kills > 20  # one every 50 ms at best; fewer on a loaded machine
    assert late == []
    assert twice == []
    assert status.total_workers == WORKERS
    assert not status.degraded
    assert [pid for pid in pids if psutil.pid_exists(pid)] == []

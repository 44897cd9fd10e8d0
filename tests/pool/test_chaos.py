"""Chaos: many callers while a killer SIGKILLs a random worker every 50 ms."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from pypit import PypitError
from pypit.pool import open_pool
from tests.pool.conftest import adapter, options, wait_until

pytestmark = pytest.mark.anyio

WORKERS = 4
CALLERS = 32
CALLS_PER_CALLER = 20
TIMEOUT = 5.0


async def test_chaos(tmp_path: Path) -> None:
    """Every call ends with its result or a typed error before its deadline, no call that
    is not idempotent runs twice, and the pool is back to full size after the last kill."""
    log = tmp_path / "executions"
    outcomes: Counter[str] = Counter()
    late: list[float] = []
    kills = 0
    # max_restarts is lifted because every kill still counts toward the restart limit, so
    # the default policy takes the pool offline under this storm (see
    # test_healthy_restarts_never_take_the_pool_offline). A short heartbeat finds workers
    # the killer froze mid-write sooner. The workers run without coverage measurement: it
    # slows their start-up enough that a kill every 50 ms outpaces any restart.
    settings = options(
        size=WORKERS,
        max_restarts=100_000,
        heartbeat_interval=0.2,
        env={"COVERAGE_PROCESS_CONFIG": "", "COVERAGE_PROCESS_START": ""},
    )
    async with open_pool(adapter(), **settings) as pool:

        async def caller(n: int) -> None:
            for i in range(CALLS_PER_CALLER):
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

        async def killer(stop: anyio.Event) -> None:
            nonlocal kills
            while not stop.is_set():
                await anyio.sleep(0.05)
                pids = list(pool.workers().values())
                if pids:
                    os.kill(random.choice(pids), signal.SIGKILL)
                    kills += 1

        stop = anyio.Event()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as callers:
                callers.start_soon(killer, stop)
                async with anyio.create_task_group() as calls:
                    for n in range(CALLERS):
                        calls.start_soon(caller, n)
                stop.set()
        last_kill = time.monotonic()
        await wait_until(lambda: pool.status().total_workers == WORKERS, "a full pool again")
        recovery = time.monotonic() - last_kill
        status = pool.status()

    executions = Counter(log.read_text().split())
    twice = [tag for tag, count in executions.items() if count > 1 and tag.startswith("n")]
    print(
        f"\nchaos: {CALLERS * CALLS_PER_CALLER} calls, {kills} kills, outcomes {dict(outcomes)}, "
        f"restarts {status.restarts}, back to {WORKERS} workers {recovery * 1000:.0f} ms "
        "after the last kill"
    )
    assert sum(outcomes.values()) == CALLERS * CALLS_PER_CALLER
    assert set(outcomes) <= {"ok", "WorkerCrashedError", "WorkerTimeoutError", "QueueTimeoutError"}
    assert outcomes["ok"] > 0
    assert kills > 10
    assert late == []
    assert twice == []
    assert status.total_workers == WORKERS

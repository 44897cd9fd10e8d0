"""How a worker runs the calls it is sent: one limit for sync and async tools together."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anyio
import pytest

from pypit import QueueTimeoutError, telemetry
from pypit.pool import Pool, open_pool
from tests.pool.conftest import adapter, opened_at_exit, options, wait_until

pytestmark = pytest.mark.anyio

DEQUEUED = ("pypit", "pool", "queue", "dequeued")


async def learn_quick(pool: Pool, *calls: tuple[str, Mapping[str, object]]) -> None:
    """Teach the pool that these calls are quick, as a busy service would: from then on, it
    sends more of them to a busy worker, to wait there (prefetch, at its default settings)."""
    for _ in range(20):
        for command, args in calls:
            await pool.execute(command, dict(args))


async def sent(pool: Pool, requests: int) -> None:
    """Wait until the pool has taken ``requests`` calls since it opened."""
    await wait_until(lambda: pool.status().requests == requests, f"{requests} calls to be taken")


@pytest.mark.parametrize("max_concurrency", [1, 2])
async def test_max_concurrency_counts_sync_and_async_calls_together(max_concurrency: int) -> None:
    """Calls of sync and async tools sent to a busy worker wait there for the same slots:
    never more than max_concurrency of them run at once, the limit is reached, and the
    waiting ones report how long they waited."""
    tools = ("occupy", "async_occupy")
    calls = max_concurrency + 6
    seen: dict[int, list[int]] = {}
    async with open_pool(adapter(), **options(max_concurrency=max_concurrency)) as pool:
        await learn_quick(pool, *((tool, {"seconds": 0}) for tool in tools))

        async def call(i: int) -> None:
            # The calls that start at once outlast the sending of the others, which the
            # pool then sends to the busy worker since they are known to be quick.
            seconds = 0.5 if i < max_concurrency else 0.01
            seen[i] = await pool.execute(tools[i % 2], {"seconds": seconds})

        before = pool.status().requests
        with telemetry.capture(DEQUEUED) as dequeued:
            async with anyio.create_task_group() as tasks:
                for i in range(calls):
                    tasks.start_soon(call, i)
                    # One at a time, so that they reach the worker in this order.
                    await sent(pool, before + i + 1)

    assert sorted(seen) == list(range(calls))
    assert max(in_progress for _, in_progress in seen.values()) == max_concurrency
    if max_concurrency == 1:
        starts = [seen[i][0] for i in range(calls)]
        assert starts == sorted(starts)
    # The first call that waited did so behind a call of 0.5 s.
    assert max(e.measurements["queue_time"] for e in dequeued) > 0.25e9


async def test_an_async_call_waiting_behind_a_sync_one_is_dropped_when_withdrawn(
    tmp_path: Path,
) -> None:
    """A call of an async tool waiting in a worker busy with a sync call, whose deadline
    passes, is dropped there: it never runs, and the worker is not killed for it."""
    log, gate = tmp_path / "calls.log", tmp_path / "gate"
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        gate.touch()
        await learn_quick(
            pool,
            ("hold", {"gate": str(gate)}),
            ("async_record", {"path": str(tmp_path / "warm-up.log"), "tag": "warm-up"}),
        )
        gate.unlink()
        async with anyio.create_task_group() as tasks, opened_at_exit(gate):
            tasks.start_soon(pool.execute, "hold", {"gate": str(gate)})
            await wait_until(lambda: pool.status().in_flight == 1, "the sync call to start")
            with pytest.raises(QueueTimeoutError, match="not run"):
                await pool.execute("async_record", {"path": str(log), "tag": "late"}, timeout=0.2)
            assert pool.status().queue_timeouts == 1
        assert await pool.execute("pid") == pid

    assert not log.exists()

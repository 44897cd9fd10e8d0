"""The seed's complete monitoring example, run as written and scraped for real."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from examples import monitoring
from tests.telemetry.test_dashboard import get_json
from tests.telemetry.test_metrics import scrape

pytestmark = pytest.mark.anyio


async def test_monitoring_example_serves_every_series() -> None:
    """Each of the five metrics is on /metrics with its labels and a plausible value; the
    dashboard beside it shows the same definitions and the pool's two workers."""
    families: dict[str, list[object]] = {}
    snapshot: dict[str, Any] = {}

    async def check(port: int, dashboard: str) -> None:
        snapshot.update(await anyio.to_thread.run_sync(get_json, dashboard + "api/snapshot"))
        with anyio.fail_after(10):
            while True:
                families.update(await anyio.to_thread.run_sync(scrape, port))
                samples = families.get("pypit_python_call_exception", [])
                if samples and families.get("pypit_pool_status_queue_depth"):
                    return
                await anyio.sleep(0.1)

    await monitoring.monitor(port=0, seconds=None, on_ready=check, dashboard_port=0)

    def values(family: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {
            tuple(sorted(s.labels.items())): s.value  # type: ignore[attr-defined]
            for s in families[family]
        }

    pool = (("pool_name", "monitored"),)
    # One caller, calling one call at a time, on two workers: nothing ever waits, and at
    # least one worker is idle whenever the status is taken.
    assert values("pypit_pool_status_queue_depth")[pool] == 0
    assert values("pypit_pool_status_available_workers")[pool] in (1, 2)
    durations = {
        s.name: s.value  # type: ignore[attr-defined]
        for s in families["pypit_python_call_stop_duration_milliseconds"]
        if s.labels == {"command": "predict"}  # type: ignore[attr-defined]
    }
    assert durations["pypit_python_call_stop_duration_milliseconds_count"] > 0
    assert 0 < durations["pypit_python_call_stop_duration_milliseconds_sum"] < 10_000
    errors = values("pypit_python_call_exception")
    assert errors[(("error_type", "RuntimeError"),)] > 0
    assert values("pypit_pool_worker_spawned")[pool] == 2
    names = [metric["name"] for metric in snapshot["metrics"]]
    assert names == [".".join(metric.name) for metric in monitoring.definitions()]
    (pool_view,) = snapshot["pools"]
    assert [w["worker_id"] for w in pool_view["workers"]] == [
        "monitored_worker_1",
        "monitored_worker_2",
    ]
    assert all(w["state"] in ("idle", "busy") for w in pool_view["workers"])

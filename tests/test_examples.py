"""The examples run as a user runs them."""

from __future__ import annotations

import pytest

from examples import demo
from pypit import telemetry


def test_demo_runs_a_pool_and_shows_status_and_events(capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo`'s main job: a pool under load, live status lines, a tally, a clean stop."""
    demo.cli(["--seconds", "2"])

    out = capsys.readouterr().out
    assert "pool 'demo' is up" in out
    assert "[demo] queue" in out
    assert "flaky call failed as expected: ToolError" in out
    assert "burst of 40 calls" in out
    assert "worker demo_worker_1 gone: shutdown" in out
    tally = out.split("events seen:")[1]
    for name in ("rpc.call.stop", "python.call.stop", "pool.saturated", "rpc.stream.closed"):
        assert name in tally
    assert telemetry.list_handlers() == []

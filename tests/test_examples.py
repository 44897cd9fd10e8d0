"""The examples run as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from examples import demo
from pypit import telemetry
from tests.processes import kill, running

ROOT = Path(__file__).parents[1]


def test_demo_runs_a_pool_and_shows_status_and_events(capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo`'s main job: a pool under load, live status lines, a tally, a clean stop."""
    demo.cli(["--seconds", "2", "--dashboard-port", "0"])

    out = capsys.readouterr().out
    assert re.search(r"^dashboard on http://127\.0\.0\.1:\d+/ ", out, re.MULTILINE)
    assert "pool 'demo' is up" in out
    assert "[demo] queue" in out
    assert "flaky call failed as expected: ToolError" in out
    assert "burst of 40 calls" in out
    assert "map predict [##############################] 100%  20,000/20,000\n" in out
    assert "mapped 20,000 inputs in " in out
    assert "worker demo_worker_1 gone: shutdown" in out
    tally = out.split("events seen:")[1]
    for name in ("rpc.call.stop", "python.call.stop", "pool.saturated", "rpc.stream.closed"):
        assert name in tally
    assert telemetry.list_handlers() == []


def test_ctrl_c_stops_the_demo_at_once_and_it_prints_its_summary() -> None:
    """Ctrl-C ends `make demo --forever` within a few seconds: the pool cancels its calls
    and stops its workers, and the demo prints its summary and tally before it exits."""
    # As `make demo` runs it; SIGINT raises KeyboardInterrupt even if this test was started
    # with it ignored (as a shell starts a job in the background).
    code = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from examples import demo; demo.cli(['--forever', '--dashboard-port', '0'])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        text=True,
    ) as program:
        workers: list[psutil.Process] = []
        try:
            assert program.stdout is not None
            for line in program.stdout:
                if "is up" in line:
                    break
            # Both workers, however soon after "is up" this looks (a replacement may be
            # starting); 10 s is a liveness bound.
            deadline = time.monotonic() + 10
            while len(workers) < 2 and time.monotonic() < deadline:
                workers = psutil.Process(program.pid).children()
                time.sleep(0.05)
            time.sleep(1.0)
            interrupted = time.monotonic()
            program.send_signal(signal.SIGINT)
            out, err = program.communicate(timeout=30)
            took = time.monotonic() - interrupted
        finally:
            program.kill()
            kill(workers)

    assert took < 5.0
    assert len(workers) == 2
    assert not [worker for worker in workers if running(worker)]
    assert program.returncode == 0, err
    assert "\ninterrupted: " in out
    tally = out.split("events seen:")[1]
    assert "rpc.call.stop" in tally

"""The worker's guard: it ends what the worker started when the pool dies, and never
outlives its worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.processes import kill, running, track

ROOT = Path(__file__).parents[2]

# A worker that exits as soon as its guard is forked, often before the guard first runs.
EXIT_AT_ONCE = """
import os, sys
from pypit.worker import _guard
_guard.protect(int(sys.argv[1]))
os.write(1, b"%d" % _guard.guard_pid)
os._exit(0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="guards are Linux's")
def test_no_guard_outlives_a_worker_that_exits_at_once() -> None:
    """However soon its worker exits, a guard goes with it. One that stayed would, when
    this process (its pool) exits, take whatever adopted it for its worker, and kill it."""
    guards: list[psutil.Process] = []
    for _ in range(20):
        worker = subprocess.run(
            [sys.executable, "-c", EXIT_AT_ONCE, str(os.getpid())],
            capture_output=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
        )
        assert int(worker.stdout)
        # Followed from now on (those gone already are left out): by the time it is
        # looked at again, a pid may be another process's.
        guards += track([int(worker.stdout)])

    deadline = time.monotonic() + 2.0
    while any(map(running, guards)) and time.monotonic() < deadline:
        time.sleep(0.01)
    left = [guard for guard in guards if running(guard)]
    # Before this process exits, so that none of them acts on it.
    kill(left)
    assert left == []

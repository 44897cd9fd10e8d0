"""Workers never outlive the parent: a SIGKILLed parent takes its workers and their children."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).parents[2]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkilled_parent_leaves_no_worker_and_no_worker_child() -> None:
    """Within 2 s of the parent's SIGKILL, every worker and every process a tool started
    is gone."""
    pids: list[int] = []
    with subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("orphan_parent.py"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    ) as parent:
        try:
            assert parent.stdout is not None
            processes = json.loads(parent.stdout.readline())
            pids = processes["workers"] + processes["children"]
            assert len(pids) == 4
            assert all(alive(pid) for pid in pids)

            parent.send_signal(signal.SIGKILL)
            parent.wait()
            deadline = time.monotonic() + 2.0
            while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.02)
            left = [pid for pid in pids if alive(pid)]
        finally:
            parent.kill()
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)

    assert left == []

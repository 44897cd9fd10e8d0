"""Processes a test started, followed by identity, not by pid.

The system hands a pid out again once its process is gone (at 32,768 pids, soon on a
busy machine): a pid kept across the end of its process may name another process by the
time it is looked at or signalled. So tests keep ``psutil.Process`` objects, taken while
the processes are known to be theirs; psutil compares each one's start time before it
signals it or calls it running."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import psutil


def track(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes that have these pids now; those already gone are left out."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(pid))
    return found


def running(process: psutil.Process) -> bool:
    """Whether ``process`` itself (not a later one with its pid) runs: not a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill(processes: Iterable[psutil.Process]) -> None:
    """SIGKILL each of ``processes`` still running (stopped ones too); never another
    process that got one of their pids."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running():
                process.kill()

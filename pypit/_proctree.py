"""Killing a process and everything below it, wherever its descendants moved.

A process group is not enough: a tool's child that calls ``setsid()`` leaves
its worker's group, and so does every process it starts. What does not change
is descent: on Linux a worker is its descendants' subreaper (orphans are
re-parented to it, not to init), so while the worker exists, everything its
tools started is below it. :func:`kill_tree` walks that tree, freezing each
process it finds, and kills them all once nothing new turns up.

Both sides use it: the pool when it kills a worker, the worker when it exits,
and the worker's guard when the pool died. Workers import this module at
start-up, so it imports nothing heavy (psutil only where ``/proc`` is missing).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Collection
from typing import Final

_LINUX: Final = sys.platform.startswith("linux")
_SETTLE: Final = 0.1
"""Seconds to wait at most for frozen processes to stop before walking the tree once more:
only a process in uninterruptible sleep takes that long, and it cannot fork before it
stops."""


def _signal(pid: int, signum: int) -> bool:
    """Whether ``signum`` was sent (the process exists and may be signalled)."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (state first, then ppid)."""
    data = _read(f"/proc/{pid}/stat")
    # The command name may hold spaces and parentheses: what follows its last ")" does not.
    return None if data is None else data.rpartition(b")")[2].split()


def _children_files() -> bool:
    # /proc/<pid>/task/<tid>/children needs CONFIG_PROC_CHILDREN (on in the common
    # distributions); without it every process is read to find the parents.
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children, from every one of its threads (Linux).

    A child belongs to the thread that forked it, or to the first thread when
    it was adopted; reading each thread's list gives them all.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in threads:
        data = _read(f"/proc/{pid}/task/{tid}/children")
        if data is not None:
            found.extend(map(int, data.split()))
    return found


def descendants(root: int) -> set[int]:
    """The pids of every process below ``root`` now (a snapshot: freeze to be sure)."""
    if not _LINUX:
        import psutil

        try:
            return {p.pid for p in psutil.Process(root).children(recursive=True)}
        except psutil.Error:
            return set()
    if _children_files():
        found: set[int] = set()
        stack = [root]
        while stack:
            for child in children(stack.pop()):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        return found
    below: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat_fields(int(name))) is not None:
            below.setdefault(int(fields[1]), []).append(int(name))
    found = set()
    stack = [root]
    while stack:
        for child in below.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` can still run, so fork: it exists and is neither stopped nor dead."""
    if not _LINUX:
        import psutil

        try:
            return psutil.Process(pid).status() not in (
                psutil.STATUS_STOPPED,
                psutil.STATUS_ZOMBIE,
                psutil.STATUS_DEAD,
            )
        except psutil.Error:
            return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in (b"T", b"t", b"Z", b"X")


def kill_tree(root: int, *, root_too: bool, spare: Collection[int] = ()) -> set[int]:
    """SIGKILL every process below ``root`` (and ``root`` with ``root_too``), stopped or
    not, whatever group or session it moved to; return the pids found.

    Each process found is stopped (SIGSTOP) and the tree walked again, until a walk
    finds nothing new once everything found has stopped: a stopped process can
    neither fork nor let a child slip away, so nothing escapes between the last
    walk and the kill. Costs two walks of the tree (no scan of every process where
    the kernel lists children), and a tenth of a second more at most, only for a
    process that takes that long to stop. The pids in ``spare`` are left alone.
    """
    frozen: set[int] = set()
    stopping: set[int] = set()  # those the stop was sent to (not another user's)
    left_alone = set(spare)
    if root_too:
        frozen.add(root)
        if _signal(root, signal.SIGSTOP):
            stopping.add(root)
    while True:
        found = descendants(root) - frozen - left_alone
        if not found:
            deadline = time.monotonic() + _SETTLE
            while any(map(_running, stopping)) and time.monotonic() < deadline:
                time.sleep(0.001)
            # Whatever forked before it stopped is below it by now.
            found = descendants(root) - frozen - left_alone
            if not found:
                break
        stopping.update(pid for pid in found if _signal(pid, signal.SIGSTOP))
        frozen |= found
    for pid in frozen - {root}:
        _signal(pid, signal.SIGKILL)
    # The root last, in case the caller is one to die with it.
    if root_too:
        _signal(root, signal.SIGKILL)
    return frozen

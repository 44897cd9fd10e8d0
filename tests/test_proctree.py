"""Killing a process tree: every descendant, stopped or not, in any session."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from pypit import _proctree
from tests.processes import kill, track

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the tree is read from /proc"
)

# A shell with three children that sleep: one in its group, one in a session of its own,
# and one stopped; it prints their pids and waits.
TREE = "; ".join(
    [
        "sleep 60 & a=$!",
        "setsid sleep 60 & b=$!",
        "sleep 60 & c=$!",
        "kill -STOP $c",
        'echo "$a $b $c"',
        "wait",
    ]
)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def left_after(pids: list[int], seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [pid for pid in pids if alive(pid)]


@pytest.fixture
def tree() -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """A shell and its three children; whatever is left of them is killed afterwards."""
    with subprocess.Popen(["sh", "-c", TREE], stdout=subprocess.PIPE, text=True) as shell:
        assert shell.stdout is not None
        children = [int(pid) for pid in shell.stdout.readline().split()]
        family = track([shell.pid, *children])
        try:
            yield shell, children
        finally:
            kill(family)


def test_descendants_are_found_in_any_session(
    tree: tuple[subprocess.Popen[str], list[int]],
) -> None:
    """The descendants of a process are its children wherever they moved, and nothing else."""
    shell, children = tree
    assert _proctree.descendants(shell.pid) == set(children)


def test_kill_tree_kills_every_descendant_and_the_root(
    tree: tuple[subprocess.Popen[str], list[int]],
) -> None:
    """With ``root_too``, the root and every process below it go, the stopped one and the
    one that left the group included; the pids signalled are returned."""
    shell, children = tree
    assert all(map(alive, children))

    signalled = _proctree.kill_tree(shell.pid, root_too=True)

    assert signalled == {shell.pid, *children}
    assert shell.wait(timeout=3) == -signal.SIGKILL
    assert left_after(children) == []


def test_kill_tree_spares_what_it_is_told_to(
    tree: tuple[subprocess.Popen[str], list[int]],
) -> None:
    """Without ``root_too`` the root lives on, and so does a spared process, neither of
    them stopped; the other descendants go."""
    shell, (grouped, session, stopped) = tree

    _proctree.kill_tree(shell.pid, root_too=False, spare=(session,))

    assert left_after([grouped, stopped]) == []
    assert psutil.Process(shell.pid).status() != psutil.STATUS_STOPPED
    assert psutil.Process(session).status() != psutil.STATUS_STOPPED

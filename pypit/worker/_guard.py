"""Nothing a worker started outlives it, or the pool: the worker's side.

Why not ``PR_SET_PDEATHSIG`` on the worker. The kernel sends that signal when
the *thread* that forked the worker exits, not its process: trio forks from a
cached thread that retires after 10 s idle, so every worker of a trio pool was
killed about every 10 s. The signal cannot be tied to the pool's process from
here (the pool does not choose its forking thread), and a signal the worker
handles -- to check that its parent really died -- runs neither while the
worker is stopped nor while a tool holds the GIL. So the worker sets no death
signal, and the pool *process* is watched instead, through a pidfd, by:

The guard: a small process forked from the worker at start-up (it adds under a
millisecond to the start; a thread would stop with the worker, and starting an
interpreter would cost tens of milliseconds). It blocks in ``poll()`` on the pool's pidfd;
when the pool's process ends, however it ends, the guard freezes the worker and
everything below it -- stopped or not, in the worker's process group or not --
and kills them all (:func:`pypit._proctree.kill_tree`). The guard does set a
death signal, SIGKILL, for it was forked by the worker's main thread, which
lives as long as the worker: the guard never outlives its worker.

The worker is its descendants' subreaper (``PR_SET_CHILD_SUBREAPER``): a
process whose parent exits is re-parented to the worker rather than to init,
so everything the tools started stays below the worker, where the guard, the
worker itself when it exits and the pool when it kills the worker find it,
even after ``setsid()`` or a double fork. The worker must then reap the
orphans it adopts: see :func:`start_reaping`.

This is Linux (pidfd needs 5.3). Elsewhere, and if the guard cannot be
forked, a worker exits when its channel closes, and takes its group and the
processes still below it along if its parent is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import select
import signal
import sys
import threading
from typing import Final, NoReturn

from pypit._proctree import kill_tree

_PR_SET_PDEATHSIG: Final = 1
_PR_SET_NAME: Final = 15
_PR_SET_CHILD_SUBREAPER: Final = 36
_REAP_INTERVAL: Final = 1.0
_LINUX: Final = sys.platform.startswith("linux")

guard_pid = 0
"""The pid of this worker's guard, 0 without one."""

_reaper: _Reaper | None = None


def _prctl(option: int, value: int | bytes) -> bool:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    return False


def _spared() -> tuple[int, ...]:
    # The guard is left alone: it may be freezing this worker at the same time, and two
    # processes each stopping the other would leave both stopped for ever.
    return (guard_pid,) if guard_pid else ()


def leave(*, with_group: bool) -> None:
    """This worker is about to exit: end every process its tools started, even those that
    left its group; ``with_group`` (nobody is left to kill it), the group too, this worker
    with it."""
    kill_tree(os.getpid(), root_too=False, spare=_spared())
    if with_group:
        # The pool starts each worker in a group of its own; a worker started by hand is in
        # its shell's, which is not its to kill.
        if os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM: the pool is stopping this worker; take every process the tools started
    along, whatever group they are in."""
    leave(with_group=True)


def protect(parent_pid: int) -> None:
    """Tie this worker's life to the pool process ``parent_pid``; call it first thing, while
    the worker has a single thread (it forks the guard)."""
    global guard_pid
    signal.signal(signal.SIGTERM, _on_sigterm)
    pidfd = None
    if _LINUX:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(parent_pid)
    # Checked after the pidfd is open: while the parent lives, this worker is its child,
    # so the pid cannot have been reused and the pidfd is the pool's.
    if os.getppid() != parent_pid:
        leave(with_group=True)
    if pidfd is None:
        return
    # Taken before the fork: once this worker is gone, the guard's getppid() names some
    # other process (init, or a subreaper above the pool), which it must never kill.
    worker_pid = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:
        _guard(pidfd, worker_pid)
    os.close(pidfd)
    if pid > 0:
        guard_pid = pid


def _guard(pidfd: int, worker_pid: int) -> NoReturn:
    """The guard's whole life, in the forked child: it never returns to the worker's code."""
    try:
        _stand_guard(pidfd, worker_pid)
    finally:
        os._exit(0)


def _stand_guard(pidfd: int, worker_pid: int) -> None:
    """Wait for the pool's process to end, then end the worker and everything below it."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != worker_pid:
        return  # the worker is gone already
    _prctl(_PR_SET_NAME, b"pypit-guard")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    # A collection would write to every object, copying the pages shared with the worker.
    gc.disable()
    # The worker's stdout and stderr are the pool's pipes: the pool reads them to their
    # end, which must come when the worker exits.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    while not any(events & select.POLLIN for _, events in poller.poll()):
        pass
    # From here the guard must outlive the worker until everything is killed; and it kills
    # only while it is the worker's child, so that the worker's pid is still the worker's
    # (frozen first, the worker cannot exit during the kill).
    _prctl(_PR_SET_PDEATHSIG, 0)
    if os.getppid() != worker_pid:
        return
    kill_tree(worker_pid, root_too=True, spare=(os.getpid(),))
    with contextlib.suppress(OSError):
        os.killpg(worker_pid, signal.SIGKILL)


class _Reaper:
    """Reaps the orphans this worker adopted as a subreaper, once they exit.

    Only those: a tool waits for its own children, and a child reaped under it
    would report exit code 0. Adopted orphans go to the worker's first thread
    (the kernel picks the first live thread of the subreaper, ``find_new_reaper``
    in kernel/exit.c), which runs no tool: past start-up it only waits. What it
    forked itself (the adapter's ``setup()``) is left alone. One case is
    mistaken for an orphan: a child whose forking thread exited before it, for
    the kernel moves such children to the first thread too; a tool that waits
    for a child started by a thread that is gone may see exit code 0.
    """

    def __init__(self) -> None:
        self._owned = set(self._candidates()) - {guard_pid}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pypit-reaper", daemon=True)

    def _candidates(self) -> list[int]:
        main = os.getpid()
        with contextlib.suppress(OSError):
            with open(f"/proc/{main}/task/{main}/children", "rb") as f:
                return [int(pid) for pid in f.read().split()]
        return []

    def _run(self) -> None:
        while not self._stop.wait(_REAP_INTERVAL):
            for pid in self._candidates():
                if pid not in self._owned:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def start_reaping() -> None:
    """Reap adopted orphans every second, from now (the adapter is set up) until
    :func:`stop_reaping`. Linux only: elsewhere nothing is adopted."""
    global _reaper
    if _LINUX and os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        _reaper = _Reaper()
        _reaper.start()


def stop_reaping() -> None:
    """Stop reaping, before ``teardown()`` runs on the first thread and forks there."""
    global _reaper
    if _reaper is not None:
        _reaper.stop()
        _reaper = None

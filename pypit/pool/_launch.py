"""Where a worker runs: the one seam between the supervisor and the worker processes.

The supervisor decides when a slot starts, stops and replaces its worker; a
:class:`Launcher` decides where and how that worker runs. Two exist: local
processes (this module, the default) and Ray actors (``_ray``). Whatever the
launcher, a worker is the same ``python -m pypit.worker`` speaking the same
frames, so the scheduler, deadlines, recycling and the restart policy never
learn where it runs.

A launched worker is a :class:`WorkerProcess`: a pid, an exit status, its
output, a way to signal it, and -- for launchers whose workers cannot reach
the pool's socket -- the channel that comes with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.abc

from pypit._proctree import kill_tree
from pypit.pool._channel import Connection, GreetingHandler, Server
from pypit.pool._events import NODE

if TYPE_CHECKING:
    from pypit.pool._config import PoolConfig
    from pypit.pool._tasks import PoolTasks


class LaunchError(Exception):
    """A worker could not be started at all; ``reason`` is the ``spawn_failed`` reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class WorkerProcess(Protocol):
    """One started worker, as the supervisor and its handle see it."""

    pid: int
    """The worker's pid on its node."""
    node: str
    """The node it runs on (``node`` in the events)."""
    mode: str
    """How it runs (``mode`` in ``pool.worker.spawned``)."""
    connection: Connection | None
    """Its channel, if it came with the process; None: the worker connects to the pool's
    socket and greets there."""
    stdout: AsyncIterable[bytes] | None
    stderr: AsyncIterable[bytes] | None
    reachable: bool
    """False while the worker's node does not answer (a Ray actor that Ray reports
    unavailable): ``reconnect_window`` bounds that, not the heartbeat."""

    @property
    def returncode(self) -> int | None:
        """Its exit status once known (negative: the signal that killed it)."""

    @property
    def running(self) -> bool:
        """Whether it has not ended yet; an ended worker's ``returncode`` may stay None
        where nobody could tell it (a Ray actor that died)."""

    async def wait(self) -> int | None:
        """Wait until it ended; its ``returncode``."""

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the worker and what it started; SIGKILL ends them for sure."""

    def rss(self) -> int:
        """Its resident memory in bytes, as last measured (0 if unknown)."""


class Launcher(Protocol):
    """Starts the workers of one pool."""

    async def open(self, tasks: PoolTasks, on_greeting: GreetingHandler) -> None:
        """Get ready to launch (``on_greeting`` takes each worker's first frame)."""

    async def launch(
        self, slot: int, worker_id: str, token: str, settings: Mapping[str, str]
    ) -> WorkerProcess:
        """Start one worker with ``settings`` (its ``PYPIT_WORKER_*`` variables) and
        ``token``; :class:`LaunchError` if it cannot be started."""

    async def close(self) -> None:
        """Let go of what :meth:`open` set up, once every worker is gone."""


class LocalProcess:
    """A worker process on this machine, in a process group of its own."""

    mode = "process"
    reachable = True

    def __init__(self, process: anyio.abc.Process) -> None:
        self._process = process
        self.pid = process.pid
        self.node = NODE
        self.connection: Connection | None = None
        self.stdout: AsyncIterable[bytes] | None = process.stdout
        self.stderr: AsyncIterable[bytes] | None = process.stderr

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def running(self) -> bool:
        return self._process.returncode is None

    async def wait(self) -> int | None:
        return await self._process.wait()

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the worker's process group (the worker and its children).

        SIGKILL also goes to every process below the worker that left the group
        (``setsid()``), stopped first so that none slips away: the worker is their
        subreaper, so they are below it until it dies, and nobody could find them
        after. Only while the worker is not reaped: then its pid is still its own.
        """
        if sig == signal.SIGKILL and self._process.returncode is None:
            kill_tree(self.pid, root_too=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def rss(self) -> int:
        import psutil

        with contextlib.suppress(psutil.Error, OSError):
            return int(psutil.Process(self.pid).memory_info().rss)
        return 0


WORKER_PROCESS: Final[dict[str, Any]] = {
    "stdin": subprocess.DEVNULL,
    "stdout": subprocess.PIPE,
    "stderr": subprocess.PIPE,
    # A group of its own, so that the worker and what its tools start are signalled
    # together, never with the parent's.
    "start_new_session": True,
}
"""How a worker process is started, on this machine or by a Ray actor on its node."""


def worker_environment(
    token: str, socket_path: str, settings: Mapping[str, str]
) -> tuple[int, dict[str, str]]:
    """The read end of a pipe that holds ``token`` (for the worker to inherit), and the
    worker's environment: this process's, the pool's ``settings``, and where to connect.

    The token travels through the pipe, never the environment or the command line, which
    other processes of the user can read. ``OSError`` if the pipe cannot be made.
    """
    token_reader, token_writer = os.pipe()
    os.write(token_writer, token.encode())
    os.close(token_writer)
    env = {
        **os.environ,
        **settings,
        "PYPIT_WORKER_SOCKET": socket_path,
        "PYPIT_WORKER_TOKEN_FD": str(token_reader),
        "PYPIT_WORKER_PARENT_PID": str(os.getpid()),
    }
    return token_reader, env


class LocalLauncher:
    """Worker processes of this machine, children of the pool's process, connecting to a
    Unix socket in a private temporary directory."""

    def __init__(self, config: PoolConfig) -> None:
        self._config = config
        self.directory = ""
        self.socket_path = ""

    async def open(self, tasks: PoolTasks, on_greeting: GreetingHandler) -> None:
        self.directory = tempfile.mkdtemp(prefix="pypit-")
        self.socket_path = os.path.join(self.directory, "pool.sock")
        server = Server(on_greeting, self._config.max_frame_size)
        await tasks.start(server.serve, self.socket_path)
        os.chmod(self.socket_path, 0o600)

    async def launch(
        self, slot: int, worker_id: str, token: str, settings: Mapping[str, str]
    ) -> WorkerProcess:
        try:
            token_reader, env = worker_environment(
                token, self.socket_path, {**self._config.env, **settings}
            )
        except OSError as exc:  # out of file descriptors, say
            raise LaunchError("exec_failed", f"cannot make the token's pipe: {exc}") from exc
        try:
            # Shielded: a cancellation here could leave a started process with
            # nobody holding it; past this point the slot always reaps it.
            with anyio.CancelScope(shield=True):
                process = await anyio.open_process(
                    [self._config.python, "-m", "pypit.worker"],
                    env=env,
                    pass_fds=(token_reader,),
                    **WORKER_PROCESS,
                )
        except OSError as exc:
            raise LaunchError("exec_failed", str(exc)) from exc
        finally:
            os.close(token_reader)
        return LocalProcess(process)

    async def close(self) -> None:
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

"""The node's side of a Ray worker: an actor that runs one ordinary worker process.

The worker does not know Ray. The actor starts ``python -m pypit.worker`` as a
child on its node, exactly as a local pool would: a Unix socket in a private
temporary directory, the token through an inherited pipe, the actor's pid as
the parent that the worker's guard watches (the actor dies, the worker dies
with it). The actor then relays bytes and nothing else: it never decodes a
frame, so ``max_frame_size`` and "the pool never unpickles what a worker
built" keep holding; Ray's own transport carries the bytes.

Three streams come back (the channel, stdout, stderr), each an append-only
tape: :meth:`WorkerHost.receive` is told how much of each the pool already has
and returns the rest, so a reply lost on the way (a node that stopped
answering for a moment) is fetched again, not lost. The pool's frames go the
other way the same way, by offset, so a send retried after such a failure is
written once.

The worker is read only while the pool keeps up: past ``_BACKLOG`` unread
bytes on a stream the actor stops reading it, and the worker's writes wait. The
pool asks for its output (stdout, stderr) only while it keeps up with logging
what came before, and takes at most ``OUTPUT_REPLY`` bytes of each a reply: a
worker that prints faster than the pool logs waits, as a local worker does on
its pipe, instead of filling the pool's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Coroutine
from typing import Any, Final

from pypit._proctree import kill_tree

_READ_SIZE: Final = 262_144
_BACKLOG: Final = 4 * 1024 * 1024
"""Bytes of one stream held for the pool beyond a frame being received."""
OUTPUT_REPLY: Final = 1024 * 1024
"""Bytes of stdout, and of stderr, one reply takes at most."""

Reply = tuple[bytes, bytes, bytes, bool, "int | None", int]
"""What :meth:`WorkerHost.receive` returns: the channel's, stdout's and stderr's bytes
past what the pool had, whether the worker ended (and all of it was read), its exit
status, and its resident memory in bytes."""


class _Tape:
    """An append-only stream of bytes, kept from the first byte the reader has not
    acknowledged."""

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.start = 0
        """The offset of ``data[0]`` in the whole stream."""
        self.limit = limit
        self.room = asyncio.Event()
        self.room.set()

    def acknowledge(self, offset: int) -> None:
        drop = min(max(offset - self.start, 0), len(self.data))
        if drop:
            del self.data[:drop]
            self.start += drop
        if len(self.data) < self.limit:
            self.room.set()

    def after(self, offset: int, most: int | None = None) -> bytes:
        begin = max(offset - self.start, 0)
        return bytes(self.data[begin : None if most is None else begin + most])

    def has_after(self, offset: int) -> bool:
        return self.start + len(self.data) > offset

    def append(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) >= self.limit:
            self.room.clear()


class WorkerHost:
    """One pool slot on a Ray node: the worker process it runs, and the relay of its bytes.

    The worker runs the actor's own interpreter (the one the cluster and the
    ``runtime_env`` chose); ``settings`` are the worker's ``PYPIT_WORKER_*``
    variables and the pool's ``env``; ``token`` is handed to the worker through a
    pipe, and comes back to the pool in the worker's greeting.
    The constructor only records them: :meth:`start` does the work, so that an
    actor that was never placed is told from one whose worker failed.
    """

    def __init__(self, settings: dict[str, str], token: str, max_frame_size: int) -> None:
        self._settings = settings
        self._token = token
        limit = max_frame_size + _BACKLOG
        self._tapes = (_Tape(limit), _Tape(_BACKLOG), _Tape(_BACKLOG))
        self._written = 0
        self._directory = ""
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ended = False
        self._returncode: int | None = None

    async def start(self) -> tuple[int, str]:
        """Start the worker process; its pid and this node's id."""
        import ray

        self._directory = tempfile.mkdtemp(prefix="pypit-")
        path = os.path.join(self._directory, "worker.sock")
        connected = asyncio.Event()
        server = await asyncio.start_unix_server(
            lambda reader, writer: self._accept(reader, writer, connected), path
        )
        os.chmod(path, 0o600)
        from pypit.pool._launch import WORKER_PROCESS, worker_environment

        token_reader, env = worker_environment(self._token, path, self._settings)
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pypit.worker",
                env=env,
                pass_fds=(token_reader,),
                **WORKER_PROCESS,
            )
        finally:
            os.close(token_reader)
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        self._spawn(self._pump(self._process.stdout, self._tapes[1]))
        self._spawn(self._pump(self._process.stderr, self._tapes[2]))
        self._spawn(self._watch(server, connected))
        return self._process.pid, ray.get_runtime_context().get_node_id()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connected: asyncio.Event
    ) -> None:
        # Only the worker this actor started may connect, once; anyone else on the node is
        # refused before a byte is read (the directory is private besides).
        from pypit.pool._channel import peer_credentials

        sock = writer.get_extra_info("socket")
        peer = peer_credentials(sock)
        process = self._process
        if (
            connected.is_set()
            or process is None
            or (peer is not None and peer != (process.pid, os.getuid()))
        ):
            writer.close()
            return
        self._writer = writer
        connected.set()
        await self._pump(reader, self._tapes[0])

    async def _pump(self, reader: asyncio.StreamReader, tape: _Tape) -> None:
        with contextlib.suppress(OSError):
            while True:
                await tape.room.wait()
                chunk = await reader.read(_READ_SIZE)
                if not chunk:
                    break
                tape.append(chunk)
                self._changed.set()

    async def _watch(self, server: asyncio.AbstractServer, connected: asyncio.Event) -> None:
        """Wait for the worker to exit and everything it wrote to be read."""
        assert self._process is not None
        returncode = await self._process.wait()
        server.close()
        # The pumps end at the end of their pipes and of the socket, which the worker's
        # exit closes (what it started dies with it: it is their subreaper, and kills them).
        pumps = [task for task in self._tasks if task is not asyncio.current_task()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*pumps, return_exceptions=True), 5.0)
        self._returncode = returncode
        self._ended = True
        self._changed.set()
        shutil.rmtree(self._directory, ignore_errors=True)

    async def send(self, offset: int, data: bytes) -> None:
        """Write the pool's bytes from ``offset`` on (what was written already is skipped);
        returns once the worker's socket took them."""
        skip = self._written - offset
        if self._writer is None or skip >= len(data) or self._ended:
            return
        if skip < 0:
            raise ValueError(f"bytes from {offset} sent, {self._written} written so far")
        self._writer.write(data[skip:] if skip else data)
        self._written += len(data) - skip
        with contextlib.suppress(OSError):
            await self._writer.drain()

    async def receive(
        self,
        offsets: tuple[int, int, int],
        timeout: float,
        wants: tuple[bool, bool] = (True, True),
    ) -> Reply:
        """What the worker wrote past ``offsets`` (the pool has the rest): as soon as there
        is any, or after ``timeout`` seconds with nothing. ``wants`` says whether the pool
        takes stdout and stderr now (it does not while it is behind with logging them);
        of each, a reply brings ``OUTPUT_REPLY`` bytes at most. The worker is said to
        have ended once nothing of it is left to take."""
        for tape, offset in zip(self._tapes, offsets, strict=True):
            tape.acknowledge(offset)
        taken = [
            (tape, offset)
            for tape, offset, want in zip(self._tapes, offsets, (True, *wants), strict=True)
            if want
        ]
        if not self._ended and not any(tape.has_after(offset) for tape, offset in taken):
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        channel = self._tapes[0].after(offsets[0])
        stdout, stderr = (
            tape.after(offset, OUTPUT_REPLY) if want else b""
            for tape, offset, want in zip(self._tapes[1:], offsets[1:], wants, strict=True)
        )
        ended = self._ended and not any(
            tape.has_after(offset + len(data))
            for tape, offset, data in zip(
                self._tapes[1:], offsets[1:], (stdout, stderr), strict=True
            )
        )
        return channel, stdout, stderr, ended, self._returncode, self._rss()

    def _rss(self) -> int:
        import psutil

        if self._process is not None and not self._ended:
            with contextlib.suppress(psutil.Error, OSError):
                return int(psutil.Process(self._process.pid).memory_info().rss)
        return 0

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the worker's process group; SIGKILL to everything below it too."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        if sig == signal.SIGKILL:
            kill_tree(process.pid, root_too=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

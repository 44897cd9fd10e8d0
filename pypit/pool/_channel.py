"""The pool's side of the worker channels: a Unix socket server and framed connections.

Two implementations of one small interface. On asyncio, a connection is an
``asyncio.BufferedProtocol``: frames are handled in ``buffer_updated`` as they
arrive and written with ``transport.write``, with no task and no await per
message.
On any other backend (trio), a connection runs a reader and a writer task over
an anyio socket stream. Both coalesce writes: frames queued in one turn of the
event loop leave in one ``write``. A large frame (a map's chunk of inputs) leaves
at once with those queued before it: it cost far more to make than a write, and
the worker would otherwise wait for whatever else that turn of the loop does
(such as making the next frames).

A new connection starts in greeting mode: the server hands its first frame to
``on_greeting``; frames that arrive before the owner attaches are kept and
replayed by :meth:`Connection.attach`.

A connection and its owner (a worker handle) refer to each other. Closing a
connection breaks that cycle and drops every byte it holds, so that nothing of
a dead worker's channel, such as a large frame half received, waits for the
cyclic garbage collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.abc

from pypit import _wire
from pypit._errors import ProtocolError

FrameHandler = Callable[[bytes], None]
LostHandler = Callable[[str], None]
GreetingHandler = Callable[["Connection", bytes], bool]

# A peer is not trusted until its greeting was accepted: it may send one small frame,
# within a second, and only so many may wait at once.
GREETING_MAX_SIZE: Final = 16_384
GREETING_TIMEOUT: Final = 1.0
MAX_PENDING_GREETINGS: Final = 256
_READ_SIZE: Final = 262_144
"""Bytes an asyncio connection reads at once, into a buffer its server lends to all of its
connections (a read never allocates: a fresh 256 KiB ``bytes`` per read costs about 20 us,
however little arrived)."""
_STREAM_READ_SIZE: Final = 65_536
"""Bytes a stream connection (trio) reads at once: what the stream allocates per read."""
_WRITE_NOW: Final = 16_384
"""A frame of this many bytes or more is written at once (see the module's docstring)."""
_PEERCRED: Final = struct.Struct("3i")


def peer_credentials(sock: socket.socket | None) -> tuple[int, int] | None:
    """The (pid, uid) of the process at the other end of a Unix socket, where the system
    says (Linux: ``SO_PEERCRED``); None elsewhere."""
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size)
        )
    except OSError:
        return None
    return pid, uid


class _Waiting:
    """The connections of one server that wait to be greeted, oldest first."""

    __slots__ = ("connections",)

    def __init__(self) -> None:
        self.connections: dict[Connection, None] = {}


class Connection:
    """One framed channel to a worker."""

    def __init__(
        self, on_greeting: GreetingHandler, max_frame_size: int, waiting: _Waiting | None = None
    ) -> None:
        self._waiting = waiting if waiting is not None else _Waiting()
        self._on_greeting = on_greeting
        self._max_frame_size = max_frame_size
        self._reader = _wire.FrameReader(max_frame_size, GREETING_MAX_SIZE)
        self.peer: tuple[int, int] | None = None
        """(pid, uid) of the connected process, where the system tells (Linux)."""
        self._on_frame: FrameHandler | None = None
        self._on_lost: LostHandler | None = None
        self._early: list[bytes] = []
        self._greeted = False
        self._lost: str | None = None
        self._outbox: list[bytes] = []

    def _admit(self, sock: socket.socket | None) -> None:
        """A peer connected: note who it is. When too many wait to be greeted, the one that
        waited longest is closed: a worker, which greets as soon as it connects, always
        gets in, and a crowd of strangers costs a bounded number of descriptors."""
        self.peer = peer_credentials(sock)
        waiting = self._waiting.connections
        if len(waiting) >= MAX_PENDING_GREETINGS:
            oldest = next(iter(waiting))
            oldest.close()
            waiting.pop(oldest, None)
        waiting[self] = None

    def _settled(self) -> None:
        """Greeted or gone: it no longer waits."""
        self._waiting.connections.pop(self, None)

    def is_from(self, pid: int) -> bool:
        """Whether the connected process is ``pid``, run by this process's user. Where the
        system cannot tell, the token alone vouches for the peer."""
        if self.peer is None:
            return True
        return self.peer == (pid, os.getuid())

    def attach(self, on_frame: FrameHandler, on_lost: LostHandler) -> None:
        """Route frames to ``on_frame`` from now on, first those that came early."""
        self._on_lost = on_lost
        early, self._early = self._early, []
        try:
            for payload in early:
                on_frame(payload)
        except ProtocolError:
            self._fail("protocol_error")
            return
        self._on_frame = on_frame
        if self._lost is not None:
            on_lost(self._lost)

    def send(self, frame: bytes, *, at_once: bool = False) -> None:
        """Queue a frame; it leaves with the others queued in this turn of the loop, or
        now if ``at_once`` and nothing is queued before it, or now with those queued
        before it if it is large (``_WRITE_NOW``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the channel and let go of what it holds: the start of a frame not yet
        complete, frames not yet written or not yet handed over, and the owner's
        callbacks."""
        raise NotImplementedError

    def _release(self) -> None:
        self._settled()
        self._reader = _wire.FrameReader(self._max_frame_size)
        self._early = []
        self._outbox.clear()
        self._on_frame = None
        self._on_lost = None

    def _received(self, data: bytes | memoryview) -> None:
        try:
            for payload in self._reader.feed(data):
                if self._on_frame is not None:
                    self._on_frame(payload)
                elif not self._greeted:
                    self._greeted = True
                    self._settled()
                    if not self._on_greeting(self, payload):
                        self.close()
                        return
                else:
                    self._early.append(payload)
        except ProtocolError:
            self._fail("protocol_error")

    def _fail(self, reason: str) -> None:
        self._closed(reason)
        self.close()

    def _closed(self, reason: str) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        self._settled()
        self._on_frame = None
        # Nothing arrives any more: a frame cut short never completes, however large.
        self._reader = _wire.FrameReader(self._max_frame_size)
        if self._on_lost is not None:
            self._on_lost(reason)


class _ProtocolConnection(Connection, asyncio.BufferedProtocol):
    """asyncio: frames handled in callbacks, writes coalesced per loop turn. Reads go into
    ``view``, which the connection's server lends to all of its connections: what a read
    brings is taken out of it (into the frame reader) before the loop reads again."""

    def __init__(
        self,
        on_greeting: GreetingHandler,
        max_frame_size: int,
        waiting: _Waiting,
        view: memoryview,
    ) -> None:
        super().__init__(on_greeting, max_frame_size, waiting)
        self._view = view
        self._transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._admit(transport.get_extra_info("socket"))
        self._loop.call_later(GREETING_TIMEOUT, self._check_greeted)

    def _check_greeted(self) -> None:
        if not self._greeted:
            self.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._received(self._view[:nbytes])

    def eof_received(self) -> bool:
        self._closed("closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed("closed" if exc is None else "broken_pipe")

    def send(self, frame: bytes, *, at_once: bool = False) -> None:
        if at_once and not self._flush_scheduled:
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(frame)
            return
        self._outbox.append(frame)
        if len(frame) >= _WRITE_NOW:
            self._flush()  # the flush scheduled, if any, finds nothing left
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is None or self._transport.is_closing():
            self._outbox.clear()
            return
        if not self._outbox:
            return
        if len(self._outbox) == 1:
            self._transport.write(self._outbox[0])
        else:
            self._transport.write(b"".join(self._outbox))
        self._outbox.clear()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._release()


class _StreamConnection(Connection):
    """Any anyio backend: a reader task and a writer task over a socket stream."""

    def __init__(
        self,
        stream: anyio.abc.SocketStream,
        on_greeting: GreetingHandler,
        max_frame_size: int,
        waiting: _Waiting,
    ) -> None:
        super().__init__(on_greeting, max_frame_size, waiting)
        self._stream = stream
        self._wake = anyio.Event()
        self._scope = anyio.CancelScope()
        self._raw: socket.socket | None = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self._writing = False

    async def run(self) -> None:
        self._admit(self._raw)
        with self._scope:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._write_loop)
                with anyio.move_on_after(GREETING_TIMEOUT):
                    while not self._greeted and self._lost is None:
                        await self._read_once()
                if not self._greeted:
                    self.close()
                while self._lost is None:
                    await self._read_once()
                tasks.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()

    async def _read_once(self) -> None:
        try:
            data = await self._stream.receive(_STREAM_READ_SIZE)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._closed("closed")
        except (anyio.BrokenResourceError, OSError):
            self._closed("broken_pipe")
        else:
            self._received(data)

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if self._outbox:
                    data = b"".join(self._outbox)
                    self._outbox.clear()
                    self._writing = True
                    await self._stream.send(data)
                    self._writing = False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._closed("broken_pipe")
            self._scope.cancel()

    def send(self, frame: bytes, *, at_once: bool = False) -> None:
        # At once, with nothing queued or being written, the frame goes straight to the
        # (non-blocking) socket: it does not wait for the writer task's turn; so does a
        # large frame, with those queued before it. What the socket does not take, and
        # every frame behind it, goes through the writer task.
        large = len(frame) >= _WRITE_NOW
        if (
            (large or (at_once and not self._outbox))
            and not self._writing
            and self._raw is not None
            and not self._lost
        ):
            if self._outbox:  # those queued before it go first, with it
                self._outbox.append(frame)
                frame = b"".join(self._outbox)
                self._outbox.clear()
            try:
                sent = self._raw.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # the writer task meets the error and reports the channel lost
            if sent == len(frame):
                return
            frame = frame[sent:]
        self._outbox.append(frame)
        self._wake.set()

    def close(self) -> None:
        self._closed(self._lost or "closed")
        self._scope.cancel()
        self._release()


class Server:
    """The pool's listening socket; calls ``on_greeting`` with each new connection's first frame."""

    def __init__(self, on_greeting: GreetingHandler, max_frame_size: int) -> None:
        self._on_greeting = on_greeting
        self._max_frame_size = max_frame_size
        self._waiting = _Waiting()
        self._asyncio_server: asyncio.AbstractServer | None = None

    async def serve(self, path: str, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``path`` until cancelled."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            await self._serve_streams(path, task_status)
            return
        loop = asyncio.get_running_loop()
        view = memoryview(bytearray(_READ_SIZE))
        server = await loop.create_unix_server(
            lambda: _ProtocolConnection(
                self._on_greeting, self._max_frame_size, self._waiting, view
            ),
            path,
        )
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            server.close()
            with contextlib.suppress(Exception):
                with anyio.CancelScope(shield=True):
                    await server.wait_closed()

    async def _serve_streams(self, path: str, task_status: Any) -> None:
        listener = await anyio.create_unix_listener(path)
        task_status.started()
        async with listener, anyio.create_task_group() as connections:
            while True:
                stream = await listener.accept()
                connection = _StreamConnection(
                    stream, self._on_greeting, self._max_frame_size, self._waiting
                )
                connections.start_soon(connection.run)


class _FutureSignal:
    """A one-shot event for asyncio, on a bare future: cheaper than ``anyio.Event``.

    A waiter cancelled while waiting cancels the future; the next :meth:`set` or
    :meth:`wait` puts a fresh one in its place, so the signal can be waited for
    again (a deadline that passed, then a longer one) and a set is never lost.
    """

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _renewed(self) -> asyncio.Future[None]:
        future = self._future
        if future.cancelled():
            future = self._future = future.get_loop().create_future()
        return future

    def set(self) -> None:
        future = self._renewed()
        if not future.done():
            future.set_result(None)

    def is_set(self) -> bool:
        future = self._future
        return future.done() and not future.cancelled()

    async def wait(self) -> None:
        await self._renewed()


def signal_factory() -> Callable[[], Any]:
    """The cheapest one-shot event for the running backend (``set``, ``is_set``, ``wait``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.Event
    return _FutureSignal

"""A stream as its caller sees it: the chunks of one call of a generator tool.

:class:`Stream` is what ``pool.stream(...)`` returns. It sends the call when its
``async with`` block starts and ends it when the block ends, however it ends, so
nothing about a stream is left to the garbage collector.

Flow control is credit-based, as in HTTP/2 and gRPC: the call carries a window of
``stream_window`` chunks, the worker advances the generator only while fewer than
that many chunks are sent and not yet taken, and the stream grants credit back
(``_wire.Credit``, the count taken so far) each time its consumer has taken half a
window. A stream therefore never holds more than a window of chunks in the parent,
and a worker that sends more breaks the protocol and is replaced.

A stream is given what it needs of its pool: a function that checks and encodes its
call, one that submits it, and the scheduler that settles it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

import anyio
import anyio.lowlevel

from pypit import _wire
from pypit._errors import StreamBusyError
from pypit.pool import _events
from pypit.pool._channel import signal_factory
from pypit.pool._request import Request
from pypit.pool._scheduler import Scheduler

# How long leaving a stream's block waits for the worker to confirm that the generator
# stopped, so that its slot is free when the block ends: a round trip, unless the
# generator is busy computing a chunk (then the worker has ``cancel_grace``).
_CLOSE_GRACE: Final = 0.25
_ENTER_FIRST: Final = (
    "iterate a stream inside its block: `async with pool.stream(...) as chunks: "
    "async for chunk in chunks: ...`, so that leaving the loop early cancels it at once"
)
_ENTERED: Final = "a stream is entered once, for one call: call pool.stream(...) again for another"
STREAM_ENDED: Final = (
    "this stream's block has ended: iterate a stream inside its block, or call "
    "pool.stream(...) again for another call"
)
_stream_ids = itertools.count(1)


class Stream:
    """The chunks of one call of a generator tool: an async context manager that is also
    async-iterable. Get one from :meth:`Pool.stream <pypit.pool.Pool.stream>`::

        async with pool.stream("generate", {"prompt": "hi"}, timeout=5.0) as chunks:
            async for chunk in chunks:
                ...

    The call is checked and sent when the block starts (``UnknownCommandError``,
    ``TypeError`` for a tool that does not stream, ``PoolSaturatedError`` ... are raised
    there). Leaving the block -- at the end of the chunks, by ``break`` or ``return``, by
    an exception or by cancellation -- ends the stream at once: the generator is
    cancelled in the worker (a sync generator between two chunks, an async one at its
    next ``await``; either way its ``finally`` blocks run) and the block waits for the
    worker to confirm (a round trip, 0.25 s at most, even when cancelled), so that the
    worker's slot is free when the block ends.

    Iterating a stream without ``async with`` raises ``TypeError`` before anything is
    sent. ``async for`` never tells an iterator that its loop was left early, so a bare
    stream could only be ended when it is garbage collected -- at some later time,
    outside any task, which trio and anyio warn against -- while its worker kept
    producing chunks nobody takes. A stream that is safe on every exit but not on
    ``break`` would be a trap; failing loudly is the only safe alternative to the block.

    Backpressure: the worker has at most ``stream_window`` chunks (a pool option,
    default 16) sent and not yet taken; then its generator is not advanced until the
    consumer takes more. A consumer that stops reading keeps the block open at the cost
    of at most a window of chunks in this process, and of one worker slot.

    ``timeout`` bounds the wait for a worker (``QueueTimeoutError``: the generator never
    ran) and then each wait for a chunk (``WorkerTimeoutError``; the generator is
    cancelled); time the consumer spends outside ``__anext__`` does not count. Errors of
    the worker (``ToolError``, ``WorkerCrashedError`` ...) are raised by the iteration
    once the chunks sent before them are taken.

    Events: ``("pypit", "rpc", "stream", "opened")`` when the call starts on a worker,
    ``message`` as the consumer takes each chunk, and ``closed`` once, with ``reason``
    ``complete`` (the consumer reached the end), ``error`` (the worker's error was
    raised) or ``cancelled`` (the block was left early, or a chunk's wait timed out).
    A stream that never started emits none of them.

    Iterate it from one task at a time; :meth:`aclose` from another task ends that
    task's iteration.
    """

    __slots__ = (
        "_batch",
        "_busy",
        "_closed",
        "_exited",
        "_metadata",
        "_opened",
        "_pool_name",
        "_prepare",
        "_reason",
        "_request",
        "_scheduler",
        "_signal",
        "_started",
        "_submit",
        "_taken",
        "_timeout",
        "_waiter",
        "_window",
    )

    def __init__(
        self,
        pool_name: str,
        scheduler: Scheduler[Any],
        *,
        prepare: Callable[[], Request],
        submit: Callable[[Request], None],
        window: int,
        timeout: float | None = None,
    ) -> None:
        self._pool_name = pool_name
        self._scheduler = scheduler
        self._prepare = prepare
        self._submit = submit
        self._window = window
        self._timeout = timeout
        self._request: Request | None = None
        self._closed = False
        self._exited = False  # its block ended: iterating it now is a mistake
        self._reason = ""  # how the stream ended, once it did
        self._busy = False
        self._opened = False
        self._started = 0
        self._taken = 0
        self._batch = 1
        self._metadata: dict[str, Any] = {}
        self._signal: Callable[[], Any] = anyio.Event
        self._waiter: Any = None

    @property
    def buffered(self) -> int:
        """Chunks that arrived and are not taken yet: at most the pool's ``stream_window``."""
        request = self._request
        return 0 if request is None or request.chunks is None else len(request.chunks)

    async def __aenter__(self) -> Self:
        if self._request is not None or self._closed:
            raise TypeError(_ENTERED)
        request = self._prepare()
        request.arrived = _Arrivals(self)
        self._batch = max(1, self._window // 2)
        self._signal = signal_factory()
        self._request = request
        try:
            self._submit(request)
        except BaseException:
            self._closed = True
            raise
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._exited = True
        await self.aclose()

    def __aiter__(self) -> Self:
        self._check_iterable()
        return self

    def _check_iterable(self) -> None:
        if self._request is None:
            raise TypeError(_ENTER_FIRST)
        if self._exited and not self._busy:
            raise TypeError(STREAM_ENDED)

    async def __anext__(self) -> Any:
        request = self._request
        self._check_iterable()
        assert request is not None
        if self._busy:
            raise StreamBusyError(
                "another task is taking this stream's chunks: iterate a stream from one "
                "task at a time"
            )
        # A chunk already here is taken without waiting; a cancelled consumer still stops
        # at once rather than after up to a window of chunks.
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._busy = True
        try:
            return await self._next(request)
        finally:
            self._busy = False

    async def _next(self, request: Request) -> Any:
        chunks = request.chunks
        assert chunks is not None
        while not self._reason:
            if chunks:
                value, size = chunks.popleft()
                self._taken += 1
                if _events.listened(_events.STREAM_MESSAGE):
                    _events.emit(
                        _events.STREAM_MESSAGE,
                        {"bytes": size, "sequence_number": self._taken},
                        self._metadata,
                    )
                if self._taken - request.credited >= self._batch:
                    self._grant(request)
                return value
            if request.done.is_set():
                if request.error is not None:
                    self._finish("error")
                    raise request.error
                self._finish("complete")
                break
            await self._wait(request)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """End the stream, as leaving its block does; nothing happens the second time."""
        if self._closed:
            return
        self._closed = True
        request = self._request
        if request is None:
            return
        self._finish("cancelled")
        if self._waiter is not None:
            self._waiter.set()  # a task waiting for a chunk ends its iteration
        if request.abandoned and not request.done.is_set():
            with anyio.move_on_after(_CLOSE_GRACE, shield=True):
                await request.done.wait()

    # -- inside ------------------------------------------------------------------------

    async def _wait(self, request: Request) -> None:
        """Wait for the next arrival while the stream's timeout allows."""
        if request.worker is None:
            deadline = request.queue_deadline
        elif self._timeout is None:
            deadline = math.inf
        else:
            deadline = anyio.current_time() + self._timeout
        waiter = self._waiter = self._signal()
        try:
            with anyio.CancelScope(deadline=deadline) as scope:
                await waiter.wait()
        finally:
            self._waiter = None
        if scope.cancelled_caught and not waiter.is_set():
            error = self._scheduler.timed_out(request)
            self._finish("cancelled")
            raise error

    def _arrived(self) -> None:
        """Something arrived for the stream: a worker took it, a chunk, the end."""
        if not self._opened and not self._reason:
            self._open()
        if self._waiter is not None:
            self._waiter.set()

    def _open(self) -> None:
        """Report the stream opened, once it runs on a worker."""
        request = self._request
        if request is None or request.worker is None or self._opened:
            return
        self._opened = True
        self._started = request.sent_at
        self._metadata = {
            "pool_name": self._pool_name,
            "worker_id": request.worker.worker_id,
            "stream_id": next(_stream_ids),
        }
        if _events.listened(_events.STREAM_OPENED):
            _events.emit(
                _events.STREAM_OPENED,
                {"system_time": time.time_ns()},
                {
                    **self._metadata,
                    "command": request.command,
                    "correlation_id": request.correlation_id,
                },
            )

    def _grant(self, request: Request) -> None:
        """Tell the worker how many chunks the consumer took: it may send more."""
        request.credited = self._taken
        worker = request.worker
        if worker is not None and not request.done.is_set():
            worker.send(_wire.encode(_wire.Credit(request.request_id, self._taken)))

    def _finish(self, reason: str) -> None:
        """The stream ended: stop it in the worker (if it runs), count it, report it."""
        if self._reason:
            return
        self._reason = reason
        request = self._request
        assert request is not None
        self._scheduler.abandon(request)
        self._scheduler.counters["completed" if reason == "complete" else "failed"] += 1
        if self._opened and _events.listened(_events.STREAM_CLOSED):
            _events.emit(
                _events.STREAM_CLOSED,
                {"duration": time.monotonic_ns() - self._started, "message_count": self._taken},
                {**self._metadata, "reason": reason},
            )


class _Arrivals:
    """A stream's ``request.arrived``: the pool and the worker handle call :meth:`set`
    when something arrives for the stream (a worker took it, a chunk, the end, an error)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def set(self) -> None:
        self._stream._arrived()

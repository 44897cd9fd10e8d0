"""A call as a worker runs it: its state while it runs, a stream's flow control, and the
text of a tool's exception."""

from __future__ import annotations

import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from pypit import _wire
from pypit._errors import ProtocolError

if TYPE_CHECKING:
    import asyncio


class Cancelled(Exception):
    """Raised inside a sync stream between chunks when the parent cancelled it."""


class Running:
    """A call received and not yet answered, so that a Cancel can reach it.

    ``received`` and ``started`` are monotonic nanoseconds; ``started`` is 0
    while the call waits for a slot in the local queue.
    """

    __slots__ = ("cancelled", "loop", "received", "started", "task", "window")

    def __init__(self) -> None:
        self.cancelled = False
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.received = time.monotonic_ns()
        self.started = 0
        self.window: Window | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self._cancel_task)
        if self.window is not None:
            self.window.wake()

    def _cancel_task(self) -> None:
        # On the loop thread. One task runs a slot's async calls one after the other: once
        # this call ended (``task`` is None again), the task runs another call.
        if self.task is not None:
            self.task.cancel()


class Window:
    """A stream's flow control (see ``_wire.Credit``): its generator is advanced only while
    fewer than ``size`` of its chunks are sent and not yet taken by the consumer in the
    parent, so a consumer that stops reading stops the generator instead of filling the
    parent's memory.

    A sync generator's thread waits in :meth:`wait`, an async generator in
    :meth:`wait_async`; the reading thread grants credit, and a cancellation ends the wait
    (the call's flag for a thread, the task's cancellation on the loop).
    """

    __slots__ = ("_condition", "_loop", "_running", "_waiter", "consumed", "sent", "size")

    def __init__(
        self, size: int, running: Running, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        if size < 1:
            raise ProtocolError(f"a stream needs a window of at least one chunk, not {size}")
        self.size = size
        self.sent = 0
        self.consumed = 0
        self._running = running
        self._condition = threading.Condition(threading.Lock())
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        running.window = self  # where credit and a cancellation find it

    def grant(self, consumed: int) -> None:
        """The parent's credit: its consumer has taken ``consumed`` chunks in all."""
        with self._condition:
            if consumed == self.consumed:
                return  # sent again after a reconnection
            if not self.consumed < consumed <= self.sent:
                raise ProtocolError(
                    f"credit for {consumed} chunks of a stream that sent {self.sent} "
                    f"and had credit for {self.consumed}"
                )
            self.consumed = consumed
            self._condition.notify()
            waiter, self._waiter = self._waiter, None
        if waiter is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(_resolve, waiter)

    def wake(self) -> None:
        """The call was cancelled: a thread waiting for credit stops waiting."""
        with self._condition:
            self._condition.notify()

    def wait(self) -> bool:
        """Wait until the generator may be advanced; False once the call is cancelled."""
        with self._condition:
            while self.sent - self.consumed >= self.size and not self._running.cancelled:
                self._condition.wait()
            return not self._running.cancelled

    async def wait_async(self) -> None:
        """Wait, on the loop, until the generator may be advanced."""
        while True:
            with self._condition:
                if self.sent - self.consumed < self.size:
                    return
                assert self._loop is not None
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def sent_one(self) -> None:
        """Count a chunk before it leaves: its credit may come back at once."""
        with self._condition:
            self.sent += 1


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def waited(reply: _wire._Message, running: Running) -> _wire._Message:
    """The call's final answer, with the time it waited in this worker before it started
    and the time it ran."""
    if running.started and isinstance(reply, _wire.Result | _wire.Error | _wire.End):
        reply.waited = running.started - running.received
        reply.took = time.monotonic_ns() - running.started
    return reply


def describe_exception(exc: BaseException) -> tuple[str, str, str]:
    """The qualified type name, message and formatted traceback of a tool's exception, as
    text the wire can carry, whatever the exception's own methods do: an exception that
    cannot describe itself still answers its call."""
    error_type = _qualified_name(type(exc))
    try:
        message = str(exc)
    except BaseException:
        message = f"<unprintable {error_type} object>"
    try:
        formatted = "".join(traceback.format_exception(exc))
    except BaseException:
        formatted = ""
    return error_type, _sendable(message), _sendable(formatted)


def _sendable(text: str) -> str:
    """``text`` with what UTF-8 cannot hold escaped (lone surrogates, as in a file name
    decoded with ``surrogateescape``): msgpack strings are UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"

"""A call as a worker runs it: its state while it runs, a stream's chunks and flow
control, its python.call.* events, and the text of a tool's exception."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from pypit import _wire
from pypit._errors import ProtocolError
from pypit._shared import MAX_STRING_LENGTH

if TYPE_CHECKING:
    import asyncio

    from pypit.worker._outbox import Outbox
    from pypit.worker._telemetry import WorkerTelemetry


class Cancelled(Exception):
    """Raised inside a sync stream between chunks when the parent cancelled it."""


class Running:
    """A call received and not yet answered, so that a Cancel can reach it.

    ``received`` and ``started`` are monotonic nanoseconds; ``started`` is 0
    while the call waits for a slot in the local queue.
    """

    __slots__ = ("cancelled", "halt", "loop", "received", "started", "task", "window")

    def __init__(self) -> None:
        self.cancelled = False
        self.halt: Callable[[], object] | None = None
        """Stops a batch that runs in C's loop (see ``_batch``), called on cancel."""
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.received = time.monotonic_ns()
        self.started = 0
        self.window: Window | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.halt is not None:
            self.halt()
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
    if running.started and isinstance(
        reply, _wire.Result | _wire.Results | _wire.Error | _wire.End
    ):
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


def stream(
    outbox: Outbox, call: _wire.Call, chunks: Iterable[Any], running: Running
) -> _wire._Message:
    """Send a sync generator's chunks, advancing it only while its window has room;
    the stream's last message. However it ends, the generator is closed before that
    message leaves, so a cancelled tool's ``finally`` has run when the parent hears."""
    iterator = iter(chunks)
    window = Window(call.window, running)
    try:
        while window.wait():
            try:
                value = next(iterator)
            except StopIteration:
                return _wire.End(call.id)
            _send_chunk(outbox, call.id, window, value)
        raise Cancelled
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


async def stream_async(
    outbox: Outbox, call: _wire.Call, chunks: AsyncIterator[Any], running: Running
) -> _wire._Message:
    """:func:`stream` for an async generator: it awaits credit, and a cancellation
    ends the wait."""
    import asyncio

    window = Window(call.window, running, asyncio.get_running_loop())
    try:
        while True:
            await window.wait_async()
            try:
                value = await anext(chunks)
            except StopAsyncIteration:
                return _wire.End(call.id)
            _send_chunk(outbox, call.id, window, value)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _send_chunk(outbox: Outbox, call_id: int, window: Window, value: Any) -> None:
    """Send one chunk; :class:`Unsendable` when it cannot travel, which ends the
    stream with that error (no chunk may follow the call's last message)."""
    frame = outbox.encode_chunk(call_id, window.sent + 1, value)
    window.sent_one()
    outbox.send(frame, ship=True)


def _metadata(call: _wire.Call) -> dict[str, Any]:
    return {
        "command": call.command,
        "request_id": call.id,
        "correlation_id": call.correlation_id,
    }


class CallEvents:
    """python.call.start, stop and exception of the calls a worker runs (when someone in
    the pool listens), and the error that answers a call that did not complete."""

    __slots__ = ("_telemetry",)

    def __init__(self, telemetry: WorkerTelemetry) -> None:
        self._telemetry = telemetry

    def started(self, call: _wire.Call) -> int:
        if self._telemetry.wants("call.start"):
            self._telemetry.ship("call.start", {"system_time": time.time_ns()}, _metadata(call))
        return time.monotonic_ns()

    def stopped(self, call: _wire.Call, started: int) -> None:
        if self._telemetry.wants("call.stop"):
            duration = time.monotonic_ns() - started
            self._telemetry.ship("call.stop", {"duration": duration}, _metadata(call))

    def cancelled(self, call: _wire.Call, started: int) -> _wire.Error:
        if self._telemetry.wants("call.exception"):
            self._exception(call, started, "Cancelled", "the call was cancelled")
        return _wire.Error(call.id, "cancelled", "Cancelled", "the call was cancelled")

    def failed(self, call: _wire.Call, started: int, exc: BaseException) -> _wire.Error:
        error_type, message, formatted = describe_exception(exc)
        if self._telemetry.wants("call.exception"):
            self._exception(call, started, error_type, message)
        return _wire.Error(call.id, "tool", error_type, message, formatted)

    def unsendable(self, call: _wire.Call, started: int, reply: _wire.Error) -> _wire.Error:
        """A stream stopped at a chunk that cannot travel (``reply`` says why): the tool did
        not complete."""
        if self._telemetry.wants("call.exception"):
            self._exception(call, started, reply.type, reply.message)
        return reply

    def _exception(self, call: _wire.Call, started: int, error_type: str, message: str) -> None:
        metadata = _metadata(call)
        metadata["error_type"] = error_type
        metadata["error_message"] = message[:MAX_STRING_LENGTH]
        self._telemetry.ship(
            "call.exception", {"duration": time.monotonic_ns() - started}, metadata
        )

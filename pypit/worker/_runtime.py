"""The worker process: connect, hand-shake, serve calls until told to stop.

Threads, and why. Calls run on a leader/followers pool of
``max_concurrency + 1`` threads. The leader reads the channel and queues the
calls it reads; when a call can take a free slot, the leader hands the
reading over to a follower and runs the call itself, so an idle worker starts
a call on the thread that received it, with no hand-off on its path. A thread
that finishes a call goes straight on to the next queued one in the same slot,
holding its result back to leave with the next one's when that call is
typically quick (never longer than a millisecond): under load, calls run
without thread switches and results leave in batches. Some thread is always
reading, so pings and cancellations are answered while tools block. Async
tools run on one asyncio loop thread, started on first use; the thread that
starts a call of one holds its slot and waits while the loop runs it, and then
the async calls queued behind it, in the same slot. Sync and async calls thus
queue together, in the order they came, for the same ``max_concurrency``
slots: an adapter that is not thread-safe is never entered twice at once with
``max_concurrency=1``. A flusher thread ships telemetry, logs and printed
output produced between calls.

Writes from any thread go through :meth:`Runtime.send`, which coalesces: the
thread that finds the channel idle writes everything queued so far in one
system call, and the others just queue. What the worker's code logged,
printed and emitted is queued ahead of each answer, in the same critical
section, so it reaches the pool before the answer of the call that produced
it, whichever thread ships it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from pypit import _wire
from pypit._errors import FrameTooLargeError, ProtocolError, SerializationError
from pypit._shared import MAX_STRING_LENGTH, correlation_id_var
from pypit.worker import _batch, _guard, _logging, _telemetry
from pypit.worker._adapter import ToolSpec, discover_tools, load_adapter, session_id_var
from pypit.worker._telemetry import (
    EventBuffer,
    Settings,
    WorkerTelemetry,
    trace_context_var,
)

if TYPE_CHECKING:
    # asyncio costs a quarter of a worker's start-up; it is imported only for
    # adapters with async tools or an async setup().
    import asyncio

_FLUSH_INTERVAL: Final = 0.05
_HOLD_FOR_CALLS_UNDER: Final = 100_000  # ns
_HOLD_AT_MOST: Final = 1_000_000  # ns

ENV_PREFIX: Final = "PYPIT_WORKER_"

current: Runtime | None = None
"""The runtime of this worker process, once it started."""


class _Cancelled(Exception):
    """Raised inside a sync stream between chunks when the parent cancelled it."""


class _Unsendable(Exception):
    """Raised inside a stream whose chunk cannot be encoded: the stream ends with ``reply``."""

    def __init__(self, reply: _wire.Error) -> None:
        super().__init__(reply.message)
        self.reply = reply


class _Running:
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
        self.window: _Window | None = None

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


class _Window:
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
        self, size: int, running: _Running, loop: asyncio.AbstractEventLoop | None = None
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


class Runtime:
    """One worker's connection, tools and threads."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_concurrency: int,
        max_frame_size: int,
        path: str = "",
        token: str = "",
        parent_pid: int = 0,
        reconnect_window: float = 0.0,
        buffer_size: int = _telemetry.DEFAULT_BUFFER_SIZE,
    ) -> None:
        self._sock = sock
        self._path = path
        self._token = token
        self.serving = False
        """Ready was sent: from then on a broken channel is worth reconnecting."""
        self._parent_pid = parent_pid
        self._reconnect_window = reconnect_window
        self._max_concurrency = max_concurrency
        self._max_frame_size = max_frame_size
        self._send_lock = threading.Lock()
        self._outbox: list[bytes] = []
        self._outbox_answers: list[int] = []
        self._sending_answers: list[int] = []  # answers in the write now under way
        self._flushing = False
        self._broken = False
        self._running: dict[int, _Running] = {}
        # Calls, sync and async, wait here for one of max_concurrency slots; the
        # pool may send more than that at once (its prefetch).
        self._queue: deque[_wire.Call] = deque()
        self._read_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._busy_slots = 0
        self._finished = threading.Event()
        self._handlers: dict[type[Any], Callable[[Any], bool]] = {}
        self._reader = _wire.FrameReader(max_frame_size)
        self.error: BaseException | None = None
        # Typical duration of each tool (moving average, ns): an executor
        # holds a result back for the next call only if that call is quick.
        self._typical: dict[str, float] = {}
        self._held_since = 0
        self._holding = threading.Event()
        self._tools: dict[str, ToolSpec] = {}
        self._adapter: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        # One event wakes the flusher for both of its reasons: a held result,
        # and a batch of telemetry waiting.
        self.telemetry = WorkerTelemetry(EventBuffer(buffer_size, filling=self._holding))
        self.events = self.telemetry.buffer
        self.output = _logging.OutputBuffer(filling=self._holding)
        self._sample_interval = 0.0
        self._sampler_wake = threading.Event()
        self._sampler: threading.Thread | None = None
        self._stopping = threading.Event()
        self.pid = os.getpid()

    # -- writing -------------------------------------------------------------

    def send(self, *frames: bytes, answers: int | None = None, ship: bool = False) -> None:
        """Queue frames and write them, coalesced with whatever other threads queued.

        ``answers`` is the call whose last reply is among the frames: until they
        are written, that call counts as in progress (see :meth:`_reconnect`).
        With ``ship``, the output and telemetry waiting go ahead of the frames.
        """
        with self._send_lock:
            if ship:
                self._outbox.extend(self._shipment())
            self._outbox.extend(frames)
            if answers is not None:
                self._outbox_answers.append(answers)
                self._running.pop(answers, None)
            if self._flushing:
                return
            self._flushing = True
        while True:
            with self._send_lock:
                if not self._outbox or self._broken:
                    self._flushing = False
                    return
                data = b"".join(self._outbox)
                self._outbox.clear()
                self._sending_answers, self._outbox_answers = self._outbox_answers, []
            try:
                self._sock.sendall(data)
            except OSError:
                # Kept whole for the next connection: what part of it left
                # went down with the old one.
                with self._send_lock:
                    self._outbox.insert(0, data)
                    self._outbox_answers[:0] = self._sending_answers
                    self._sending_answers = []
                    self._broken = True
                    self._flushing = False
                return
            with self._send_lock:
                self._sending_answers = []

    def _send_message(self, message: _wire._Message) -> None:
        self.send(_wire.encode(message, self._max_frame_size))

    def _finish(self, message: _wire._Message, *, hold: bool = False) -> None:
        """Send a call's last message, preceded by the output and telemetry it produced
        (a line it left unfinished included).

        With ``hold``, the frames wait for the next ones instead of leaving
        now: under load, results leave in batches.
        """
        call_id: int = getattr(message, "id")  # noqa: B009 - every final reply has an id
        frame = self._encode_reply(message)
        _logging.end_lines()
        if hold:
            with self._send_lock:
                self._outbox.extend(self._shipment())
                self._outbox.append(frame)
                self._outbox_answers.append(call_id)
                self._running.pop(call_id, None)
                if not self._held_since:
                    self._held_since = time.monotonic_ns()
                    self._holding.set()
            return
        self._held_since = 0
        self.send(frame, answers=call_id, ship=True)

    def _shipment(self) -> list[bytes]:
        """The frames of the output and telemetry waiting, oldest first (the send lock is
        held: whatever is queued after them was produced after them)."""
        frames: list[bytes] = []
        while (output := self.output.drain()) is not None:
            frames.extend(self._encode_output(output))
            if len(output.entries) < _logging.MAX_BATCH:
                break
        while (batch := self.events.drain()) is not None:
            frames.append(_wire.encode(batch, self._max_frame_size))
            if len(batch.events) < _telemetry.MAX_BATCH:
                break
        return frames

    def _encode_output(self, output: _wire.Output) -> list[bytes]:
        """``output`` as frames under the size limit: halves of it, if need be, and an entry
        too large for a frame of its own is counted as lost."""
        try:
            return [_wire.encode(output, self._max_frame_size)]
        except (FrameTooLargeError, SerializationError):
            entries = output.entries
            if len(entries) <= 1:
                return [_wire.encode(_wire.Output([], output.dropped + len(entries)))]
            half = len(entries) // 2
            return [
                *self._encode_output(_wire.Output(entries[:half], output.dropped)),
                *self._encode_output(_wire.Output(entries[half:])),
            ]

    def _encode_reply(self, message: _wire._Message) -> bytes:
        """The frame of a call's answer or, if a value in it cannot travel, of the error
        that says so: whatever a tool returned, its call gets an answer."""
        try:
            return _wire.encode(message, self._max_frame_size)
        except (FrameTooLargeError, SerializationError) as exc:
            if isinstance(message, _wire.Results) and isinstance(exc, SerializationError):
                return self._encode_reply(_batch.without_unsendable(message))
            return _wire.encode(_unsent(getattr(message, "id", 0), exc))

    def _encode_chunk(self, call_id: int, seq: int, value: Any) -> bytes:
        """The frame of a stream's chunk; :class:`_Unsendable` if it cannot travel (the
        stream must end there: a chunk after the error would break the protocol)."""
        try:
            return _wire.encode(_wire.Chunk(call_id, seq, value), self._max_frame_size)
        except (FrameTooLargeError, SerializationError) as exc:
            raise _Unsendable(_unsent(call_id, exc, f"chunk {seq}: ")) from None

    # -- start-up ------------------------------------------------------------

    def load(self, adapter_spec: str) -> list[_wire.Tool]:
        """Import and set up the adapter; return its tools."""
        adapter_class = load_adapter(adapter_spec)
        self._adapter = adapter_class()
        self._tools = discover_tools(self._adapter)
        setup = getattr(self._adapter, "setup", None)
        if setup is not None:
            self._call_blocking(setup)
        return [_wire.Tool(t.name, t.description, t.is_stream) for t in self._tools.values()]

    def _call_blocking(self, function: Callable[[], Any]) -> None:
        if inspect.iscoroutinefunction(function):
            import asyncio

            asyncio.run_coroutine_threadsafe(function(), self._event_loop()).result()
        else:
            function()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio

        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._run_loop, args=(loop,), name="pypit-async-tools", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the async tools' loop for as long as the worker lives.

        Tools can end ``run_forever``: ``loop.stop()``, or SystemExit and
        KeyboardInterrupt raised in a task or callback of their own, which
        asyncio lets escape the loop. The loop runs on, or every async call
        started or waiting would wait for it forever.
        """
        while not self._stopping.is_set() and not loop.is_closed():
            try:
                loop.run_forever()
            except BaseException:
                traceback.print_exc()

    # -- serving -------------------------------------------------------------

    def serve(self) -> None:
        """Handle messages until Shutdown or the channel closes."""
        self._handlers = {
            _wire.Call: self._on_call,
            _wire.Cancel: self._on_cancel,
            _wire.Ping: self._on_ping,
            _wire.Shutdown: lambda _message: False,
            _wire.Configure: self._on_configure,
            _wire.Credit: self._on_credit,
        }
        threading.Thread(
            target=self._or_stop, args=(self._flusher,), name="pypit-telemetry", daemon=True
        ).start()
        # One thread more than can run calls: some thread is always reading.
        for n in range(self._max_concurrency + 1):
            threading.Thread(
                target=self._or_stop, args=(self._take_turns,), name=f"pypit-tools-{n}", daemon=True
            ).start()
        self._finished.wait()
        if self.error is not None:
            raise self.error

    def _or_stop(self, work: Callable[[], None]) -> None:
        """Run one of the worker's own threads; an exception escaping it is a defect that
        ends the worker (the pool sees a crash and replaces it) rather than a thread that
        vanishes and leaves its calls unanswered."""
        try:
            work()
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            self._finished.set()

    def _take_turns(self) -> None:
        """Lead (read the channel) until a call can run, then run it and the calls queued
        behind it, then go back to waiting for the lead."""
        while not self._finished.is_set():
            with self._read_lock:
                call = self._lead()
            if call is not None:
                self._run_queue(call)

    def _lead(self) -> _wire.Call | None:
        """Read until there is a call for a free slot; None when the worker stops."""
        while not self._finished.is_set():
            call = self._claim()
            if call is not None:
                return call
            try:
                data = self._sock.recv(262_144)
                if not data:
                    if not self._reconnect():
                        self._finished.set()
                        return None
                    continue
                for payload in self._reader.feed(data):
                    message = _wire.decode_to_worker(payload)
                    if not self._handlers[type(message)](message):
                        self._finished.set()
                        return None
            except OSError:
                if not self._reconnect():
                    self._finished.set()
            except BaseException as exc:
                self.error = exc
                self._finished.set()
        return None

    def _reconnect(self) -> bool:
        """The channel broke: connect again within the window, presenting the token.

        Not when the pool asked to stop or the parent is gone. Frames not sent
        yet leave on the new connection, after the Hello that names the calls
        still in progress (the pool fails the others: their results were lost).
        """
        if (
            self._stopping.is_set()
            or os.getppid() != self._parent_pid
            or not self._token
            or not self.serving
        ):
            # Before it is ready a worker has nothing to come back to: the pool saw its
            # start fail, and starts another.
            return False
        with contextlib.suppress(OSError):
            self._sock.close()
        deadline = time.monotonic() + self._reconnect_window
        while time.monotonic() < deadline:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            reader = _wire.FrameReader(self._max_frame_size)
            try:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock.connect(self._path)
                with self._send_lock:
                    running = sorted(
                        {*self._running, *self._outbox_answers, *self._sending_answers}
                    )
                hello = _wire.Hello(self._token, self.pid, running=running)
                sock.sendall(_wire.encode(hello))
                # Accepted only once the pool answers (its Configure comes
                # first); a refused connection is just closed.
                frames: list[bytes] = []
                while not frames:
                    data = sock.recv(65_536)
                    if not data:
                        raise ConnectionRefusedError
                    frames = reader.feed(data)
                sock.settimeout(None)
            except OSError:
                sock.close()
                time.sleep(0.05)
                continue
            self._sock = sock
            self._reader = reader
            with self._send_lock:
                self._broken = False
            self.send()
            for payload in frames:
                message = _wire.decode_to_worker(payload)
                if not self._handlers[type(message)](message):
                    self._finished.set()
            return True
        return False

    def _claim(self) -> _wire.Call | None:
        """The next queued call, if a slot is free for it (the slot is taken)."""
        with self._state_lock:
            if self._queue and self._busy_slots < self._max_concurrency:
                self._busy_slots += 1
                return self._start_next()
        return None

    def _start_next(self) -> _wire.Call:
        """Take the first queued call and mark it started (the state lock is held): from
        here on a Cancel cancels it instead of dropping it."""
        call = self._queue.popleft()
        running = self._running.get(call.id)
        if running is not None:
            running.started = time.monotonic_ns()
        return call

    def _run_queue(self, call: _wire.Call) -> None:
        """Run ``call``, then, holding the same slot, every call queued meanwhile."""
        while True:
            try:
                self._run_call(call)
            except BaseException:
                # Not a tool's doing (what a tool raises is its call's answer) but a defect
                # of the worker's own: it ends the worker (see _or_stop), and never with a
                # slot held.
                with self._state_lock:
                    self._busy_slots -= 1
                raise
            with self._state_lock:
                if not self._queue:
                    self._busy_slots -= 1
                    return
                call = self._start_next()

    def _run_call(self, call: _wire.Call) -> None:
        """Run one started call and send its answer."""
        started = time.monotonic_ns()
        running = self._running.get(call.id)
        spec = self._tools[call.command]
        if running is None:
            reply: _wire._Message | None = None
        elif spec.is_async:
            # The answers leave from the loop thread; this thread waits, holding the
            # slot, so that async calls count against max_concurrency too.
            self._await_async(call, spec, running)
            reply = None
        elif running.cancelled:
            reply = _waited(self._cancelled(call, started), running)
        else:
            reply = _waited(self._run_sync(call, spec, running), running)
            elapsed = time.monotonic_ns() - started
            typical = self._typical.get(call.command)
            self._typical[call.command] = (
                elapsed if typical is None else 0.8 * typical + 0.2 * elapsed
            )
        if reply is not None:
            with self._state_lock:
                following = self._queue[0].command if self._queue else None
            self._finish(reply, hold=self._may_hold(following, time.monotonic_ns()))

    def stop(self) -> None:
        """Stop the threads, run ``teardown()``, flush output and telemetry."""
        self._stopping.set()
        self._finished.set()
        teardown = getattr(self._adapter, "teardown", None)
        if teardown is not None:
            try:
                self._call_blocking(teardown)
            except Exception:
                traceback.print_exc()
        self._sampler_wake.set()
        # What is printed from here on (the worker's exit) goes to the pipes, and what was
        # printed and logged before leaves now.
        _logging.end_lines(every_thread=True)
        _logging.detach()
        self.send(ship=True)

    def _on_configure(self, message: _wire.Configure) -> bool:
        self.telemetry.settings = Settings(
            enabled=message.enabled,
            rate=message.sampling_rate,
            listened=message.listened,
            allow=message.allow,
            deny=message.deny,
        )
        _logging.apply_level(message.log_level)
        if message.sample_interval != self._sample_interval:
            self._sample_interval = message.sample_interval
            self._sampler_wake.set()
            if self._sampler is None and message.sample_interval > 0:
                self._sampler = threading.Thread(
                    target=self._sample, name="pypit-sampler", daemon=True
                )
                self._sampler.start()
        if message.seq:
            self._send_message(_wire.Ack(message.seq))
        return True

    def _on_ping(self, message: _wire.Ping) -> bool:
        self._send_message(_wire.Pong(message.seq))
        return True

    def _on_cancel(self, message: _wire.Cancel) -> bool:
        running = self._running.get(message.id)
        if running is None:
            return True
        with self._state_lock:
            waiting = not running.started and self._unqueue(message.id)
        if waiting:
            self._drop(message.id, running)
        elif not message.if_waiting:
            running.cancel()
        return True

    def _on_credit(self, message: _wire.Credit) -> bool:
        running = self._running.get(message.id)
        if running is None:
            return True  # the stream ended, or was dropped, while the credit was on its way
        if running.window is None:
            raise ProtocolError(f"credit for call {message.id}, which has sent no chunk")
        running.window.grant(message.consumed)
        return True

    def _unqueue(self, call_id: int) -> bool:
        """Remove a call that has not started from the local queue (state lock held)."""
        for call in self._queue:
            if call.id == call_id:
                self._queue.remove(call)
                return True
        return False

    def _drop(self, call_id: int, running: _Running) -> None:
        """Answer a call cancelled before it started: it never runs."""
        self.send(
            self._encode_reply(
                _wire.Error(
                    call_id,
                    "dropped",
                    "Dropped",
                    "the call was dropped before it started",
                    waited=time.monotonic_ns() - running.received,
                )
            ),
            answers=call_id,
        )

    def _on_call(self, call: _wire.Call) -> bool:
        spec = self._tools.get(call.command)
        if spec is None:
            known = ", ".join(sorted(self._tools))
            self._send_message(
                _wire.Error(
                    call.id,
                    "unknown_command",
                    "UnknownCommandError",
                    f"unknown command {call.command!r}; known tools: {known}",
                )
            )
            return True
        if spec.is_stream != call.stream:
            how = "pool.stream()" if spec.is_stream else "pool.execute()"
            self._send_message(
                _wire.Error(call.id, "usage", "TypeError", f"{call.command!r} is called with {how}")
            )
            return True
        self._running[call.id] = _Running()
        with self._state_lock:
            self._queue.append(call)
        return True

    # -- running tools -------------------------------------------------------

    def _may_hold(self, following: str | None, now: int) -> bool:
        """Whether a result may wait to leave with the next call's: only if that call
        is typically quick and nothing has been held for long."""
        if following is None:
            return False
        typical = self._typical.get(following)
        if typical is None or typical > _HOLD_FOR_CALLS_UNDER:
            return False
        return not self._held_since or now - self._held_since < _HOLD_AT_MOST

    def _arguments(self, args: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args is None:
            return (), {}
        if isinstance(args, dict):
            return (), args
        return (args,), {}

    def _run_sync(self, call: _wire.Call, spec: ToolSpec, running: _Running) -> _wire._Message:
        token = correlation_id_var.set(call.correlation_id)
        trace = trace_context_var.set(call.trace_context)
        session = session_id_var.set(call.session_id)
        started = self._call_started(call)
        try:
            if call.batch:
                batch = _batch.run(call, spec.function, running, _describe)
                reply: _wire._Message = batch or self._cancelled(call, started)
            elif spec.is_stream:
                positional, keywords = self._arguments(call.args)
                reply = self._stream(call, spec.function(*positional, **keywords), running)
            else:
                positional, keywords = self._arguments(call.args)
                reply = _wire.Result(call.id, spec.function(*positional, **keywords))
        except _Cancelled:
            reply = self._cancelled(call, started)
        except _Unsendable as exc:
            reply = self._unsendable(call, started, exc)
        except BaseException as exc:
            # SystemExit and KeyboardInterrupt too: raised by a tool, they end its call,
            # not the worker (no signal is delivered to this thread; see docs/supervision.md).
            reply = self._failed(call, started, exc)
        else:
            self._call_stopped(call, started)
        finally:
            correlation_id_var.reset(token)
            trace_context_var.reset(trace)
            session_id_var.reset(session)
        return reply

    def _await_async(self, call: _wire.Call, spec: ToolSpec, running: _Running) -> None:
        """Run a started call of an async tool on the loop thread, then, in the same slot,
        the calls of async tools queued behind it; wait until the last one ended."""
        import asyncio

        loop = self._event_loop()
        asyncio.run_coroutine_threadsafe(self._run_async(call, spec, running, loop), loop).result()

    async def _run_async(
        self,
        call: _wire.Call,
        spec: ToolSpec,
        running: _Running | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        import asyncio

        task = asyncio.current_task()
        while True:
            if running is not None:
                running.loop = loop
                running.task = task
                # A Cancel that came before the task was set only marked the call; one
                # that comes from here on cancels the task, between the tool's steps.
                if running.cancelled:
                    self._finish(_waited(self._cancelled(call, running.started), running))
                else:
                    await self._run_async_call(call, spec, running)
                running.task = None
            # Straight on to the next call if it is async too, as a thread does with sync
            # calls: a run of async calls costs no thread switch.
            with self._state_lock:
                if not self._queue or not self._tools[self._queue[0].command].is_async:
                    return
                call = self._start_next()
            spec = self._tools[call.command]
            running = self._running.get(call.id)

    async def _run_async_call(self, call: _wire.Call, spec: ToolSpec, running: _Running) -> None:
        import asyncio

        correlation_id_var.set(call.correlation_id)
        trace_context_var.set(call.trace_context)
        session_id_var.set(call.session_id)
        started = self._call_started(call)
        try:
            positional, keywords = self._arguments(call.args)
            if call.batch:
                batch = await _batch.run_async(call, spec.function, running, _describe)
                reply: _wire._Message = batch or self._cancelled(call, started)
            elif spec.is_stream:
                reply = await self._stream_async(
                    call, spec.function(*positional, **keywords), running
                )
            else:
                reply = _wire.Result(call.id, await spec.function(*positional, **keywords))
        except asyncio.CancelledError:
            reply = self._cancelled(call, started)
        except _Unsendable as exc:
            reply = self._unsendable(call, started, exc)
        except BaseException as exc:
            # Caught here, SystemExit and KeyboardInterrupt never reach asyncio, which
            # would let them out of the loop.
            reply = self._failed(call, started, exc)
        else:
            self._call_stopped(call, started)
        self._finish(_waited(reply, running))

    # -- streams -------------------------------------------------------------

    def _stream(self, call: _wire.Call, chunks: Iterable[Any], running: _Running) -> _wire._Message:
        """Send a sync generator's chunks, advancing it only while its window has room;
        the stream's last message. However it ends, the generator is closed before that
        message leaves, so a cancelled tool's ``finally`` has run when the parent hears."""
        iterator = iter(chunks)
        window = _Window(call.window, running)
        try:
            while window.wait():
                try:
                    value = next(iterator)
                except StopIteration:
                    return _wire.End(call.id)
                self._send_chunk(call.id, window, value)
            raise _Cancelled
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    async def _stream_async(
        self, call: _wire.Call, chunks: AsyncIterator[Any], running: _Running
    ) -> _wire._Message:
        """:meth:`_stream` for an async generator: it awaits credit, and a cancellation
        ends the wait."""
        import asyncio

        window = _Window(call.window, running, asyncio.get_running_loop())
        try:
            while True:
                await window.wait_async()
                try:
                    value = await anext(chunks)
                except StopAsyncIteration:
                    return _wire.End(call.id)
                self._send_chunk(call.id, window, value)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _send_chunk(self, call_id: int, window: _Window, value: Any) -> None:
        """Send one chunk; :class:`_Unsendable` when it cannot travel, which ends the
        stream with that error (no chunk may follow the call's last message)."""
        frame = self._encode_chunk(call_id, window.sent + 1, value)
        window.sent_one()
        self.send(frame, ship=True)

    # -- python.call.* events ------------------------------------------------

    def _call_metadata(self, call: _wire.Call) -> dict[str, Any]:
        return {
            "command": call.command,
            "request_id": call.id,
            "correlation_id": call.correlation_id,
        }

    def _call_started(self, call: _wire.Call) -> int:
        if self.telemetry.wants("call.start"):
            self.telemetry.ship(
                "call.start", {"system_time": time.time_ns()}, self._call_metadata(call)
            )
        return time.monotonic_ns()

    def _call_stopped(self, call: _wire.Call, started: int) -> None:
        if self.telemetry.wants("call.stop"):
            duration = time.monotonic_ns() - started
            self.telemetry.ship("call.stop", {"duration": duration}, self._call_metadata(call))

    def _cancelled(self, call: _wire.Call, started: int) -> _wire.Error:
        if self.telemetry.wants("call.exception"):
            self._call_exception(call, started, "Cancelled", "the call was cancelled")
        return _wire.Error(call.id, "cancelled", "Cancelled", "the call was cancelled")

    def _failed(self, call: _wire.Call, started: int, exc: BaseException) -> _wire.Error:
        error_type, message, formatted = _describe(exc)
        if self.telemetry.wants("call.exception"):
            self._call_exception(call, started, error_type, message)
        return _wire.Error(call.id, "tool", error_type, message, formatted)

    def _unsendable(self, call: _wire.Call, started: int, exc: _Unsendable) -> _wire.Error:
        """A stream stopped at a chunk that cannot travel: the tool did not complete."""
        reply = exc.reply
        if self.telemetry.wants("call.exception"):
            self._call_exception(call, started, reply.type, reply.message)
        return reply

    def _call_exception(
        self, call: _wire.Call, started: int, error_type: str, message: str
    ) -> None:
        metadata = self._call_metadata(call)
        metadata["error_type"] = error_type
        metadata["error_message"] = message[:MAX_STRING_LENGTH]
        self.telemetry.ship("call.exception", {"duration": time.monotonic_ns() - started}, metadata)

    def _flusher(self) -> None:
        """Ship output and telemetry every _FLUSH_INTERVAL, or as soon as a batch is waiting;
        release results held back longer than _HOLD_AT_MOST."""
        wake = self._holding
        while not self._stopping.is_set():
            if wake.wait(_FLUSH_INTERVAL):
                wake.clear()
                # A result may be held for the next call: it leaves after
                # _HOLD_AT_MOST at the latest, even if that call runs long.
                while held := self._held_since:
                    remaining = _HOLD_AT_MOST - (time.monotonic_ns() - held)
                    if remaining <= 0:
                        self._held_since = 0
                        self.send()
                        break
                    time.sleep(remaining / 1e9)
            self.send(ship=True)

    def _sample(self) -> None:
        """Emit python.memory.sampled and python.cpu.sampled every sample interval."""
        import psutil

        process = psutil.Process()
        process.cpu_percent(None)
        while not self._stopping.is_set():
            interval = self._sample_interval
            woken = self._sampler_wake.wait(interval if interval > 0 else None)
            self._sampler_wake.clear()
            if woken or self._stopping.is_set():
                continue  # the interval changed, or the worker stops
            memory = process.memory_info()
            self.telemetry.ship(
                "memory.sampled", {"rss_bytes": memory.rss, "vms_bytes": memory.vms}, {}
            )
            self.telemetry.ship("cpu.sampled", {"cpu_percent": process.cpu_percent(None)}, {})


def _waited(reply: _wire._Message, running: _Running) -> _wire._Message:
    """The call's final answer, with the time it waited in this worker before it started
    and the time it ran."""
    if running.started and isinstance(
        reply, _wire.Result | _wire.Results | _wire.Error | _wire.End
    ):
        reply.waited = running.started - running.received
        reply.took = time.monotonic_ns() - running.started
    return reply


def _unsent(
    call_id: int, exc: FrameTooLargeError | SerializationError, what: str = ""
) -> _wire.Error:
    """The error that answers a call whose result or chunk cannot travel."""
    if isinstance(exc, FrameTooLargeError):
        return _wire.Error(call_id, "frame_too_large", "FrameTooLargeError", what + str(exc))
    return _wire.Error(call_id, "serialization", "SerializationError", what + str(exc))


def _describe(exc: BaseException) -> tuple[str, str, str]:
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


def _read_token(fd: int) -> str:
    """The token, from the pipe the pool passed (it holds nothing else)."""
    try:
        chunks = []
        while chunk := os.read(fd, 256):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def main() -> int:
    """Entry point of ``python -m pypit.worker``; configured through the environment."""
    env = os.environ
    try:
        path = env[ENV_PREFIX + "SOCKET"]
        token = _read_token(int(env.pop(ENV_PREFIX + "TOKEN_FD")))
        adapter_spec = env[ENV_PREFIX + "ADAPTER"]
        parent_pid = int(env[ENV_PREFIX + "PARENT_PID"])
        max_concurrency = int(env.get(ENV_PREFIX + "MAX_CONCURRENCY", "1"))
        max_frame_size = int(env.get(ENV_PREFIX + "MAX_FRAME_SIZE", _wire.DEFAULT_MAX_FRAME_SIZE))
        extra_path = json.loads(env.get(ENV_PREFIX + "SYS_PATH", "[]"))
        reconnect_window = float(env.get(ENV_PREFIX + "RECONNECT_WINDOW", "0"))
        buffer_size = int(env.get(ENV_PREFIX + "BUFFER_SIZE", _telemetry.DEFAULT_BUFFER_SIZE))
        max_vm_bytes = int(env.get(ENV_PREFIX + "MAX_VM_BYTES") or 0)
        settings = (
            _wire.decode_to_worker(bytes.fromhex(env.get(ENV_PREFIX + "CONFIGURE", "")))
            if env.get(ENV_PREFIX + "CONFIGURE")
            else None
        )
    except (KeyError, ValueError, OSError) as exc:
        print(f"pypit worker: missing or bad setting: {exc}", file=sys.stderr)
        return 2
    _guard.protect(parent_pid)
    if max_vm_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (max_vm_bytes, max_vm_bytes))
    sys.path[:0] = [p for p in extra_path if p not in sys.path]

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    # The greeting goes first, before anything that takes time (logging set-up, the
    # adapter's import): the pool gives a connection about a second to greet.
    sock.sendall(_wire.encode(_wire.Hello(token, os.getpid())))
    global current
    runtime = current = Runtime(
        sock,
        max_concurrency=max_concurrency,
        max_frame_size=max_frame_size,
        path=path,
        token=token,
        parent_pid=parent_pid,
        reconnect_window=reconnect_window,
        buffer_size=buffer_size,
    )
    _telemetry.current = runtime.telemetry
    if isinstance(settings, _wire.Configure):
        # The pool's settings apply from the start: setup() may emit and log.
        runtime._on_configure(settings)
    # Until the worker serves, nothing ships on a timer: what import and setup() log leaves
    # at once. What they print goes to the pipes, which the pool reads even if the start
    # fails and the worker exits.
    _logging.install(runtime.output)
    runtime.output.at_once = lambda: runtime.send(ship=True)
    try:
        tools = runtime.load(adapter_spec)
    except BaseException as exc:
        reason = "setup_failed" if runtime._adapter is not None else "import_failed"
        runtime.send(
            _wire.encode(
                _wire.Failed(reason, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            )
        )
        traceback.print_exc()
        _guard.leave(with_group=os.getppid() != parent_pid)
        return 1
    _logging.capture_stdio(runtime.output)
    runtime.output.at_once = None
    runtime.send(_wire.encode(_wire.Ready(tools)), ship=True)
    runtime.serving = True
    _guard.start_reaping()
    try:
        runtime.serve()
    finally:
        _guard.stop_reaping()
        runtime.stop()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        # What the tools started goes with this worker, as the pool would kill its group
        # once it exited; and if the channel closed because the parent is gone, nobody is
        # left to kill the group: it goes too.
        _guard.leave(with_group=os.getppid() != parent_pid)
    return 0

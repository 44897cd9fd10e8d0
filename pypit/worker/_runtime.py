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

What leaves the worker goes through its :class:`~pypit.worker._outbox.Outbox`;
a call's state while it runs is in :mod:`pypit.worker._calls`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pypit import _wire
from pypit._errors import ProtocolError
from pypit._shared import correlation_id_var
from pypit._signature import arguments, bound_name, describe
from pypit.worker import _batch, _logging, _sampler, _telemetry
from pypit.worker._adapter import ToolSpec, discover_tools, load_adapter, session_id_var
from pypit.worker._calls import (
    CallEvents,
    Cancelled,
    Running,
    describe_exception,
    stream,
    stream_async,
    waited,
)
from pypit.worker._outbox import Outbox, Unsendable
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

current: Runtime | None = None
"""The runtime of this worker process, once it started."""


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
        self._running: dict[int, Running] = {}
        # Calls, sync and async, wait here for one of max_concurrency slots; the
        # pool may send more than that at once (its prefetch).
        self._queue: deque[_wire.Call] = deque()
        self._read_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._busy_slots = 0
        self._finished = threading.Event()
        self._handlers: dict[type[Any], Callable[[Any], bool]] = {}
        self._reader = _wire.FrameReader(max_frame_size)
        # What the leader reads goes here, and on into the frame reader at once: a read
        # allocates nothing (a fresh 256 KiB bytes per read costs about 20 us).
        self._read_buffer = memoryview(bytearray(262_144))
        self.error: BaseException | None = None
        # Typical duration of each tool (moving average, ns): an executor
        # holds a result back for the next call only if that call is quick.
        self._typical: dict[str, float] = {}
        self._tools: dict[str, ToolSpec] = {}
        self._adapter: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        holding = threading.Event()
        self.telemetry = WorkerTelemetry(EventBuffer(buffer_size, filling=holding))
        self.events = self.telemetry.buffer
        self.output = _logging.OutputBuffer(filling=holding)
        self._events = CallEvents(self.telemetry)
        self.outbox = Outbox(
            sock,
            max_frame_size=max_frame_size,
            running=self._running,
            output=self.output,
            events=self.events,
            holding=holding,
        )
        self._sample_interval = 0.0
        self._sampler_wake = threading.Event()
        self._sampler: threading.Thread | None = None
        self._stopping = threading.Event()
        self.pid = os.getpid()

    # -- start-up ------------------------------------------------------------

    def load(self, adapter_spec: str) -> _wire.Ready:
        """Import and set up the adapter; its tools, with their signatures, and how long the
        import and the set-up (instantiation and ``setup()``) took."""
        started = time.monotonic_ns()
        adapter_class = load_adapter(adapter_spec)
        imported = time.monotonic_ns()
        self._adapter = adapter_class()
        self._tools = discover_tools(self._adapter)
        if any(t.is_async for t in self._tools.values()):
            # The async tools' loop starts with the worker: its start (asyncio's import
            # included) counts in the worker's start-up, not in its first async call's time.
            self._event_loop()
        setup = getattr(self._adapter, "setup", None)
        if setup is not None:
            self._call_blocking(setup)
        set_up = time.monotonic_ns()
        tools = [
            _wire.Tool(
                t.name,
                t.description,
                t.is_stream,
                describe(t.function),
                t.is_async,
                bound_name(t.function),
            )
            for t in self._tools.values()
        ]
        return _wire.Ready(tools, import_time=imported - started, setup_time=set_up - imported)

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
            target=self._or_stop,
            args=(lambda: self.outbox.flush(self._stopping),),
            name="pypit-telemetry",
            daemon=True,
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
                received = self._sock.recv_into(self._read_buffer)
                if not received:
                    if not self._reconnect():
                        self._finished.set()
                        return None
                    continue
                for payload in self._reader.feed(self._read_buffer[:received]):
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
                hello = _wire.Hello(self._token, self.pid, running=self.outbox.unanswered())
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
            self.outbox.reconnected(sock)
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
            reply = waited(self._events.cancelled(call, started), running)
        else:
            reply = waited(self._run_sync(call, spec, running), running)
            elapsed = time.monotonic_ns() - started
            typical = self._typical.get(call.command)
            self._typical[call.command] = (
                elapsed if typical is None else 0.8 * typical + 0.2 * elapsed
            )
        if reply is not None:
            with self._state_lock:
                following = self._queue[0].command if self._queue else None
            typical = None if following is None else self._typical.get(following)
            self.outbox.finish(reply, hold=self.outbox.may_hold(typical))

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
        self.outbox.send(ship=True)

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
                    target=_sampler.sample,
                    args=(
                        self.telemetry,
                        lambda: self._sample_interval,
                        self._sampler_wake,
                        self._stopping,
                    ),
                    name="pypit-sampler",
                    daemon=True,
                )
                self._sampler.start()
        if message.seq:
            self.outbox.send_message(_wire.Ack(message.seq))
        return True

    def _on_ping(self, message: _wire.Ping) -> bool:
        self.outbox.send_message(_wire.Pong(message.seq))
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

    def _drop(self, call_id: int, running: Running) -> None:
        """Answer a call cancelled before it started: it never runs."""
        self.outbox.send(
            *self.outbox.encode_reply(
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
            self.outbox.send_message(
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
            self.outbox.send_message(
                _wire.Error(call.id, "usage", "TypeError", f"{call.command!r} is called with {how}")
            )
            return True
        self._running[call.id] = Running()
        with self._state_lock:
            self._queue.append(call)
        return True

    # -- running tools -------------------------------------------------------

    def _run_sync(self, call: _wire.Call, spec: ToolSpec, running: Running) -> _wire._Message:
        token = correlation_id_var.set(call.correlation_id)
        trace = trace_context_var.set(call.trace_context)
        session = session_id_var.set(call.session_id)
        started = self._events.started(call)
        try:
            if call.batch:
                batch = _batch.run(call, spec.function, running, describe_exception)
                reply: _wire._Message = batch or self._events.cancelled(call, started)
            elif spec.is_stream:
                positional, keywords = arguments(call.args)
                reply = stream(self.outbox, call, spec.function(*positional, **keywords), running)
            else:
                positional, keywords = arguments(call.args)
                reply = _wire.Result(call.id, spec.function(*positional, **keywords))
        except Cancelled:
            reply = self._events.cancelled(call, started)
        except Unsendable as exc:
            reply = self._events.unsendable(call, started, exc.reply)
        except BaseException as exc:
            # SystemExit and KeyboardInterrupt too: raised by a tool, they end its call,
            # not the worker (no signal is delivered to this thread; see docs/supervision.md).
            reply = self._events.failed(call, started, exc)
        else:
            self._events.stopped(call, started)
        finally:
            correlation_id_var.reset(token)
            trace_context_var.reset(trace)
            session_id_var.reset(session)
        return reply

    def _await_async(self, call: _wire.Call, spec: ToolSpec, running: Running) -> None:
        """Run a started call of an async tool on the loop thread, then, in the same slot,
        the calls of async tools queued behind it; wait until the last one ended."""
        import asyncio

        loop = self._event_loop()
        asyncio.run_coroutine_threadsafe(self._run_async(call, spec, running, loop), loop).result()

    async def _run_async(
        self,
        call: _wire.Call,
        spec: ToolSpec,
        running: Running | None,
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
                    self.outbox.finish(
                        waited(self._events.cancelled(call, running.started), running)
                    )
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

    async def _run_async_call(self, call: _wire.Call, spec: ToolSpec, running: Running) -> None:
        import asyncio

        correlation_id_var.set(call.correlation_id)
        trace_context_var.set(call.trace_context)
        session_id_var.set(call.session_id)
        started = self._events.started(call)
        try:
            if call.batch:
                batch = await _batch.run_async(call, spec.function, running, describe_exception)
                reply: _wire._Message = batch or self._events.cancelled(call, started)
            elif spec.is_stream:
                positional, keywords = arguments(call.args)
                reply = await stream_async(
                    self.outbox, call, spec.function(*positional, **keywords), running
                )
            else:
                positional, keywords = arguments(call.args)
                reply = _wire.Result(call.id, await spec.function(*positional, **keywords))
        except asyncio.CancelledError:
            reply = self._events.cancelled(call, started)
        except Unsendable as exc:
            reply = self._events.unsendable(call, started, exc.reply)
        except BaseException as exc:
            # Caught here, SystemExit and KeyboardInterrupt never reach asyncio, which
            # would let them out of the loop.
            reply = self._events.failed(call, started, exc)
        else:
            self._events.stopped(call, started)
        self.outbox.finish(waited(reply, running))

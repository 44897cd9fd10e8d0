"""The worker process: connect, hand-shake, serve calls until told to stop.

Threads, and why. Sync tools run on a leader/followers pool: one thread (the
leader) reads the channel; when it receives a call it hands the reading to an
idle follower and runs the call itself. A call thus starts on the thread that
received it, with no hand-off on its path, and some thread is always reading,
so pings and cancellations are answered while tools block. The pool grows by
one thread whenever the last idle one takes a call. Async tools run on one
asyncio loop thread, started on first use; a flusher thread ships telemetry
emitted between calls.

Writes from any thread go through :meth:`Runtime.send`, which coalesces: the
thread that finds the channel idle writes everything queued so far in one
system call, and the others just queue.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pypit import _wire
from pypit._errors import FrameTooLargeError, SerializationError
from pypit.worker._adapter import ToolSpec, discover_tools, load_adapter
from pypit.worker._telemetry import EventBuffer, correlation_id_var

if TYPE_CHECKING:
    # asyncio costs a quarter of a worker's start-up; it is imported only for
    # adapters with async tools or an async setup().
    import asyncio

_PR_SET_PDEATHSIG: Final = 1
_FLUSH_INTERVAL: Final = 0.05

ENV_PREFIX: Final = "PYPIT_WORKER_"

current: Runtime | None = None
"""The runtime of this worker process, once it started."""


class _Cancelled(Exception):
    """Raised inside a sync stream between chunks when the parent cancelled it."""


class _Running:
    """A call in progress, so that a Cancel can reach it."""

    __slots__ = ("cancelled", "loop", "task")

    def __init__(self) -> None:
        self.cancelled = False
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the parent dies; exit if it already did."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


class Runtime:
    """One worker's connection, tools and threads."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_concurrency: int,
        max_frame_size: int,
    ) -> None:
        self._sock = sock
        self._max_concurrency = max_concurrency
        self._max_frame_size = max_frame_size
        self._send_lock = threading.Lock()
        self._outbox: list[bytes] = []
        self._flushing = False
        self._broken = False
        self._running: dict[int, _Running] = {}
        self._read_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._frames: deque[bytes] = deque()
        self._reader = _wire.FrameReader(max_frame_size)
        self._idle_threads = 0
        self._threads = 0
        # The pool may send more calls than run at once (its prefetch): they
        # wait here, and at most max_concurrency of each kind run.
        self._sync_slots = threading.Semaphore(max_concurrency)
        self._async_slots: asyncio.Semaphore | None = None
        self._finished = threading.Event()
        self.error: BaseException | None = None
        self._tools: dict[str, ToolSpec] = {}
        self._adapter: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self._call_events: frozenset[str] = frozenset()
        self.events = EventBuffer()
        self._stopping = threading.Event()
        self.pid = os.getpid()

    # -- writing -------------------------------------------------------------

    def send(self, *frames: bytes) -> None:
        """Queue frames and write them, coalesced with whatever other threads queued."""
        with self._send_lock:
            self._outbox.extend(frames)
            if self._flushing:
                return
            self._flushing = True
        while True:
            with self._send_lock:
                if not self._outbox:
                    self._flushing = False
                    return
                data = b"".join(self._outbox)
                self._outbox.clear()
            if self._broken:
                continue
            try:
                self._sock.sendall(data)
            except OSError:
                self._broken = True

    def _send_message(self, message: _wire._Message) -> None:
        self.send(_wire.encode(message, self._max_frame_size))

    def _finish(self, message: _wire._Message) -> None:
        """Send a call's last message, preceded by the telemetry it produced."""
        frame = self._encode_reply(message)
        batch = self.events.drain()
        if batch is None:
            self.send(frame)
        else:
            self.send(_wire.encode(batch, self._max_frame_size), frame)

    def _encode_reply(self, message: _wire._Message) -> bytes:
        call_id = getattr(message, "id", 0)
        try:
            return _wire.encode(message, self._max_frame_size)
        except FrameTooLargeError as exc:
            return _wire.encode(
                _wire.Error(call_id, "frame_too_large", "FrameTooLargeError", str(exc))
            )
        except SerializationError as exc:
            return _wire.encode(
                _wire.Error(call_id, "serialization", "SerializationError", str(exc))
            )

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
                    target=loop.run_forever, name="pypit-async-tools", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop

    # -- serving -------------------------------------------------------------

    def serve(self) -> None:
        """Handle messages until Shutdown or the channel closes."""
        self._handlers: dict[type[Any], Callable[[Any], bool]] = {
            _wire.Call: self._on_call,
            _wire.Cancel: self._on_cancel,
            _wire.Ping: self._on_ping,
            _wire.Shutdown: lambda _message: False,
            _wire.Configure: self._on_configure,
        }
        threading.Thread(target=self._flusher, name="pypit-telemetry", daemon=True).start()
        for _ in range(self._max_concurrency + 1):
            self._add_thread()
        self._finished.wait()
        if self.error is not None:
            raise self.error

    def _add_thread(self) -> None:
        with self._state_lock:
            self._threads += 1
            self._idle_threads += 1
            name = f"pypit-tools-{self._threads}"
        threading.Thread(target=self._follow, name=name, daemon=True).start()

    def _follow(self) -> None:
        """Take turns reading the channel; run the sync calls read."""
        while not self._finished.is_set():
            with self._read_lock:
                if self._finished.is_set():
                    return
                try:
                    message = self._next_message()
                except BaseException as exc:
                    self.error = exc
                    message = None
                if message is None:
                    self._finished.set()
                    return
            try:
                if not self._handlers[type(message)](message):
                    self._finished.set()
            except BaseException as exc:
                self.error = exc
                self._finished.set()

    def _next_message(self) -> _wire.ToWorker | None:
        while not self._frames:
            try:
                data = self._sock.recv(262_144)
            except OSError:
                return None
            if not data:
                return None
            self._frames.extend(self._reader.feed(data))
        return _wire.decode_to_worker(self._frames.popleft())

    def stop(self) -> None:
        """Stop the threads, run ``teardown()``, flush telemetry."""
        self._stopping.set()
        self._finished.set()
        teardown = getattr(self._adapter, "teardown", None)
        if teardown is not None:
            try:
                self._call_blocking(teardown)
            except Exception:
                traceback.print_exc()
        batch = self.events.drain()
        if batch is not None:
            self._send_message(batch)

    def _on_configure(self, message: _wire.Configure) -> bool:
        self._call_events = frozenset(message.call_events)
        return True

    def _on_ping(self, message: _wire.Ping) -> bool:
        self._send_message(_wire.Pong(message.seq))
        return True

    def _on_cancel(self, message: _wire.Cancel) -> bool:
        running = self._running.get(message.id)
        if running is not None:
            running.cancel()
        return True

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
        running = _Running()
        self._running[call.id] = running
        if spec.is_async:
            import asyncio

            running.loop = self._event_loop()
            asyncio.run_coroutine_threadsafe(self._run_async(call, spec, running), running.loop)
            return True
        with self._state_lock:
            self._idle_threads -= 1
            last = self._idle_threads == 0
        if last:
            self._add_thread()
        try:
            with self._sync_slots:
                if not running.cancelled:
                    self._run_sync(call, spec, running)
                else:
                    self._running.pop(call.id, None)
                    self._finish(self._cancelled(call, time.monotonic_ns()))
        finally:
            with self._state_lock:
                self._idle_threads += 1
        return True

    # -- running tools -------------------------------------------------------

    def _arguments(self, args: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args is None:
            return (), {}
        if isinstance(args, dict):
            return (), args
        return (args,), {}

    def _run_sync(self, call: _wire.Call, spec: ToolSpec, running: _Running) -> None:
        token = correlation_id_var.set(call.correlation_id)
        started = self._call_started(call)
        try:
            positional, keywords = self._arguments(call.args)
            if spec.is_stream:
                seq = 0
                for seq, value in enumerate(spec.function(*positional, **keywords), 1):
                    if running.cancelled:
                        raise _Cancelled
                    self.send(self._encode_reply(_wire.Chunk(call.id, seq, value)))
                reply: _wire._Message = _wire.End(call.id)
            else:
                reply = _wire.Result(call.id, spec.function(*positional, **keywords))
        except _Cancelled:
            reply = self._cancelled(call, started)
        except Exception as exc:
            reply = self._failed(call, started, exc)
        else:
            self._call_stopped(call, started)
        finally:
            correlation_id_var.reset(token)
            self._running.pop(call.id, None)
        self._finish(reply)

    async def _run_async(self, call: _wire.Call, spec: ToolSpec, running: _Running) -> None:
        import asyncio

        if self._async_slots is None:
            self._async_slots = asyncio.Semaphore(self._max_concurrency)
        running.task = asyncio.current_task()
        if running.cancelled:
            running.task.cancel()  # type: ignore[union-attr]
        try:
            async with self._async_slots:
                await self._run_async_call(call, spec, running)
        except asyncio.CancelledError:
            self._running.pop(call.id, None)
            self._finish(self._cancelled(call, time.monotonic_ns()))

    async def _run_async_call(self, call: _wire.Call, spec: ToolSpec, running: _Running) -> None:
        import asyncio

        correlation_id_var.set(call.correlation_id)
        started = self._call_started(call)
        try:
            positional, keywords = self._arguments(call.args)
            if spec.is_stream:
                seq = 0
                async for value in spec.function(*positional, **keywords):
                    seq += 1
                    self.send(self._encode_reply(_wire.Chunk(call.id, seq, value)))
                reply: _wire._Message = _wire.End(call.id)
            else:
                reply = _wire.Result(call.id, await spec.function(*positional, **keywords))
        except asyncio.CancelledError:
            reply = self._cancelled(call, started)
        except Exception as exc:
            reply = self._failed(call, started, exc)
        else:
            self._call_stopped(call, started)
        finally:
            self._running.pop(call.id, None)
        self._finish(reply)

    # -- python.call.* events ------------------------------------------------

    def _call_metadata(self, call: _wire.Call) -> dict[str, Any]:
        return {
            "command": call.command,
            "request_id": call.id,
            "correlation_id": call.correlation_id,
        }

    def _call_started(self, call: _wire.Call) -> int:
        if "call.start" in self._call_events:
            self.events.add(
                "call.start", {"system_time": time.time_ns()}, self._call_metadata(call)
            )
        return time.monotonic_ns()

    def _call_stopped(self, call: _wire.Call, started: int) -> None:
        if "call.stop" in self._call_events:
            duration = time.monotonic_ns() - started
            self.events.add("call.stop", {"duration": duration}, self._call_metadata(call))

    def _cancelled(self, call: _wire.Call, started: int) -> _wire.Error:
        if "call.exception" in self._call_events:
            self._call_exception(call, started, "Cancelled", "the call was cancelled")
        return _wire.Error(call.id, "cancelled", "Cancelled", "the call was cancelled")

    def _failed(self, call: _wire.Call, started: int, exc: Exception) -> _wire.Error:
        error_type = _qualified_name(type(exc))
        message = str(exc)
        if "call.exception" in self._call_events:
            self._call_exception(call, started, error_type, message)
        return _wire.Error(
            call.id, "tool", error_type, message, "".join(traceback.format_exception(exc))
        )

    def _call_exception(
        self, call: _wire.Call, started: int, error_type: str, message: str
    ) -> None:
        metadata = self._call_metadata(call)
        metadata["error_type"] = error_type
        metadata["error_message"] = message
        self.events.add("call.exception", {"duration": time.monotonic_ns() - started}, metadata)

    def _flusher(self) -> None:
        while not self._stopping.wait(_FLUSH_INTERVAL):
            if len(self.events):
                batch = self.events.drain()
                if batch is not None:
                    self._send_message(batch)


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def main() -> int:
    """Entry point of ``python -m pypit.worker``; configured through the environment."""
    env = os.environ
    try:
        path = env[ENV_PREFIX + "SOCKET"]
        token = env.pop(ENV_PREFIX + "TOKEN")
        adapter_spec = env[ENV_PREFIX + "ADAPTER"]
        parent_pid = int(env[ENV_PREFIX + "PARENT_PID"])
        max_concurrency = int(env.get(ENV_PREFIX + "MAX_CONCURRENCY", "1"))
        max_frame_size = int(env.get(ENV_PREFIX + "MAX_FRAME_SIZE", _wire.DEFAULT_MAX_FRAME_SIZE))
        extra_path = json.loads(env.get(ENV_PREFIX + "SYS_PATH", "[]"))
    except (KeyError, ValueError) as exc:
        print(f"pypit worker: missing or bad setting: {exc}", file=sys.stderr)
        return 2
    _die_with_parent(parent_pid)
    sys.path[:0] = [p for p in extra_path if p not in sys.path]

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    global current
    runtime = current = Runtime(
        sock, max_concurrency=max_concurrency, max_frame_size=max_frame_size
    )
    runtime.send(_wire.encode(_wire.Hello(token, runtime.pid)))
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
        return 1
    runtime.send(_wire.encode(_wire.Ready(tools)))
    try:
        runtime.serve()
    finally:
        runtime.stop()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    return 0

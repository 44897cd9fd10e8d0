"""Adapters the tests run in real worker processes."""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio

from pypit.worker import Adapter, tool


class Echo(Adapter):
    """Small, fast tools covering every kind of method."""

    def setup(self) -> None:
        self.calls = 0
        self.sessions: dict[str | None, Any] = {}
        # Calls of the occupancy tools: started so far, and in progress now (threads and
        # the loop thread alike).
        self.occupancy = threading.Lock()
        self.entered = 0
        self.inside = 0

    @tool(description="Return the arguments")
    def echo(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        return kwargs

    @tool(description="Return the one positional argument")
    def identity(self, value: Any = None) -> Any:
        return value

    @tool(description="The value received, with the type of each of its parts (see typed)")
    def typed(self, value: Any) -> list[Any]:
        from tests.values import typed

        return typed(value)

    @tool(description="Return the value WIRE_VALUES[kind] makes, built in the worker")
    def make(self, kind: str) -> Any:
        from tests.values import WIRE_VALUES

        return WIRE_VALUES[kind]()

    @tool(description="The call's session id, what this worker kept for it, and the pid")
    def session_state(self, keep: Any = None) -> list[Any]:
        from pypit.worker import get_session_id

        session_id = get_session_id()
        kept = self.sessions.get(session_id)
        if keep is not None:
            self.sessions[session_id] = keep
        return [session_id, kept, os.getpid()]

    @tool(description="The call's session id, from an async tool")
    async def async_session_id(self) -> str | None:
        from pypit.worker import get_session_id

        await anyio.sleep(0)
        return get_session_id()

    @tool(description="Yield the call's session id `n` times")
    def session_ids(self, n: int) -> Iterator[str | None]:
        from pypit.worker import get_session_id

        for _ in range(n):
            yield get_session_id()

    @tool(description="Sleep, then return the seconds slept")
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @tool(description="Block until the file `gate` exists (at most 30 s), then return `tag`")
    def hold(self, gate: str, tag: str = "") -> str:
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.002)
        return tag

    @tool(description="Without blocking the worker's loop, wait until `gate` exists (30 s at most)")
    async def async_hold(self, gate: str, tag: str = "") -> str:
        with anyio.move_on_after(30):
            while not os.path.exists(gate):
                await anyio.sleep(0.002)
        return tag

    @tool(description="Record the call in a file, then hold until `gate` exists")
    def record_hold(self, path: str, tag: str, gate: str) -> str:
        with open(path, "a") as f:
            f.write(tag + "\n")
        return self.hold(gate, tag)

    @tool(description="Sleep too, under another name")
    def pause(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @tool(description="Sleep without blocking the worker's loop")
    async def async_sleep(self, seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    def _enter(self) -> list[int]:
        with self.occupancy:
            self.entered += 1
            self.inside += 1
            return [self.entered, self.inside]

    def _leave(self) -> None:
        with self.occupancy:
            self.inside -= 1

    @tool(description="Stay `seconds`; return [n, m]: this call started n-th, with m in progress")
    def occupy(self, seconds: float) -> list[int]:
        seen = self._enter()
        try:
            time.sleep(seconds)
        finally:
            self._leave()
        return seen

    @tool(description="Like occupy, without blocking the worker's loop")
    async def async_occupy(self, seconds: float) -> list[int]:
        seen = self._enter()
        try:
            await anyio.sleep(seconds)
        finally:
            self._leave()
        return seen

    @tool(description="Record the call in a file, asynchronously")
    async def async_record(self, path: str, tag: str) -> str:
        with open(path, "a") as f:
            f.write(tag + "\n")
        return tag

    @tool(description="Add two numbers, asynchronously")
    async def add(self, a: float, b: float) -> float:
        return a + b

    @tool(description="Raise ValueError")
    def fail(self, message: str = "boom") -> None:
        raise ValueError(message)

    @tool(description="Count from 1 to n")
    def count(self, n: int, delay: float = 0.0) -> Iterator[int]:
        for i in range(1, n + 1):
            if delay:
                time.sleep(delay)
            yield i

    @tool(description="Count from 1 to n, asynchronously")
    async def async_count(self, n: int, delay: float = 0.0) -> AsyncIterator[int]:
        for i in range(1, n + 1):
            if delay:
                await anyio.sleep(delay)
            yield i

    @tool(
        description="Yield [i, `size` bytes] for i in 1..n, noting each i in the file `path` "
        "as it is produced, and 'closed' when the generator ends"
    )
    def blobs(self, n: int, path: str, size: int = 0, delay: float = 0.0) -> Iterator[list[Any]]:
        try:
            for i in range(1, n + 1):
                if delay:
                    time.sleep(delay)
                _note(path, str(i))
                yield [i, b"x" * size]
        finally:
            _note(path, "closed")

    @tool(description="blobs, asynchronously")
    async def async_blobs(
        self, n: int, path: str, size: int = 0, delay: float = 0.0
    ) -> AsyncIterator[list[Any]]:
        try:
            for i in range(1, n + 1):
                if delay:
                    await anyio.sleep(delay)
                _note(path, str(i))
                yield [i, b"x" * size]
        finally:
            _note(path, "closed")

    @tool(description="Yield 1, then something msgpack cannot carry, then 2")
    def unserializable_chunk(self) -> Iterator[Any]:
        yield 1
        yield {1, 2}.__iter__()
        yield 2

    @tool(description="Return something msgpack cannot carry")
    def unserializable(self) -> Any:
        return {1, 2}.__iter__()

    @tool(description="Return n bytes")
    def blob(self, n: int) -> bytes:
        return b"x" * n

    @tool(description="Allocate n bytes, and say how many")
    def allocate(self, n: int) -> int:
        return len(bytearray(n))

    @tool(description="Print to stdout and stderr")
    def chatter(self, text: str) -> None:
        print(text)
        print(f"err: {text}", file=sys.stderr)

    @tool(description="Write n lines of size bytes to file descriptor 1, as C code would")
    def write_fd(self, n: int, size: int) -> int:
        line = b"x" * (size - 1) + b"\n"
        for _ in range(n):
            os.write(1, line)
        return n * size

    @tool(description="The worker's pid")
    def pid(self) -> int:
        return os.getpid()

    @tool(description="Kill this worker with a signal")
    def die(self, signum: int = signal.SIGKILL) -> None:
        os.kill(os.getpid(), signum)

    @tool(description="Dereference a null pointer: a real segmentation fault")
    def segfault(self) -> None:
        import ctypes

        ctypes.string_at(0)

    @tool(description="Exit this worker with a code")
    def exit(self, code: int = 3) -> None:
        os._exit(code)

    @tool(description="Record the call in a file, then sleep")
    def record(self, path: str, tag: str, seconds: float = 0.0) -> str:
        with open(path, "a") as f:
            f.write(tag + "\n")
        time.sleep(seconds)
        return tag

    @tool(description="Number of threads alive")
    def threads(self) -> int:
        return threading.active_count()

    @tool(description="The value of environment variable `name`, or None")
    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    @tool(description="The names of the threads alive")
    def thread_names(self) -> list[str]:
        return sorted(thread.name for thread in threading.enumerate())

    @tool(description="Crash the worker the first time (marker file absent), then answer")
    def crash_once(self, path: str) -> str:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        with open(path) as f:
            runs = len(f.read().split())
        if runs == 1:
            os._exit(9)
        return "ok"

    @tool(description="Start a child process that sleeps; return its pid")
    def spawn_child(self) -> int:
        import subprocess

        child = subprocess.Popen(["sleep", "60"])
        return child.pid

    @tool(description="Start processes that sleep, some out of the worker's group; their pids")
    def spawn_escapers(self) -> dict[str, int]:
        """A child in the worker's group, a child that called setsid(), and a daemon: a
        grandchild in a session of its own whose parent (a shell) has already exited."""
        import subprocess

        child = subprocess.Popen(["sleep", "60"])
        session = subprocess.Popen(["sleep", "60"], start_new_session=True)
        shell = subprocess.run(
            ["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            check=True,
        )
        return {"child": child.pid, "session": session.pid, "daemon": int(shell.stdout)}

    @tool(description="Start `sleep seconds` from a shell that exits at once; the sleep's pid")
    def background(self, seconds: float) -> int:
        import subprocess

        shell = subprocess.run(
            ["sh", "-c", f"sleep {seconds} >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(shell.stdout)

    @tool(description="Start a child that exits with `code`, wait `seconds`, then wait for it")
    def exit_code_later(self, code: int, seconds: float) -> int | None:
        import subprocess

        child = subprocess.Popen(["sh", "-c", f"exit {code}"])
        time.sleep(seconds)
        return child.wait()

    @tool(description="Stop this worker process (SIGSTOP): it can no longer answer anything")
    def freeze(self) -> None:
        os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(60)  # in case this thread ran on before the stop took hold

    @tool(description="Make the worker's reading loop fail on the next message")
    def break_loop(self) -> None:
        from pypit.worker import _runtime

        assert _runtime.current is not None

        class Broken:
            def feed(self, data: bytes) -> list[bytes]:
                raise RuntimeError("the worker's loop broke")

        _runtime.current._reader = Broken()  # type: ignore[assignment]

    @tool(description="Make the thread that runs the next call fail after it")
    def break_turns(self) -> None:
        from pypit.worker import _runtime

        assert _runtime.current is not None

        def broken() -> None:
            raise RuntimeError("the worker's calling thread broke")

        _runtime.current.events.drain = broken  # type: ignore[assignment,method-assign]

    @tool(description="Break the worker's channel (its process lives on)")
    def drop_channel(self, after: float = 0.0, reconnect_after: float = 0.0) -> int:
        """Break it now, or ``after`` seconds once this call answered (no call in flight);
        the worker tries to reconnect ``reconnect_after`` seconds later."""
        import socket

        from pypit.worker import _runtime

        runtime = _runtime.current
        assert runtime is not None
        if reconnect_after:
            reconnect = runtime._reconnect

            def later() -> bool:
                time.sleep(reconnect_after)
                return reconnect()

            runtime._reconnect = later  # type: ignore[method-assign]

        def drop() -> None:
            time.sleep(after)
            runtime._sock.shutdown(socket.SHUT_RDWR)

        if after:
            threading.Thread(target=drop, daemon=True).start()
        else:
            drop()
        return os.getpid()


def _note(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


class SlowSetup(Adapter):
    def setup(self) -> None:
        time.sleep(30)

    @tool
    def never(self) -> None:
        return None


class KilledInSetup(Adapter):
    """setup() is killed by SIGKILL, as the OOM killer does to a model too large."""

    def setup(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class StartsOnce(Echo):
    """Starts once per marker file (``STARTS_ONCE_MARKER``); every later start fails."""

    def setup(self) -> None:
        marker = os.environ["STARTS_ONCE_MARKER"]
        if os.path.exists(marker):
            raise RuntimeError("started once already")
        with open(marker, "w"):
            pass
        super().setup()


class FailsWhile(Echo):
    """Fails to start while the file ``FAILS_WHILE_MARKER`` names exists."""

    def setup(self) -> None:
        if os.path.exists(os.environ["FAILS_WHILE_MARKER"]):
            raise RuntimeError("the marker file says this start fails")
        super().setup()


class FailingSetup(Adapter):
    def setup(self) -> None:
        print("looking for the model file", file=sys.stderr)
        raise RuntimeError("the model file is missing")

    @tool
    def never(self) -> None:
        return None


def _forged(**kwargs: Any) -> dict[str, Any]:
    return kwargs


# Parameters no function could have (a keyword-only one before a positional-only one), as a
# broken worker would report them: inspect.signature() returns a __signature__ as it is.
_forged.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("a", inspect.Parameter.KEYWORD_ONLY),
        inspect.Parameter("b", inspect.Parameter.POSITIONAL_ONLY),
    ],
    __validate_parameters__=False,
)


class Signatures(Adapter):
    """Tools of each shape of parameters, and one whose signature cannot be read."""

    @tool(description="Scale x")
    def predict(self, x: float, *, scale: float = 1.0) -> float:
        return x * scale

    @tool(description="A positional-only value, then the rest as they came")
    def gather(self, value: Any, /, *rest: Any, **options: Any) -> list[Any]:
        return [value, list(rest), options]

    @tool
    def undocumented(self, flag: bool = False) -> bool:
        """Return the flag (the description is this docstring)."""
        return flag

    largest = tool(description="The largest item (a builtin: its signature cannot be read)")(
        functools.partial(max)
    )


class Forged(Signatures):
    """Signatures, plus a tool whose reported parameters no function could have."""

    forged = staticmethod(tool(description="Return the keyword arguments")(_forged))


class Hostile(Echo):
    """Echo, plus a tool that writes raw bytes on the worker's channel."""

    @tool(description="Write raw bytes to the pool, bypassing the protocol")
    def garbage(self, data: bytes) -> None:
        from pypit.worker import _runtime

        assert _runtime.current is not None
        _runtime.current.outbox.send(data)

    @tool(description="Send the first `sent` bytes of a frame of `size` bytes, then die")
    def half_frame(self, size: int, sent: int) -> None:
        from pypit import _wire
        from pypit.worker import _runtime

        assert _runtime.current is not None
        _runtime.current.outbox.send(_wire.HEADER.pack(size) + bytes(sent))
        os.kill(os.getpid(), signal.SIGKILL)

    @tool(description="End this call as if it were a stream, then answer it")
    def end_itself(self) -> None:
        from pypit import _wire
        from pypit.worker import _runtime

        runtime = _runtime.current
        assert runtime is not None
        (call_id,) = runtime._running  # the only call in flight: this one
        runtime.outbox.send(_wire.encode(_wire.End(call_id)))

    @tool(description="A stream that ignores its window: n chunks at once, then the end")
    def flood(self, n: int) -> Iterator[int]:
        from pypit import _wire
        from pypit.worker import _runtime

        runtime = _runtime.current
        assert runtime is not None
        (call_id,) = runtime._running  # the only call in flight: this one
        runtime.outbox.send(*(_wire.encode(_wire.Chunk(call_id, i, i)) for i in range(1, n + 1)))
        yield 0


class Unprintable(Exception):
    """An exception that cannot describe itself."""

    def __str__(self) -> str:
        raise RuntimeError("no text for this exception")


class Unrepresentable:
    """A value msgpack cannot carry, whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for this value")


class Stop(BaseException):
    """A BaseException of the tool's own, like those some frameworks use for control flow."""


def nested(depth: int) -> list[Any]:
    """A list nested ``depth`` deep."""
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def produce(kind: str) -> Any:
    """What the Unruly tools return or raise: a value the wire cannot carry ("deep",
    "object", "unrepresentable"), 100 kB ("large"), an exception that cannot describe
    itself ("unprintable"), a BaseException ("exit", "interrupt", "stop"); any other kind
    is returned as it is."""
    if kind == "deep":
        return nested(1000)
    if kind == "object":
        return object()
    if kind == "large":
        return b"x" * 100_000
    if kind == "unrepresentable":
        return Unrepresentable()
    if kind == "unprintable":
        raise Unprintable
    if kind == "exit":
        sys.exit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "stop":
        raise Stop("stopped by the tool")
    return kind


def wait_for(gate: str | None) -> None:
    deadline = time.monotonic() + 30
    while gate is not None and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.002)


class Unruly(Echo):
    """Echo, plus tools whose results, chunks or exceptions give their worker trouble."""

    @tool(description="Once `gate` exists (if given), return or raise what `kind` says")
    def value(self, kind: str, gate: str | None = None) -> Any:
        wait_for(gate)
        return produce(kind)

    @tool(description="Return a list nested `depth` deep")
    def nest(self, depth: int) -> list[Any]:
        return nested(depth)

    @tool(description="Like value, asynchronously")
    async def async_value(self, kind: str, gate: str | None = None) -> Any:
        with anyio.move_on_after(30):
            while gate is not None and not os.path.exists(gate):
                await anyio.sleep(0.002)
        return produce(kind)

    @tool(description="Yield 'first', then what `kind` says, then 'last'; log the close to `path`")
    def chunks(self, kind: str, path: str) -> Iterator[Any]:
        try:
            yield "first"
            yield produce(kind)
            yield "last"
        finally:
            with open(path, "a") as f:
                f.write("closed\n")

    @tool(description="Like chunks, asynchronously")
    async def async_chunks(self, kind: str, path: str) -> AsyncIterator[Any]:
        try:
            yield "first"
            yield produce(kind)
            yield "last"
        finally:
            with open(path, "a") as f:
                f.write("closed\n")

    @tool(description="Raise SystemExit in a task and in a callback, stop the loop; answer")
    async def async_exit_elsewhere(self) -> str:
        import asyncio

        async def exit_now() -> None:
            sys.exit(4)

        loop = asyncio.get_running_loop()
        task = loop.create_task(exit_now())
        await anyio.sleep(0.05)
        loop.call_soon(sys.exit, 5)
        await anyio.sleep(0.05)
        loop.stop()
        await anyio.sleep(0.05)
        return "served" if task.done() else "the task did not run"

    @tool(description="Run pure Python for `seconds`, deaf to cancellation; pings are answered")
    def spin(self, seconds: float) -> float:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass
        return seconds


class Instrumented(Adapter):
    """Tools that use the worker telemetry API the way the seed's examples do."""

    @tool(description="The seed's emit example")
    def seed_emit(self) -> None:
        from pypit.worker import telemetry

        telemetry.emit(
            "tool.execution.stop",
            {"duration": 1234, "bytes": 5000},
            {"tool": "predict", "status": "success"},
            correlation_id="abc-123",
        )

    @tool(description="The seed's span examples, nested")
    def inference(self, fail: bool = False) -> str:
        from pypit.worker import telemetry

        with telemetry.span("complex_operation"):
            with telemetry.span("preprocessing"):
                pass
            with telemetry.span("inference", {"model": "gpt-4"}):
                if fail:
                    raise ValueError("model exploded")
        return "done"

    @tool(description="Emit n events of one name, from this thread or from one it starts")
    def emit_many(self, name: str, n: int, in_thread: bool = False) -> int:
        import contextvars

        from pypit.worker import telemetry

        def emit_all() -> None:
            for i in range(n):
                telemetry.emit(name, {"i": i})

        if in_thread:
            thread = threading.Thread(target=contextvars.copy_context().run, args=(emit_all,))
            thread.start()
            thread.join()
        else:
            emit_all()
        return n

    @tool(description="Emit events the pool must refuse")
    def emit_bad(self) -> None:
        from pypit.worker import telemetry

        telemetry.emit("not.in.the.catalog", {"v": 1})
        telemetry.emit("not.in.the.catalog", {"v": 2})
        telemetry.emit("tool.execution.start", {"v": "text"})  # type: ignore[dict-item]
        telemetry.emit("tool.execution.start", {"v": True})
        telemetry.emit("tool.execution.stop", {"v": 1}, {"key": object()})
        telemetry.emit("tool.execution.stop", {"v": 1}, {f"k{i}": i for i in range(40)})
        telemetry.emit("tool.execution.stop", {"v": 1}, {"long": "x" * 5000})

    @tool(description="Emit events whose values pass the checks but not the wire")
    def emit_unsendable(self) -> int:
        from pypit.worker import telemetry

        telemetry.emit("tool.execution.stop", {"v": 1})
        telemetry.emit("tool.execution.stop", {"v": 2**64})
        telemetry.emit("tool.execution.stop", {"v": -(2**70)})
        telemetry.emit("tool.execution.stop", {"v": 1}, {"text": "\ud800"})
        telemetry.emit("tool.execution.stop", {"v": 2})
        return os.getpid()

    @tool(description="Try to overwrite the keys the pool adds")
    def impersonate(self) -> None:
        from pypit.worker import telemetry

        telemetry.emit(
            "tool.execution.stop",
            {"duration": 1},
            {"pool_name": "evil", "worker_id": "evil_worker_9", "python_pid": 1},
        )

    @tool(description="Exercise the correlation id functions")
    def correlation(self) -> list[str | None]:
        from pypit.worker import telemetry

        seen = [telemetry.get_correlation_id()]
        token = telemetry.set_correlation_id(telemetry.new_correlation_id())
        seen.append(telemetry.get_correlation_id())
        telemetry.reset_correlation_id(token)
        seen.append(telemetry.get_correlation_id())
        telemetry.reset_correlation_id()
        seen.append(telemetry.get_correlation_id())
        return seen

    @tool(description="Crash")
    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @tool(description="pid")
    def pid(self) -> int:
        return os.getpid()


class Logs(Adapter):
    """Tools that log through the stdlib and structlog, and print, the way tools do."""

    @tool(description="Log through a plain stdlib logger, at each level, with extra fields")
    def stdlib(self, tag: str) -> None:
        import logging

        log = logging.getLogger("adapter.model")
        log.debug("debug %s", tag)
        log.info("loaded %s", tag, extra={"rows": 3, "shape": (2, 3)})
        log.warning("warning %s", tag)
        try:
            raise ValueError("bad input")
        except ValueError:
            log.exception("failed %s", tag)

    @tool(description="Log through structlog, at each level, with fields")
    def structured(self, tag: str) -> None:
        import structlog

        log = structlog.get_logger("adapter.scoring")
        log.debug("scoring", tag=tag)
        log.info("scored", tag=tag, score=0.5)
        structlog.get_logger().warning("nameless", tag=tag)

    @tool(description="Print numbered lines to stdout, a line to stderr, and a line's start")
    def print_lines(self, lines: int, tag: str, width: int = 0) -> int:
        for i in range(lines):
            print(f"{tag} {i}".ljust(width, "."))
        print(f"{tag} done", file=sys.stderr)
        sys.stdout.write(f"{tag} unfinished")
        return lines

    @tool(description="Print the traceback of a chained exception, then a line")
    def print_chained_traceback(self) -> None:
        import traceback

        empty: dict[str, int] = {}
        try:
            try:
                empty["missing"]
            except KeyError:
                raise RuntimeError("while handling")  # noqa: B904 - the implicit chain is the point
        except RuntimeError:
            traceback.print_exc()
        print("after the traceback", file=sys.stderr)

    @tool(description="Print n lines while nothing can ship them: past the buffer, lost")
    def flood_output(self, n: int) -> None:
        from pypit.worker import _runtime

        assert _runtime.current is not None
        # Output leaves under the outbox's lock: holding it keeps every line in the buffer.
        with _runtime.current.outbox._lock:
            for i in range(n):
                print(i)

    @tool(description="Configure structlog with a renderer of the adapter's own, and log")
    def own_renderer(self, tag: str) -> None:
        import structlog

        structlog.configure(processors=[structlog.processors.KeyValueRenderer(sort_keys=True)])
        structlog.get_logger("adapter.rendered").warning("rendered", tag=tag)

    @tool(description="Write lines to file descriptors 1 and 2 directly, as C code does")
    def write_fds(self, tag: str) -> None:
        os.write(1, f"{tag} fd 1\n".encode())
        os.write(2, f"{tag} fd 2\n".encode())

    @tool(description="Fork a child that prints and logs, and wait for it")
    def fork_and_log(self, tag: str) -> int:
        import logging

        child = os.fork()
        if child == 0:
            print(f"{tag} printed by the child")
            logging.getLogger("child").warning(f"{tag} logged by the child")
            sys.stdout.flush()
            os._exit(0)
        return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])

    @tool(description="Print from an async tool, then return")
    async def async_print_lines(self, lines: int, tag: str, width: int = 0) -> int:
        return self.print_lines(lines, tag, width)


class Traced(Echo):
    """Echo, plus a tool that returns the trace context it was called with."""

    @tool(description="The W3C trace context of the call")
    def trace_context(self) -> dict[str, str] | None:
        from pypit.worker import telemetry

        context = telemetry.get_trace_context()
        return dict(context) if context is not None else None

"""Adapters the tests run in real worker processes."""

from __future__ import annotations

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

    @tool(description="Return the arguments")
    def echo(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        return kwargs

    @tool(description="Return the one positional argument")
    def identity(self, value: Any = None) -> Any:
        return value

    @tool(description="Sleep, then return the seconds slept")
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @tool(description="Sleep too, under another name")
    def pause(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @tool(description="Sleep without blocking the worker's loop")
    async def async_sleep(self, seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

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

    @tool(description="Return something msgpack cannot carry")
    def unserializable(self) -> Any:
        return {1, 2}.__iter__()

    @tool(description="Return n bytes")
    def blob(self, n: int) -> bytes:
        return b"x" * n

    @tool(description="Print to stdout and stderr")
    def chatter(self, text: str) -> None:
        print(text)
        print(f"err: {text}", file=sys.stderr)

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

    @tool(description="Break the worker's channel (its process lives on)")
    def drop_channel(self) -> int:
        import socket

        from pypit.worker import _runtime

        assert _runtime.current is not None
        _runtime.current._sock.shutdown(socket.SHUT_RDWR)
        return os.getpid()


class SlowSetup(Adapter):
    def setup(self) -> None:
        time.sleep(30)

    @tool
    def never(self) -> None:
        return None


class FailingSetup(Adapter):
    def setup(self) -> None:
        raise RuntimeError("the model file is missing")

    @tool
    def never(self) -> None:
        return None


class Hostile(Echo):
    """Echo, plus a tool that writes raw bytes on the worker's channel."""

    @tool(description="Write raw bytes to the pool, bypassing the protocol")
    def garbage(self, data: bytes) -> None:
        from pypit.worker import _runtime

        assert _runtime.current is not None
        _runtime.current.send(data)

"""``pypit top``, run in a pseudo-terminal against a live pool, its screen read back."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pypit import _top
from pypit._top import Reader, render, server_sent_events, stream_url
from pypit.pool import start_pool
from pypit.telemetry import metrics

_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[a-zA-Z]|\][^\x07]*\x07|[()][0-9A-Za-z])")


def test_stream_url_and_events() -> None:
    """The page's address leads to its stream; the stream's events are split as sent."""
    assert stream_url("127.0.0.1:9569") == "http://127.0.0.1:9569/api/stream"
    assert stream_url("http://h:1/", "pypit.pool") == "http://h:1/api/stream?events=pypit.pool"
    assert stream_url("http://h:1/api/stream") == "http://h:1/api/stream"
    lines = [b"retry: 2000\n", b"event: hello\n", b"data: {}\n", b"\n", b"data: 1\n", b"\n"]
    assert list(server_sent_events(iter(lines))) == [("hello", "{}"), ("message", "1")]


def test_top_draws_the_workers_and_their_calls_in_place() -> None:
    """In a terminal, `pypit top URL` shows the pool's workers with their call counts,
    which grow as the pool works, and ends at once, with status 0, on `q`."""
    definitions = [metrics.counter("pypit.rpc.call.stop.count", tags=["command"])]
    with (
        metrics.DashboardReporter(definitions, port=0, interval=0.25) as dashboard,
        start_pool("examples.demo_adapter:DemoModel", size=2, name="top") as pool,
        dashboard.watch(pool),
    ):
        assert dashboard.url is not None
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                pool.execute("predict", {"x": 1.0}, timeout=10)
                time.sleep(0.002)

        caller = threading.Thread(target=load)
        caller.start()
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
        top = subprocess.Popen(
            [sys.executable, "-m", "pypit", "top", dashboard.url],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "150", "LINES": "40"},
            start_new_session=True,
        )
        os.close(terminal)
        screen = ""
        try:
            calls: dict[str, set[int]] = {"top_worker_1": set(), "top_worker_2": set()}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(len(c) > 1 for c in calls.values()):
                ready, _, _ = select.select([controller], [], [], 0.2)
                if ready:
                    screen += _ESCAPES.sub("", os.read(controller, 65536).decode(errors="replace"))
                for worker, count in re.findall(r"(top_worker_\d)\s+(?:idle|busy)\s+(\d+)", screen):
                    calls[worker].add(int(count))
            os.write(controller, b"q")
            status = top.wait(timeout=10)
        finally:
            stop.set()
            caller.join()
            if top.poll() is None:
                top.kill()
                top.wait()
            os.close(controller)

    assert "pypit top" in screen
    assert all(len(counts) > 1 for counts in calls.values()), calls
    assert status == 0


EVIL = "[/][bold red]BIG[/bold red][link=https://x]l[/link]\x1b]0;pwned\x07\x1b[31m\x9b2J\x7f"


def evil_frame() -> dict[str, Any]:
    worker = {
        "worker_id": "w" + EVIL, "state": "idle" + EVIL, "calls": 1, "in_flight": 0,
        "pid": 7, "node": "n" + EVIL, "uptime": 1.0, "restarts": 0,
        "last_exit": "e" + EVIL, "failure": None,
    }  # fmt: skip
    status = {
        "closed": False, "degraded": False, "queue_depth": 0, "max_queue_size": 10,
        "in_flight": 0, "busy_workers": 0, "total_workers": 1,
    }  # fmt: skip
    return {
        "metrics": [[{"tags": {"k": "v" + EVIL}, "value": 1.0, "total": 2}]],
        "pools": [{"name": "p" + EVIL, "status": status, "workers": [worker]}],
        "events": [
            {"time": 0.0, "name": "app.e" + EVIL, "metadata": {"m": EVIL}},
            {"time": 1e300, "name": "app.late", "metadata": {}},
        ],
    }


def test_top_shows_what_the_stream_holds_as_plain_text() -> None:
    """Markup in the stream's strings is shown as written, never read as markup, and
    their control characters are shown as escapes, never sent to the terminal; a time or
    an interval out of any clock's range is no crash."""
    from rich.console import Console

    reader = Reader("http://127.0.0.1:1/api/stream")
    reader._take("hello", json.dumps({"interval": 1.0, "metrics": [
        {"name": "m" + EVIL, "kind": "counter", "unit": None}
    ]}))  # fmt: skip
    reader._take("frame", json.dumps(evil_frame()))
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=3000, color_system="truecolor")
    console.print(render(reader, "http://127.0.0.1:1/"))
    shown = output.getvalue()
    plain = _ESCAPES.sub("", shown)
    for name in ("w", "idle", "n", "e", "p", "m", "k=v", "app.e", "m="):
        assert name + "[/][bold red]BIG[/bold red][link=https://x]l[/link]" in plain, name
    assert "\\x1b]0;pwned\\x07\\x1b[31m\\x9b2J\\x7f" in plain
    assert "pwned\x07" not in shown
    assert "\x9b" not in shown
    assert "\x1b]8;" not in shown  # no hyperlink
    assert "?  app.late" in plain
    assert _top.read_timeout(1e308) == _top.MAX_READ_TIMEOUT


class FakeDashboard:
    """A server on 127.0.0.1 that answers each connection with ``answer(n)``, the n-th
    connection's bytes and the seconds to wait before each, then closes it."""

    def __init__(self, answer: Callable[[int], list[tuple[float, bytes]]]) -> None:
        self.connections = 0
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                self.connections += 1
                connection.recv(65536)
                for delay, data in self._answer(self.connections):
                    if self._stop.wait(delay):
                        return
                    with contextlib.suppress(OSError):
                        connection.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()
        assert not self._thread.is_alive()


HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


def hello(interval: float = 1.0) -> bytes:
    return b"event: hello\ndata: " + json.dumps({"interval": interval, "metrics": []}).encode()


def wait_until(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_top_reports_a_malformed_stream_and_reads_it_again() -> None:
    """A hello or a frame not shaped as a dashboard's is reported as such on screen and
    the stream is read again, the reader alive, never a traceback."""
    answers = [
        [(0, HEAD + b"event: hello\ndata: 1\n\n"), (0.5, b"")],
        [(0, HEAD + hello() + b"\n\nevent: frame\ndata: "
          + json.dumps({"metrics": [], "pools": [{"name": "x"}]}).encode() + b"\n\n"),
         (0.5, b"")],
    ]  # fmt: skip
    server = FakeDashboard(lambda n: answers[min(n, 2) - 1])
    reader = Reader(f"http://127.0.0.1:{server.port}/api/stream")
    errors: list[str] = []

    def seen() -> bool:
        if reader.error and reader.error not in errors:
            errors.append(reader.error)
        return server.connections >= 3

    reader.start()
    try:
        wait_until(seen, "a third connection")
    finally:
        reader.stop()
        server.close()
    assert not reader._thread.is_alive()
    malformed = [e for e in errors if e.startswith("not a pypit dashboard stream: ")]
    assert any("hello" in e for e in malformed), errors
    assert any("frame" in e and "pools[0]" in e for e in malformed), errors
    assert reader.frame is None


def test_top_waits_for_a_frame_as_long_as_the_interval_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read timeout follows the interval the hello announces, not the time allowed to
    connect: a frame that comes later than that, but within three intervals, is read."""
    monkeypatch.setattr(_top, "CONNECT_TIMEOUT", 0.3)
    monkeypatch.setattr(_top, "READ_MARGIN", 0.3)
    frame = json.dumps({"metrics": [], "pools": []}).encode()
    late = b"event: frame\ndata: " + frame + b"\n\n"
    server = FakeDashboard(lambda n: [(0, HEAD + hello(0.4) + b"\n\n"), (0.8, late), (5, b"")])
    reader = Reader(f"http://127.0.0.1:{server.port}/api/stream")
    reader.start()
    try:
        wait_until(lambda: reader.frames or reader.error, "a frame or an error")
        frames, error = reader.frames, reader.error
    finally:
        reader.stop()
        server.close()
    assert not reader._thread.is_alive()
    assert frames == 1, error
    assert error is None
    assert _top.read_timeout(0.4) == pytest.approx(1.5)


def test_top_says_it_needs_a_terminal() -> None:
    """With its output not a terminal, `pypit top` says it needs one and ends with status
    2 (the process is gone once the test ends)."""
    top = subprocess.run(
        [sys.executable, "-m", "pypit", "top", "http://127.0.0.1:1/"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert top.returncode == 2
    assert "terminal" in top.stderr
    assert top.stdout == ""

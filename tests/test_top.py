"""``pypit top``, run in a pseudo-terminal against a live pool, its screen read back."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time

from pypit._top import server_sent_events, stream_url
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

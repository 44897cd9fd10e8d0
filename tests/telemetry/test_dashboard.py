"""The dashboard reporter: its endpoints, and its page as a person sees it in a browser."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psutil
import pytest
import structlog.testing

from pypit import PoolSaturatedError, ToolError, WorkerCrashedError, telemetry
from pypit.pool import start_pool
from pypit.telemetry import _dashboard_http, _dashboard_state, metrics

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = "PYPIT_DASHBOARD_SCREENSHOT"
"""Where the page test also writes its screenshot (``make screenshot``: the docs' image)."""


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        loaded: dict[str, Any] = json.load(response)
        return loaded


def test_snapshot_and_stream_report_each_kind_of_metric() -> None:
    """The snapshot holds totals by tag set; the stream's first frame after two intervals
    holds rates, last values, percentiles and bucket counts, and the events asked for."""
    definitions = [
        metrics.counter("app.call.stop.count", tags=["cmd"]),
        metrics.sum("app.call.stop.bytes", unit="byte"),
        metrics.last_value("app.call.stop.depth", tags=["cmd"]),
        metrics.summary("app.call.stop.duration", unit=("native", "millisecond")),
        metrics.distribution("app.call.stop.size", reporter_options={"buckets": [10, 100]}),
    ]
    with metrics.DashboardReporter(definitions, port=0, interval=0.1) as dashboard:
        assert dashboard.url is not None
        assert dashboard.url.startswith("http://127.0.0.1:")
        for duration in (1_000_000, 2_000_000, 3_000_000):
            telemetry.execute(
                ("app", "call", "stop"),
                {"bytes": 10, "depth": 4, "duration": duration, "size": 50},
                {"cmd": "a"},
            )
        snapshot = get_json(dashboard.url + "api/snapshot")
        assert [m["kind"] for m in snapshot["metrics"]] == [
            "counter", "sum", "last_value", "summary", "distribution"
        ]  # fmt: skip
        series = [m["series"] for m in snapshot["metrics"]]
        assert series[0] == [{"tags": {"cmd": "a"}, "total": 3}]
        assert series[1] == [{"tags": {}, "total": 30}]
        assert series[2] == [{"tags": {"cmd": "a"}, "value": 4}]
        assert series[3] == [{"tags": {}, "count": 3, "sum": 6.0, "mean": 2.0}]
        assert snapshot["metrics"][3]["unit"] == "millisecond"
        assert snapshot["metrics"][4]["buckets"] == [10, 100]

        frames = read_stream(dashboard.url + "api/stream?events=app.call", 3, during=emit_calls)
    hello, *_, last = frames
    assert hello["metrics"][0]["name"] == "app.call.stop.count"
    events = [event for frame in frames[1:] for event in frame["events"]]
    assert events
    assert {event["name"] for event in events} == {"app.call.stop"}
    assert events[-1]["metadata"] == {"cmd": "a"}
    counter, total, depth, duration, size = last["metrics"]
    assert counter[0]["value"] > 0
    assert total[0]["value"] > 0
    assert depth[0]["value"] == 4
    assert duration[0]["p50"] == duration[0]["p99"] == 1.0
    assert size[0]["counts"][1] == size[0]["count"] > 0
    assert telemetry.list_handlers() == []


def emit_calls(stop: threading.Event) -> None:
    while not stop.wait(0.01):
        telemetry.execute(
            ("app", "call", "stop"),
            {"bytes": 10, "depth": 4, "duration": 1_000_000, "size": 50},
            {"cmd": "a"},
        )


def read_stream(
    url: str, frames: int, during: Callable[[threading.Event], None]
) -> list[dict[str, Any]]:
    """The hello and the first ``frames`` frames of a stream, read while ``during`` runs."""
    stop = threading.Event()
    worker = threading.Thread(target=during, args=(stop,))
    worker.start()
    read: list[dict[str, Any]] = []
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            for line in response:
                if line.startswith(b"data: "):
                    read.append(json.loads(line[6:]))
                    if len(read) == frames + 1:
                        break
    finally:
        stop.set()
        worker.join()
    return read


def test_watch_says_how_each_kind_of_pool_is_watched() -> None:
    """A pool from start_pool is watched with `with`; anything else is refused."""
    with metrics.DashboardReporter(port=0) as dashboard:
        with pytest.raises(TypeError, match="watches a pool"):
            dashboard.watch("default")
    with pytest.raises(ValueError, match="port"):
        metrics.DashboardReporter(port=70000)


# -- the page in a browser -----------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless chromium, driven by its driver; both are gone when the test ends."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        message = f"the page test needs chromium and its driver: {', '.join(missing)} missing"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (make test installs them: apt-get install chromium "
                        "chromium-driver)")  # fmt: skip
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1500",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    assert service.process is not None
    processes = [psutil.Process(service.process.pid)]
    processes += processes[0].children(recursive=True)
    try:
        yield driver
    finally:
        driver.quit()
        _, alive = psutil.wait_procs(processes, timeout=10)
        for process in alive:
            process.kill()
        assert not alive, f"browser processes left: {alive}"


def wait_for(driver: Any, script: str, what: str, timeout: float = 15.0) -> Any:
    """The first truthy value of ``script`` in the page, polled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"the page never showed {what}")


READ = """
const rows = [...document.querySelectorAll('tr[data-worker]')].map((row) => ({
    id: row.dataset.worker, pid: row.dataset.pid, state: row.dataset.state,
    calls: Number(row.querySelector('td.calls').textContent),
    exit: row.querySelector('td.exit').textContent,
    restarts: Number(row.cells[10].textContent),
}));
const charts = [...document.querySelectorAll('.chart')].map((card) => {
    const canvas = card.querySelector('canvas');
    return [card.dataset.metric, canvas ? canvas.toDataURL() : null];
});
const frames = Number(document.body.dataset.frames || 0);
return {rows, charts: Object.fromEntries(charts), frames};
"""


SEQS = "return [...document.querySelectorAll('tr[data-event]')].map((row) => row.dataset.seq);"


def test_the_page_shows_live_charts_workers_and_events(browser: Any, tmp_path: Path) -> None:
    """In a real browser, while a pool works: the charts and the workers' calls change
    between two reads, a killed worker shows its end and its replacement, the tail filters
    by prefix and shows each event once after the stream breaks and opens again, and the
    console has no errors. The screenshot is kept under tmp_path."""
    definitions = [
        metrics.counter("pypit.rpc.call.stop.count", tags=["command"]),
        metrics.last_value("pypit.pool.status.in_flight", tags=["pool_name"]),
        metrics.summary(
            "pypit.python.call.stop.duration", unit=("native", "millisecond"), tags=["command"]
        ),
        metrics.distribution(
            "pypit.rpc.call.stop.duration",
            unit=("native", "millisecond"),
            reporter_options={"buckets": [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]},
        ),
    ]
    with (
        metrics.DashboardReporter(definitions, port=0, interval=0.25) as dashboard,
        start_pool(
            "examples.demo_adapter:DemoModel",
            size=2,
            name="seen",
            status_interval=0.2,
            sample_interval=0.5,
            max_queue_size=16,
        ) as pool,
        dashboard.watch(pool),
    ):
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    pool.execute("predict", {"x": 1.0}, timeout=10)
                except (ToolError, PoolSaturatedError, WorkerCrashedError):
                    # The test kills a worker: the call it ran fails with it.
                    pass
                except Exception:
                    if not stop.is_set():
                        raise
                time.sleep(0.002)

        callers = [threading.Thread(target=load) for _ in range(2)]
        for caller in callers:
            caller.start()
        try:
            assert dashboard.url is not None
            browser.get(dashboard.url)
            wait_for(browser, "return Number(document.body.dataset.frames) >= 3", "frames")
            first = wait_for(browser, READ, "the workers")
            time.sleep(1.0)
            second = browser.execute_script(READ)
            assert {row["id"] for row in first["rows"]} == {"seen_worker_1", "seen_worker_2"}
            assert sum(r["calls"] for r in second["rows"]) > sum(r["calls"] for r in first["rows"])
            for name in ("pypit.rpc.call.stop.count", "pypit.python.call.stop.duration"):
                assert first["charts"][name] is not None
                assert first["charts"][name] != second["charts"][name], name

            killed = pool.workers()["seen_worker_1"]
            os.kill(killed, signal.SIGKILL)
            replaced = (
                "return [...document.querySelectorAll('tr[data-worker=seen_worker_1]')]"
                f".some((row) => row.dataset.pid !== '{killed}' && row.dataset.pid !== 'null'"
                " && row.dataset.state !== 'starting')"
            )
            wait_for(browser, replaced, "the killed worker's replacement")
            after = {row["id"]: row for row in browser.execute_script(READ)["rows"]}
            assert after["seen_worker_1"]["exit"] == "killed"
            assert after["seen_worker_1"]["restarts"] == 1
            assert after["seen_worker_2"]["restarts"] == 0

            prefix = "pypit.pool.worker"
            browser.find_element("id", "filter").send_keys(prefix)
            tail = (
                "const names = [...document.querySelectorAll('tr[data-event]')]"
                ".map((row) => row.dataset.event);"
                f"return names.includes('{prefix}.terminated') && "
                f"names.every((name) => name.startsWith('{prefix}')) && names;"
            )
            names = wait_for(browser, tail, "the worker's termination in the filtered tail")
            assert f"{prefix}.restarted" in names

            wait_for(browser, "return document.querySelector('td.num + td.num') !== null", "rss")
            screenshot = tmp_path / "dashboard.png"
            assert browser.save_screenshot(str(screenshot))
            assert screenshot.read_bytes()[:8] == base64.b64decode("iVBORw0KGgo=")
            if os.environ.get(SCREENSHOT):
                shutil.copyfile(screenshot, os.environ[SCREENSHOT])
            # A stream that breaks is opened again, and its hello brings the recent events
            # again: the tail shows each once.
            before = wait_for(browser, SEQS, "the events' numbers")
            assert dashboard._server is not None
            for connection in list(dashboard._server._server._open):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            wait_for(browser, "return document.querySelector('#connection.warn')", "the break")
            wait_for(browser, "return document.querySelector('#connection.ok')", "the reconnection")
            after_seqs = wait_for(browser, SEQS, "the events' numbers again")
            assert len(after_seqs) == len(set(after_seqs)), after_seqs
            assert set(before) <= set(after_seqs)

            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
        finally:
            stop.set()
            for caller in callers:
                caller.join()


# -- limits: what one client can take of the process ---------------------------------------


def raw_get(port: int, path: str, timeout: float = 10.0, host: str = "127.0.0.1") -> bytes:
    """The whole answer to ``GET path`` on a connection of its own."""
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def open_stream(port: int) -> socket.socket:
    """A stream's connection, once its hello arrived."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(b"GET /api/stream HTTP/1.0\r\n\r\n")
    received = b""
    while b"event: hello" not in received:
        chunk = connection.recv(65536)
        assert chunk, received
        received += chunk
    return connection


def test_streams_and_connections_beyond_their_caps_are_refused() -> None:
    """With MAX_STREAMS streams open, one more is answered 503 saying why, and with
    MAX_CONNECTIONS connections open one more is too; once they close, a stream opens
    again."""
    with metrics.DashboardReporter(port=0, interval=0.05) as dashboard:
        assert dashboard.port is not None
        port = dashboard.port
        streams = [open_stream(port) for _ in range(_dashboard_http.MAX_STREAMS)]
        try:
            refused = raw_get(port, "/api/stream")
            assert refused.startswith(b"HTTP/1.0 503"), refused
            assert b"too many streams open" in refused
            idle = [
                socket.create_connection(("127.0.0.1", port), timeout=10)
                for _ in range(_dashboard_http.MAX_CONNECTIONS - len(streams))
            ]
            try:
                time.sleep(0.2)  # the server accepts them all
                refused = raw_get(port, "/api/snapshot")
                assert refused.startswith(b"HTTP/1.0 503"), refused
                assert b"too many connections open" in refused
            finally:
                for connection in idle:
                    connection.close()
        finally:
            for connection in streams:
                connection.close()
        # The streams end as their next frame finds them closed: bounded, not timed.
        deadline = time.monotonic() + 10
        status = b""
        while time.monotonic() < deadline and status != b"HTTP/1.0 200":
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                connection.sendall(b"GET /api/stream HTTP/1.0\r\n\r\n")
                status = connection.recv(12)
        assert status == b"HTTP/1.0 200"


def test_stop_returns_soon_with_slow_and_stalled_clients() -> None:
    """stop() neither waits for clients that send their request a header at a time nor
    for a stream whose reader stopped reading large frames (both keep going meanwhile):
    it returns within a few seconds, a liveness bound far below the 30 s a socket's own
    timeout would take."""
    definitions = [metrics.counter("app.wide.count", tags=["key"])]
    dashboard = metrics.DashboardReporter(definitions, port=0, interval=0.05)
    dashboard.start()
    assert dashboard.port is not None
    for key in range(400):
        telemetry.execute(("app", "wide"), {}, {"key": f"{key:0>60}"})
    slow = []
    for _ in range(5):
        connection = socket.create_connection(("127.0.0.1", dashboard.port), timeout=10)
        connection.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n")
        slow.append(connection)
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", dashboard.port))
    stalled.sendall(b"GET /api/stream HTTP/1.0\r\n\r\n")
    dripping = threading.Event()

    def drip() -> None:
        while not dripping.wait(0.1):
            for connection in slow:
                with contextlib.suppress(OSError):
                    connection.sendall(b"X-A: b\r\n")

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        time.sleep(1.0)  # the stalled stream's buffers fill
        started = time.monotonic()
        dashboard.stop()
        took = time.monotonic() - started
    finally:
        dripping.set()
        dripper.join()
        for connection in [*slow, stalled]:
            connection.close()
    assert took < 8, took
    assert dashboard.port is None


def test_a_request_sent_slowly_is_cut_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that keeps sending header lines is cut once its request's deadline
    passes, however often it sends; a prompt request on another connection is served."""
    monkeypatch.setattr(_dashboard_http, "REQUEST_DEADLINE", 0.5)
    with metrics.DashboardReporter(port=0) as dashboard:
        assert dashboard.port is not None
        connection = socket.create_connection(("127.0.0.1", dashboard.port), timeout=10)
        connection.sendall(b"GET / HTTP/1.0\r\n")
        cut = False
        deadline = time.monotonic() + 10
        with connection:
            while time.monotonic() < deadline and not cut:
                try:
                    connection.sendall(b"X-A: b\r\n")
                    time.sleep(0.1)
                except OSError:
                    cut = True
                    continue
                ready, _, _ = select.select([connection], [], [], 0)
                if ready:
                    try:
                        cut = connection.recv(1024) == b""
                    except OSError:
                        cut = True
        assert cut
        assert raw_get(dashboard.port, "/").startswith(b"HTTP/1.0 200")


def test_clients_that_go_away_print_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """A client that resets its connection before the answer is no error: nothing on the
    application's stderr, and the dashboard serves the next request."""
    with metrics.DashboardReporter(port=0) as dashboard:
        assert dashboard.port is not None
        for path in ("/", "/api/snapshot", "/static/vendor/uPlot.iife.min.js", "/api/stream"):
            connection = socket.create_connection(("127.0.0.1", dashboard.port), timeout=10)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.sendall(f"GET {path} HTTP/1.0\r\n".encode())
            time.sleep(0.1)
            connection.sendall(b"\r\n")
            connection.close()
        time.sleep(0.5)  # the server writes its answers to the closed connections
        assert raw_get(dashboard.port, "/api/snapshot").startswith(b"HTTP/1.0 200")
    assert "Traceback" not in capfd.readouterr().err


def test_a_failing_request_is_logged_not_printed(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that fails for another reason than its client going away is logged
    through pypit's logger, and nothing is printed on the application's stderr."""

    def broken(self: metrics.DashboardReporter, prefix: str) -> dict[str, Any]:
        raise RuntimeError("broken snapshot")

    monkeypatch.setattr(metrics.DashboardReporter, "_snapshot", broken)
    with structlog.testing.capture_logs() as logs, metrics.DashboardReporter(port=0) as d:
        assert d.port is not None
        assert raw_get(d.port, "/api/snapshot") == b""
        assert raw_get(d.port, "/").startswith(b"HTTP/1.0 200")
    failed = [log for log in logs if log["event"] == "the dashboard failed on a request"]
    assert [log["error"] for log in failed] == ["RuntimeError('broken snapshot')"]
    assert failed[0]["log_level"] == "error"
    assert "Traceback" not in capfd.readouterr().err


class Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_an_event_that_cannot_be_encoded_becomes_a_placeholder() -> None:
    """Metadata JSON cannot hold (a repr that raises, a list that holds itself, keys
    that are not text) shows as text or a placeholder; the stream goes on and the
    snapshot answers."""
    looped: list[Any] = []
    looped.append(looped)
    with metrics.DashboardReporter([metrics.counter("app.e.count")], port=0, interval=0.05) as d:
        assert d.url is not None

        def emit(stop: threading.Event) -> None:
            while not d.looked_at() and not stop.wait(0.01):
                pass
            stop.wait(0.1)  # the tail listens once the stream is open
            for metadata in ({"k": Unrepresentable()}, {"k": looped}, {"k": {(1, 2): 3}}):
                telemetry.execute(("app", "e"), {}, metadata)
                stop.wait(0.05)

        frames = read_stream(d.url + "api/stream?events=app.e", 8, during=emit)
        snapshot = get_json(d.url + "api/snapshot")
    shown = [e["metadata"]["k"] for f in frames[1:] for e in f["events"]]
    assert shown == snapshot_values(snapshot)
    assert shown[0] == "<unrepresentable Unrepresentable>"
    assert shown[1] == "[[...]]"
    assert shown[2] == {"(1, 2)": 3}


def snapshot_values(snapshot: dict[str, Any]) -> list[Any]:
    return [event["metadata"]["k"] for event in snapshot["events"]]


def test_a_new_stream_starts_from_a_fresh_frame() -> None:
    """A stream opened after the others closed (the frames stopped) starts from a frame
    built for it, not from the last one of the earlier streams."""
    with metrics.DashboardReporter([metrics.last_value("app.v.x")], port=0, interval=0.05) as d:
        assert d.url is not None
        telemetry.execute(("app", "v"), {"x": 1}, {})
        first = read_stream(d.url + "api/stream", 1, during=lambda stop: None)
        deadline = time.monotonic() + 10
        while d.looked_at() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not d.looked_at()
        time.sleep(0.2)  # the frames stop
        telemetry.execute(("app", "v"), {"x": 2}, {})
        second = read_stream(d.url + "api/stream", 1, during=lambda stop: None)
    assert first[1]["metrics"][0][0]["value"] == 1
    frames = [*second[0]["history"], second[1]]
    assert [frame["metrics"][0][0]["value"] for frame in frames] == [2] * len(frames)


def test_tag_sets_beyond_the_cap_are_counted_as_dropped() -> None:
    """A metric keeps MAX_SERIES tag sets; the events of new ones beyond them are counted
    as dropped, in the snapshot and in each frame, while known tag sets still count."""
    cap = _dashboard_state.MAX_SERIES
    definitions = [metrics.counter("app.req.count", tags=["request_id"])]
    with metrics.DashboardReporter(definitions, port=0, interval=0.05) as dashboard:
        assert dashboard.url is not None
        for request_id in range(cap + 100):
            telemetry.execute(("app", "req"), {}, {"request_id": request_id})
        telemetry.execute(("app", "req"), {}, {"request_id": 0})
        snapshot = get_json(dashboard.url + "api/snapshot")
        frames = read_stream(dashboard.url + "api/stream", 1, during=lambda stop: None)
    (metric,) = snapshot["metrics"]
    assert len(metric["series"]) == cap
    assert metric["dropped"] == 100
    assert metric["series"][0] == {"tags": {"request_id": 0}, "total": 2}
    assert frames[0]["max_series"] == cap
    assert frames[1]["dropped"] == [100]
    assert len(frames[1]["metrics"][0]) == cap


def test_an_unhashable_tag_value_counts_by_its_text() -> None:
    """A tag value that cannot be a key (a list) counts under its text."""
    definitions = [metrics.counter("app.t.count", tags=["k"])]
    with metrics.DashboardReporter(definitions, port=0) as dashboard:
        assert dashboard.url is not None
        for _ in range(2):
            telemetry.execute(("app", "t"), {}, {"k": [1, 2]})
        snapshot = get_json(dashboard.url + "api/snapshot")
    assert snapshot["metrics"][0]["series"] == [{"tags": {"k": "[1, 2]"}, "total": 2}]


def test_interval_has_a_minimum_and_ipv6_is_served() -> None:
    """An interval below MIN_INTERVAL is refused, saying so; an IPv6 address is served,
    and named in brackets in the page's address and in errors."""
    with pytest.raises(ValueError, match=r"interval must be at least 0\.05 seconds"):
        metrics.DashboardReporter(interval=1e-6)
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 on this machine")
    with metrics.DashboardReporter(port=0, address="::1") as dashboard:
        assert dashboard.port is not None
        assert dashboard.url == f"http://[::1]:{dashboard.port}/"
        assert get_json(dashboard.url + "api/snapshot")["version"] == 1
        taken = metrics.DashboardReporter(port=dashboard.port, address="::1")
        with pytest.raises(OSError, match=rf"cannot listen on \[::1\]:{dashboard.port}"):
            taken.start()


@pytest.mark.anyio
async def test_an_async_pool_is_snapshot_at_once_and_watched_once() -> None:
    """The snapshot of a pool from open_pool holds its latest read at once, without
    waiting for the pool's loop to read it again (the interval is 5 s: the bound below is
    a liveness bound); watching the same pool twice is refused."""
    from pypit.pool import open_pool

    with metrics.DashboardReporter(port=0, interval=5.0) as dashboard:
        assert dashboard.url is not None
        async with (
            open_pool("examples.demo_adapter:DemoModel", size=1, name="once") as pool,
            dashboard.watch(pool),
        ):
            with pytest.raises(ValueError, match="already watches the pool 'once'"):
                async with dashboard.watch(pool):
                    pass
            dashboard._pools[0].read_at -= 100  # as if nobody had looked for a while
            started = time.monotonic()
            snapshot = await anyio.to_thread.run_sync(get_json, dashboard.url + "api/snapshot")
            took = time.monotonic() - started
    assert [p["name"] for p in snapshot["pools"]] == ["once"]
    assert took < 2.5, took

"""The dashboard reporter: its endpoints, and its page as a person sees it in a browser."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pypit import PoolSaturatedError, ToolError, WorkerCrashedError, telemetry
from pypit.pool import start_pool
from pypit.telemetry import metrics

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


def test_the_page_shows_live_charts_workers_and_events(browser: Any, tmp_path: Path) -> None:
    """In a real browser, while a pool works: the charts and the workers' calls change
    between two reads, a killed worker shows its end and its replacement, the tail filters
    by prefix, and the console has no errors. The screenshot is kept under tmp_path."""
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
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
        finally:
            stop.set()
            for caller in callers:
                caller.join()

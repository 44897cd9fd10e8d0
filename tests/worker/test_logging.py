"""What workers log, as the pool's records: each record keeps its level, logger and fields,
and arrives once."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog

from pypit import _log
from pypit.pool import open_pool
from tests.pool.conftest import adapter, options

pytestmark = pytest.mark.anyio

Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def restore_log_levels() -> Iterator[None]:
    """Put pypit's process-wide levels back as a test found them."""
    yield
    _log.set_levels("info", dict.fromkeys(_log.CATEGORIES, "info"))


def by_logger(logs: Logs, name: str) -> list[tuple[str, str]]:
    """The (event, level) of each record of the worker's logger ``name``, in order."""
    return [(e["event"], e["log_level"]) for e in logs if e.get("logger") == name]


@pytest.mark.usefixtures("restore_log_levels")
async def test_stdlib_records_keep_their_level_logger_and_fields() -> None:
    """Each record of a tool's plain stdlib logger is one record of the pool, at its own
    level, with its logger's name, its extra fields, its traceback and the worker's ids --
    never a line of stderr."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options(name="logs", log_level="debug")) as pool:
            await pool.execute("stdlib", {"tag": "a"})
            pid = pool.workers()["logs_worker_1"]

    assert by_logger(logs, "adapter.model") == [
        ("debug a", "debug"),
        ("loaded a", "info"),
        ("warning a", "warning"),
        ("failed a", "error"),
    ]
    loaded, failed = (e for e in logs if e["event"] in ("loaded a", "failed a"))
    assert loaded["rows"] == 3
    assert loaded["shape"] == "(2, 3)"
    assert (loaded["category"], loaded["pool_name"]) == ("worker", "logs")
    assert (loaded["worker_id"], loaded["worker_pid"]) == ("logs_worker_1", pid)
    assert "ValueError: bad input" in failed["exception"]
    assert [e for e in logs if "stream" in e and e["event"].endswith(" a")] == []


@pytest.mark.usefixtures("restore_log_levels")
async def test_structlog_records_keep_their_level_logger_and_fields() -> None:
    """A tool's structlog records arrive as records, not as rendered text: the event alone,
    no second prefix, its fields as fields, its logger's name when it has one."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options(log_level="debug")) as pool:
            await pool.execute("structured", {"tag": "b"})

    assert by_logger(logs, "adapter.scoring") == [("scoring", "debug"), ("scored", "info")]
    scored = next(e for e in logs if e["event"] == "scored")
    assert (scored["tag"], scored["score"], scored["worker_id"]) == ("b", 0.5, "default_worker_1")
    (nameless,) = [e for e in logs if e["event"] == "nameless"]
    assert nameless["log_level"] == "warning"
    assert "logger" not in nameless
    assert [e for e in logs if "stream" in e and "scor" in e["event"]] == []


@pytest.mark.usefixtures("restore_log_levels")
async def test_set_worker_level_applies_to_plain_stdlib_loggers_and_structlog() -> None:
    """A worker starts at the pool's level; set_worker_level("debug") shows the debug records
    of a plain stdlib logger (no handler, no basicConfig) and of structlog, in that worker,
    live; reset_worker_level hides them again."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options(log_level="info")) as pool:
            for phase in ("before", "during", "after"):
                if phase == "during":
                    await pool.set_worker_level("default_worker_1", "debug")
                await pool.execute("stdlib", {"tag": phase})
                await pool.execute("structured", {"tag": phase})
                if phase == "during":
                    await pool.reset_worker_level("default_worker_1")

    debug = [(e["event"], e.get("tag")) for e in logs if e.get("log_level") == "debug"]
    assert sorted(debug, key=str) == [("debug during", None), ("scoring", "during")]
    loaded = [e for e in logs if e["event"].startswith("loaded ")]
    assert [e["event"] for e in loaded] == ["loaded before", "loaded during", "loaded after"]

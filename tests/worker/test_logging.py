"""What workers log and print, as the pool's records: log records keep their level, logger
and fields, once; printed lines arrive before the result of the call that printed them."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import anyio
import pytest
import structlog

from pypit import WorkerCrashedError
from pypit.pool import open_pool
from tests.pool.conftest import adapter, options

pytestmark = pytest.mark.anyio

Logs = list[MutableMapping[str, Any]]


def by_logger(logs: Logs, name: str) -> list[tuple[str, str]]:
    """The (event, level) of each record of the worker's logger ``name``, in order."""
    return [(e["event"], e["log_level"]) for e in logs if e.get("logger") == name]


def output_lines_records(logs: Logs, event: str) -> list[MutableMapping[str, Any]]:
    """The records of worker output whose message is ``event``."""
    return [e for e in logs if e.get("stream") and e["event"] == event]


def output_lines(logs: Logs, stream: str, prefix: str) -> list[str]:
    """The lines printed to ``stream`` that start with ``prefix``, in order."""
    return [e["event"] for e in logs if e.get("stream") == stream and e["event"].startswith(prefix)]


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


async def test_an_adapters_own_structlog_renderer_makes_the_message() -> None:
    """An adapter that configures structlog's processors keeps them: the rendered text is
    the record's message, at the level it was logged at."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options()) as pool:
            await pool.execute("own_renderer", {"tag": "r"})

    assert by_logger(logs, "adapter.rendered") == [("event='rendered' tag='r'", "warning")]


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


@pytest.mark.parametrize("tool", ["print_lines", "async_print_lines"])
async def test_printed_lines_are_logged_before_the_result_arrives(tool: str) -> None:
    """Every line a tool prints during a call is logged, in order, by the time its caller
    has the call's result -- a line it left unfinished too: stdout at info, stderr at
    warning, with the worker's ids. (It prints more than a pipe holds.)"""
    lines, width = 1500, 100
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options(name="talk")) as pool:
            for round_ in range(3):
                tag = f"r{round_}"
                args = {"lines": lines, "tag": tag, "width": width}
                assert await pool.execute(tool, args) == lines
                expected = [f"{tag} {i}".ljust(width, ".") for i in range(lines)]
                expected.append(f"{tag} unfinished")
                assert output_lines(logs, "stdout", tag + " ") == expected
                (done,) = [e for e in logs if e["event"] == f"{tag} done"]
                assert (done["stream"], done["log_level"]) == ("stderr", "warning")
                assert (done["worker_id"], done["pool_name"]) == ("talk_worker_1", "talk")


async def test_a_line_too_long_is_cut_once_and_nothing_else_is_lost() -> None:
    """A printed line over 65,536 characters arrives cut to 65,536, as one record: the
    rest of it does not become more lines, nor its newline an empty one, and what was
    printed after it arrives."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options()) as pool:
            args = {"lines": 2, "tag": "big", "width": 70_000}
            assert await pool.execute("print_lines", args) == 2

    stdout = [e["event"] for e in logs if e.get("stream") == "stdout"]
    assert [len(line) for line in stdout] == [65_536, 65_536, len("big unfinished")]
    assert [line[:5] for line in stdout] == ["big 0", "big 1", "big u"]
    assert output_lines(logs, "stderr", "big") == ["big done"]
    assert not [e for e in logs if e["event"].startswith("worker output lost")]


async def test_an_entry_too_large_for_a_frame_is_cut_to_fit_not_lost() -> None:
    """With the smallest frame, a line no frame can carry whole arrives cut to fit, and
    nothing is reported lost; the call is answered and what was printed around it
    arrives."""
    with structlog.testing.capture_logs() as logs:
        # The smallest max_frame_size, which a 65,536-character line cannot fit.
        async with open_pool(adapter("Logs"), **options(max_frame_size=65_536)) as pool:
            args = {"lines": 1, "tag": "big", "width": 70_000}
            assert await pool.execute("print_lines", args) == 1

    assert not [e for e in logs if e["event"].startswith("worker output lost")]
    (line,) = output_lines(logs, "stdout", "big 0")
    assert 10_000 < len(line) < 65_536
    assert output_lines(logs, "stderr", "big") == ["big done"]
    assert output_lines(logs, "stdout", "big u") == ["big unfinished"]


async def test_output_past_the_workers_buffer_is_counted_and_reported() -> None:
    """A worker holds 65,536 lines and records waiting to leave: the lines printed past
    them are lost, counted, and the pool says how many, once."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options()) as pool:
            await pool.execute("flood_output", {"n": 70_000})

    (lost,) = [e for e in logs if e["event"].startswith("worker output lost")]
    assert (lost["lost"], lost["log_level"]) == (70_000 - 65_536, "warning")
    assert len([e for e in logs if e.get("stream") == "stdout"]) == 65_536


async def test_what_bypasses_sys_stdout_still_arrives_line_by_line() -> None:
    """What is written to file descriptors 1 and 2 directly (C code, child processes), and
    what a child forked from the worker prints or logs, reach the pool through the worker's
    pipes, one record per line."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options()) as pool:
            await pool.execute("write_fds", {"tag": "c"})
            assert await pool.execute("fork_and_log", {"tag": "f"}) == 0
            expected = {
                ("c fd 1", "stdout"),
                ("c fd 2", "stderr"),
                ("f printed by the child", "stdout"),
                ("WARNING:child:f logged by the child", "stderr"),
            }
            with anyio.fail_after(5):
                while not expected <= {(e["event"], e.get("stream")) for e in logs}:
                    await anyio.sleep(0.01)

    assert not [e for e in logs if e.get("logger") == "child"]


async def test_each_pool_keeps_its_own_levels() -> None:
    """Levels belong to the pool given them: a pool opened later with another level does not
    change an open pool's, each pool's records carry its name and are filtered at its own
    levels, and a pool given no level logs at info."""
    with structlog.testing.capture_logs() as logs:
        async with (
            open_pool(adapter(), **options(name="quiet", log_level="error")) as quiet,
            open_pool(
                adapter(),
                **options(name="loud", log_level="warning", log_categories={"worker": "debug"}),
            ) as loud,
            open_pool(adapter(), **options(name="plain")) as plain,
        ):
            for pool in (quiet, loud, plain):
                await pool.execute("chatter", {"text": pool.name})
                await pool.recycle_worker(f"{pool.name}_worker_1")

    def seen(pool_name: str) -> set[str]:
        return {e["event"] for e in logs if e.get("pool_name") == pool_name}

    assert seen("quiet") & {"quiet", "err: quiet", "recycling worker"} == set()
    assert {"loud", "err: loud"} <= seen("loud")
    assert "recycling worker" not in seen("loud")
    assert {"plain", "err: plain", "recycling worker"} <= seen("plain")
    assert all("pool_name" in e for e in logs if e.get("category") in ("pool", "worker"))


async def test_a_pool_given_no_level_ships_its_workers_info_records() -> None:
    """At the default level (info) a worker's stdlib info and warning records arrive, its
    debug record does not: the worker's root logger starts at the pool's level, not at the
    stdlib's own default (warning)."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options()) as pool:
            await pool.execute("stdlib", {"tag": "d"})

    events = [event for event, _ in by_logger(logs, "adapter.model")]
    assert "loaded d" in events
    assert "warning d" in events
    assert "debug d" not in events


async def test_workers_start_at_the_pools_level_for_the_worker_category() -> None:
    """log_categories["worker"] is the level a pool's workers start with, over log_level."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(
            adapter("Logs"), **options(log_level="warning", log_categories={"worker": "debug"})
        ) as pool:
            await pool.execute("stdlib", {"tag": "w"})

    assert by_logger(logs, "adapter.model")[0] == ("debug w", "debug")


async def test_the_traceback_of_a_worker_that_crashes_reaches_the_pool() -> None:
    """What a worker prints as it exits -- the traceback of a failure of its own loop -- is
    logged, though the worker no longer ships anything on its channel by then: as one
    record, the exception as its message and the whole traceback in ``traceback``."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter(), **options()) as pool:
            await pool.execute("break_loop")
            with pytest.raises(WorkerCrashedError):
                await pool.execute("identity", 1)
            with anyio.fail_after(10):
                while not output_lines(logs, "stderr", "RuntimeError: the worker's loop broke"):
                    await anyio.sleep(0.01)

    (record,) = output_lines_records(logs, "RuntimeError: the worker's loop broke")
    assert record["traceback"].startswith("Traceback (most recent call last):\n  File ")
    assert record["traceback"].endswith("RuntimeError: the worker's loop broke")
    assert not output_lines(logs, "stderr", "Traceback")
    assert not output_lines(logs, "stderr", "  File ")


async def test_a_traceback_a_tool_prints_is_one_record_with_its_chain() -> None:
    """traceback.print_exc() of a chained exception, in a tool: one record, with every
    link of the chain, and the lines printed after it are records of their own."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options()) as pool:
            await pool.execute("print_chained_traceback")

    (record,) = output_lines_records(logs, "RuntimeError: while handling")
    assert record["traceback"].count("Traceback (most recent call last):") == 2
    assert "During handling of the above exception" in record["traceback"]
    assert "KeyError: 'missing'" in record["traceback"]
    assert output_lines(logs, "stderr", "after") == ["after the traceback"]


async def test_the_level_none_silences_a_worker_without_breaking_it() -> None:
    """log_level="none", for the pool or one worker, starts and serves tools that log
    through the stdlib and structlog (structlog once failed with KeyError: 60), and no
    record of theirs arrives."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter("Logs"), **options(log_level="none")) as pool:
            await pool.execute("structured", {"tag": "quiet"})
            await pool.execute("stdlib", {"tag": "quiet"})
            (worker_id,) = pool.workers()
            await pool.set_worker_level(worker_id, "none")
            await pool.execute("structured", {"tag": "quiet"})
            assert pool.status().crashes == 0

    assert [e for e in logs if "quiet" in str(e.get("tag", ""))] == []

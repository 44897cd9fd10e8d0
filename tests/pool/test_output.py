"""Worker stdout and stderr become log records with the pool and worker ids."""

from __future__ import annotations

import anyio
import pytest
import structlog

from pypit import WorkerStartError
from pypit.pool import open_pool
from tests.pool.conftest import adapter, options

pytestmark = pytest.mark.anyio


async def test_worker_output_is_logged_line_by_line() -> None:
    """Each printed line is one record: stdout at info, stderr at warning."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter(), **options(name="talk")) as pool:
            pid = await pool.execute("pid")
            await pool.execute("chatter", {"text": "hello\nworld"})
            with anyio.fail_after(5):
                while not any(e["event"] == "err: hello" for e in logs):
                    await anyio.sleep(0.01)

    lines = {(e["event"], e["stream"], e["log_level"]) for e in logs if "stream" in e}
    assert ("hello", "stdout", "info") in lines
    assert ("world", "stdout", "info") in lines
    assert ("err: hello", "stderr", "warning") in lines
    record = next(e for e in logs if e["event"] == "hello")
    assert record["worker_id"] == "talk_worker_1"
    assert record["pool_name"] == "talk"
    assert record["worker_pid"] == pid
    assert record["category"] == "worker"


async def test_failed_start_logs_the_error_and_its_traceback() -> None:
    """A worker that cannot start is logged with its reason, error and traceback."""
    with structlog.testing.capture_logs() as logs, pytest.raises(WorkerStartError):
        async with open_pool(adapter("FailingSetup"), **options()):
            pass

    (failure,) = [e for e in logs if e["event"] == "worker failed to start"]
    assert failure["reason"] == "setup_failed"
    assert "the model file is missing" in failure["error"]
    assert "RuntimeError: the model file is missing" in failure["traceback"]
    assert failure["stderr"] == "looking for the model file"

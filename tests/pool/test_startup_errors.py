"""Errors a user meets first: a start that fails says what failed, once; misuse is typed."""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import psutil
import pytest
import structlog

from pypit import (
    AcknowledgeTimeoutError,
    PypitError,
    ToolKindError,
    UnknownWorkerError,
    WorkerCrashedError,
    WorkerStartError,
)
from pypit.pool import open_pool
from pypit.pool._launch import LocalLauncher
from tests.pool.conftest import adapter, options, wait_until

pytestmark = pytest.mark.anyio


async def test_a_failed_start_says_what_failed_in_the_error_and_once_in_the_log() -> None:
    """A typo in the adapter: WorkerStartError names each worker's failure, and the log has
    one record per failed start, with the traceback, and no line-by-line stderr."""
    with structlog.testing.capture_logs() as logs, pytest.raises(WorkerStartError) as info:
        async with open_pool("tests.no_such_module:Model", **options(size=2)):
            pass

    error = info.value
    assert set(error.failures) == {"default_worker_1", "default_worker_2"}
    for failure in error.failures.values():
        assert failure.startswith("import_failed: ModuleNotFoundError")
        assert "tests.no_such_module" in failure
    assert "default_worker_2: import_failed: ModuleNotFoundError" in str(error)
    failed = [entry for entry in logs if entry["event"] == "worker failed to start"]
    assert len(failed) == 2
    assert all("Traceback (most recent call last)" in entry["traceback"] for entry in failed)
    assert [entry for entry in logs if entry.get("stream") == "stderr"] == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.values:Point", "is not a subclass of pypit.worker.Adapter"),
        ("tests.adapters:os", "is not a class"),
    ],
)
async def test_an_adapter_that_is_not_an_adapter_class_is_refused(spec: str, message: str) -> None:
    """A class that does not derive from Adapter (or something that is not a class) is not
    served: its start fails saying so, before anything of it runs."""
    with pytest.raises(WorkerStartError) as info:
        async with open_pool(spec, **options()):
            pass
    failure = info.value.failures["default_worker_1"]
    assert failure.startswith("import_failed: TypeError")
    assert message in failure


async def test_a_start_killed_by_a_signal_says_which() -> None:
    """A worker killed during setup() (the OOM killer, say) fails its start with the
    signal's name, as a crash does, not a negative exit code."""
    with pytest.raises(WorkerStartError) as info:
        async with open_pool("tests.adapters:KilledInSetup", **options()):
            pass
    assert info.value.failures["default_worker_1"] == "was killed by SIGKILL"


async def test_an_interpreter_that_cannot_run_is_a_logged_failure() -> None:
    """python= a path that does not exist: the error and the log say exec_failed."""
    with structlog.testing.capture_logs() as logs, pytest.raises(WorkerStartError) as info:
        async with open_pool(adapter(), **options(python="/nonexistent/python")):
            pass

    assert info.value.failures["default_worker_1"].startswith("exec_failed: ")
    assert "No such file" in str(info.value)
    failed = [entry for entry in logs if entry["event"] == "worker failed to start"]
    assert [entry["reason"] for entry in failed] == ["exec_failed"]


async def test_closing_after_a_crash_is_not_reported_as_a_failure() -> None:
    """A pool closed while a replacement starts logs no error and no warning about it."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter(), **options()) as pool:
            with pytest.raises(WorkerCrashedError):
                await pool.execute("die")

    troubles = [
        entry
        for entry in logs
        if entry["log_level"] in ("warning", "error") and entry.get("stream") is None
    ]
    assert [entry["event"] for entry in troubles] == ["worker terminated unexpectedly; restarting"]


async def test_misuse_of_the_pool_raises_pypit_errors_that_are_the_fitting_builtins() -> None:
    """Unknown worker ids, a stream tool called with execute, workers that do not
    acknowledge new settings: each is a PypitError and the builtin one would catch."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(UnknownWorkerError, match="has no worker 'nope'") as unknown:
            await pool.set_worker_level("nope", "debug")
        assert isinstance(unknown.value, LookupError)
        with pytest.raises(UnknownWorkerError, match="no live worker 'nope'"):
            await pool.recycle_worker("nope")
        with pytest.raises(ToolKindError, match=r"'count' is a stream; use pool\.stream") as kind:
            await pool.execute("count", {"n": 1})
        assert isinstance(kind.value, TypeError)

        (pid,) = pool.workers().values()
        os.kill(pid, signal.SIGSTOP)
        try:
            # The signal is delivered a moment later: a worker still running would ack.
            await wait_until(
                lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, "the stop"
            )
            with pytest.raises(AcknowledgeTimeoutError, match="default_worker_1") as late:
                await pool.configure_telemetry(sampling_rate=0.5, timeout=0.3)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert isinstance(late.value, TimeoutError)
        assert isinstance(late.value, PypitError)
        with anyio.fail_after(10):
            await pool.configure_telemetry(sampling_rate=1.0)


async def test_a_worker_that_greets_before_its_launch_returns_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a busy loop a worker may connect and greet before the launch that started it
    returns to the pool: its peer is checked once the pool knows its pid, and it serves."""
    original = LocalLauncher.launch

    async def slow_launch(self: LocalLauncher, *args: Any, **kwargs: Any) -> Any:
        process = await original(self, *args, **kwargs)
        await anyio.sleep(1.0)  # the worker greets meanwhile
        return process

    monkeypatch.setattr(LocalLauncher, "launch", slow_launch)
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter(), **options()) as pool:
            assert await pool.execute("identity", 5) == 5
    assert not [e for e in logs if "refused" in e["event"]]

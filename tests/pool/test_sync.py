"""The blocking facade: a pool for synchronous code, safe from many threads."""

from __future__ import annotations

import threading

import pytest

from pypit import ToolError, telemetry
from pypit.pool import start_pool
from tests.pool.conftest import adapter, options


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_blocking_execute_and_stream(backend: str) -> None:
    """execute and stream block and return plain values; errors are raised as in async code."""
    with start_pool(adapter(), backend=backend, **options()) as pool:
        assert pool.execute("add", {"a": 1, "b": 2}) == 3
        assert list(pool.stream("count", {"n": 4})) == [1, 2, 3, 4]
        with pytest.raises(ToolError, match="boom"):
            pool.execute("fail")
        assert pool.status().completed == 2
        assert pool.name == "default"
        assert "echo" in pool.tools()


def test_many_threads_call_at_once() -> None:
    """Sixteen threads share one pool; every result reaches its own caller."""
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    with start_pool(adapter(), **options(size=2)) as pool:

        def work(thread: int) -> None:
            try:
                for i in range(25):
                    results[thread, i] = pool.execute("identity", [thread, i])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert errors == []
    assert results == {(t, i): [t, i] for t in range(16) for i in range(25)}


def test_closing_a_stream_early_cancels_it() -> None:
    """Closing the generator cancels the stream in the worker; the pool serves on."""
    with (
        telemetry.capture(("pypit", "rpc", "stream", "closed")) as seen,
        start_pool(adapter(), **options()) as pool,
    ):
        chunks = pool.stream("count", {"n": 1000, "delay": 0.01})
        assert [next(chunks), next(chunks)] == [1, 2]
        chunks.close()
        assert pool.execute("identity", 9, timeout=5) == 9

    assert [e.metadata["reason"] for e in seen] == ["cancelled"]


def test_status_events_from_the_loop_thread() -> None:
    """emit_status runs on the pool's loop; handlers see it."""
    with telemetry.capture(("pypit", "pool", "status")) as seen:
        with start_pool(adapter(), **options()) as pool:
            pool.emit_status()
            pids = pool.workers()
        seen.wait_sync(("pypit", "pool", "status"))

    assert list(pids) == ["default_worker_1"]
    assert seen.events[0].measurements["total_workers"] == 1


def test_blocking_control_methods() -> None:
    """The blocking pool controls telemetry, log levels, recycling and sessions too."""
    stop = ("pypit", "python", "tool", "execution", "stop")
    with (
        telemetry.capture(stop) as seen,
        start_pool(adapter("Instrumented"), **options()) as pool,
    ):
        pool.configure_telemetry(enabled=False)
        pool.execute("seed_emit")
        pool.configure_telemetry(enabled=True)
        pool.execute("seed_emit")
        pool.set_worker_level("default_worker_1", "debug")
        pool.reset_worker_level("default_worker_1")
        old = pool.execute("pid", session_id="s")
        pool.recycle_worker("default_worker_1")
        new = pool.execute("pid", session_id="s")
        info = pool.session("s")
        seen.wait_sync(stop)

    assert len(seen) == 1
    assert old != new
    assert info is not None
    assert (info.worker_pid, info.rehomed) == (new, 1)

"""Helpers for the tests that run pools (the no-leftover check is in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import psutil
import pytest

from pypit import telemetry
from pypit.pool import Pool
from pypit.telemetry import CapturedEvent

# The Python class of each type the catalog writes (docs/events.md shows them).
CATALOG_TYPES: dict[str, type] = {
    "str": str,
    "int": int,
    "bool": bool,
    "Any": object,
    "BaseException": BaseException,
    "Exception": Exception,
    "TracebackType": TracebackType,
    "tuple[str, ...]": tuple,
}


def assert_catalog_shape(event: CapturedEvent) -> None:
    """Exactly the catalog's keys, numeric measurements, metadata of the catalog's types,
    None only where the catalog allows."""
    spec = telemetry.catalog_event(event.event)
    assert set(event.measurements) == spec.measurement_keys, event.event
    assert set(event.metadata) == spec.metadata_keys, event.event
    for key, value in event.measurements.items():
        assert isinstance(value, int | float), (event.event, key)
        assert not isinstance(value, bool), (event.event, key)
    types = spec.metadata_types
    for key, value in event.metadata.items():
        if key not in spec.nullable:
            assert value is not None, (event.event, key)
        if value is not None:
            expected = CATALOG_TYPES[types[key]]
            assert isinstance(value, expected), (event.event, key, value)
            assert expected is not int or not isinstance(value, bool), (event.event, key)


def adapter(name: str = "Echo") -> str:
    return f"tests.adapters:{name}"


def options(**overrides: Any) -> dict[str, Any]:
    """Small, quick pools for tests."""
    base: dict[str, Any] = {"size": 1, "status_interval": 0, "stop_grace": 1.0}
    base.update(overrides)
    return base


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail, naming ``what``, after ``timeout`` seconds."""
    with anyio.move_on_after(timeout):
        while not condition():
            await anyio.sleep(0.002)
        return
    pytest.fail(f"gave up after {timeout}s waiting for {what}")


def accepted(pool: Pool) -> int:
    """Calls accepted and not finished: running or waiting, wherever they wait."""
    status = pool.status()
    return status.in_flight + status.queue_depth


# A worker that learned that its calls are quick prefetches; the queue's limits must hold
# either way. "warm" runs a test on such a worker.
WARM = pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])


def warmth(warm: bool) -> dict[str, Any]:
    """Options for a warm pool: ``prefetch_below=0`` counts every call as quick, so that the
    workers prefetch after :func:`warm_up` whatever this machine's speed, as they do at the
    default threshold once they served quick calls."""
    return {"prefetch_below": 0} if warm else {}


async def warm_up(pool: Pool, warm: bool, session_id: str | None = None) -> None:
    """With ``warm``, teach the workers that calls are quick, as a busy service would."""
    if warm:
        for _ in range(4):
            await pool.execute("identity", 0, session_id=session_id)


@asynccontextmanager
async def opened_at_exit(gate: Path) -> AsyncIterator[None]:
    """Create ``gate`` (which ``hold`` calls wait for) when the block ends, however it ends,
    so that a failing test does not leave a worker held until the pool's shutdown timeout.

    Enter it inside the task group whose calls wait for it: it opens before the group
    waits for them."""
    try:
        yield
    finally:
        gate.touch()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for every Ray test of the session (2 CPUs, no dashboard, its files in
    a temporary directory), stopped at the end; then every process it started must be gone,
    its agents included."""
    import ray

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    # Short: Ray's Unix sockets live in it, and a socket's path has a length limit.
    directory = tempfile.mkdtemp(prefix="pypit-ray-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=directory,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        started = [p for p in me.children(recursive=True) if p.pid not in before]
        ray.shutdown()
        _, alive = psutil.wait_procs(started, timeout=10.0)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        shutil.rmtree(directory, ignore_errors=True)
        assert not alive, f"Ray processes left after shutdown: {[p.pid for p in alive]}"

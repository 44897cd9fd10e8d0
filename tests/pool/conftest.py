"""Helpers for the tests that run pools (the no-leftover check is in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
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
def ray_session() -> Iterator[Any]:
    """One local Ray cluster for every Ray test of the session: a head node of 2 CPUs and 2
    ``model`` (a custom resource), no dashboard, its files in a temporary directory, which
    the tests' pools join; a test adds the nodes it needs (``ray_node``). Stopped at the
    end; then every process it started must be gone, its agents included."""
    import ray
    from ray.cluster_utils import Cluster

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    # Short: Ray's Unix sockets live in it, and a socket's path has a length limit.
    directory = tempfile.mkdtemp(prefix="pypit-ray-")
    # A cluster writes its address in Ray's temporary directory, where any ``ray.init()``
    # of this machine would find it and join it: it goes in this session's directory.
    os.mkdir(os.path.join(directory, "ray"))
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = directory
    cluster: Any = None  # Any: ray.cluster_utils has no annotations.
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2,
                "resources": {"model": 2},
                "include_dashboard": False,
                "temp_dir": directory,
                # A node that dies is declared dead after about 6-7 s instead of Ray's
                # 15, so that the test of a lost node gets its bundle moved, and its
                # worker replaced, sooner; still well after the pool saw the node stop
                # answering (about 2 s, more on a loaded machine: at 3-4 s, Ray's verdict
                # was seen to come first, and the worker to die as "killed").
                "_system_config": {
                    "health_check_period_ms": 1000,
                    "health_check_failure_threshold": 6,
                },
            },
        )
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        yield cluster
    finally:
        started = [p for p in me.children(recursive=True) if p.pid not in before]
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        _, alive = psutil.wait_procs(started, timeout=10.0)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if saved is None:
            del os.environ["RAY_TMPDIR"]
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(directory, ignore_errors=True)
        assert not alive, f"Ray processes left after shutdown: {[p.pid for p in alive]}"


class RayNode:
    """A node a test added to the session's cluster: 1 CPU and 1 ``model``."""

    def __init__(self, cluster: Any) -> None:
        self._cluster = cluster
        self._node = cluster.add_node(num_cpus=1, resources={"model": 1})
        self.node_id: str = self._node.node_id
        self._processes: list[psutil.Process] = []

    def remove(self) -> None:
        """Kill the node's processes at once, as when its machine dies; what ran on it
        (Ray's workers, the actors, their worker processes) is left to notice."""
        if self._node not in self._cluster.worker_nodes:
            return
        for infos in self._node.all_processes.values():
            for info in infos:
                with contextlib.suppress(psutil.Error):
                    process = psutil.Process(info.process.pid)
                    self._processes += [process, *process.children(recursive=True)]
        self._cluster.remove_node(self._node, allow_graceful=False)

    def left_behind(self) -> list[int]:
        """The pids of the node's processes still alive 10 s after :meth:`remove`."""
        _, alive = psutil.wait_procs(self._processes, timeout=10.0)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        return [p.pid for p in alive]


@pytest.fixture
def ray_node(ray_session: Any) -> Iterator[RayNode]:
    """A second node of the session's cluster for this test; removed at the end (if the
    test did not), and then every process of it must be gone."""
    node = RayNode(ray_session)
    try:
        yield node
    finally:
        node.remove()
        left = node.left_behind()
        assert not left, f"processes of the removed node left behind: {left}"

"""The pool's contract with its workers on Ray, on asyncio and trio: one local Ray cluster
for the session (see ``ray_session``), each worker an actor running the ordinary worker
process; a test that needs a second node adds one (``ray_node``) and may remove it."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import anyio
import pytest
import ray

from pypit import ToolError, WorkerCrashedError, WorkerStartError, WorkerTimeoutError, telemetry
from pypit.pool import Pool, RayWorkers, open_pool
from pypit.pool._ray import RayConnection, RayProcess
from pypit.pool._ray_host import OUTPUT_REPLY, WorkerHost
from tests.pool.conftest import (
    RayNode,
    adapter,
    assert_catalog_shape,
    opened_at_exit,
    options,
    wait_until,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session")]

POOL = ("pypit", "pool")
RPC = ("pypit", "rpc")
PYTHON = ("pypit", "python")


def on_ray(**overrides: Any) -> dict[str, Any]:
    """The tests' small pools, their workers on Ray at the default placement."""
    return options(ray=RayWorkers(), **overrides)


def ray_process(pool: Pool, worker_id: str | None = None) -> RayProcess:
    """The Ray side of a worker of ``pool`` (its only one, or ``worker_id``)."""
    handles = [
        h for h in pool._supervisor.handles() if h is not None and worker_id in (None, h.worker_id)
    ]
    assert len(handles) == 1
    process = handles[0].process
    assert isinstance(process, RayProcess)
    return process


async def test_calls_maps_streams_errors_and_events_as_with_local_workers() -> None:
    """Calls, maps, streams and tool errors come back as from a local worker, with the catalog's
    events (exact keys), worker telemetry and the worker's output; ``node`` is the Ray
    node, ``mode`` is ``ray_actor``, and the worker runs on its node with its own pid."""
    names = [spec.name for spec in telemetry.CATALOG if spec.name[0] == "pypit"]
    names.append((*PYTHON, "inference", "stop"))
    instrumented = on_ray(name="rayev", telemetry_allow=["inference.*"])
    with telemetry.capture(*names) as seen:
        async with open_pool(adapter("Instrumented"), **instrumented) as pool:
            (pid,) = pool.workers().values()
            assert await pool.execute("pid") == pid
            assert pid != os.getpid()
            assert await pool.execute("inference") == "done"
            with pytest.raises(ToolError) as raised:
                await pool.execute("inference", {"fail": True})
            assert raised.value.remote_type.endswith("ValueError")
            node = ray_process(pool).node
    async with open_pool(adapter(), **on_ray()) as pool:
        assert await pool.execute("echo", {"a": [1, 2.5, "x"]}) == {"a": [1, 2.5, "x"]}
        async with pool.stream("count", {"n": 5}) as chunks:
            assert [chunk async for chunk in chunks] == [1, 2, 3, 4, 5]
        async with pool.stream("async_count", {"n": 3}) as chunks:
            assert [chunk async for chunk in chunks] == [1, 2, 3]
        async with pool.map("identity", range(7), chunksize=2) as results:
            assert [result async for result in results] == list(range(7))
        async with pool.map_unordered("identity", range(7)) as results:
            assert sorted([result async for result in results]) == list(range(7))

    for event in seen:
        if event.event[1] != "python":
            assert_catalog_shape(event)
    assert node == ray.get_runtime_context().get_node_id()
    spawned = seen.named(*POOL, "worker", "spawned")[0]
    assert spawned.metadata["mode"] == "ray_actor"
    assert spawned.metadata["node"] == node
    assert spawned.metadata["worker_pid"] == pid
    terminated = seen.named(*POOL, "worker", "terminated")[0]
    assert terminated.metadata["node"] == node
    assert (terminated.metadata["reason"], terminated.metadata["exit_code"]) == ("shutdown", 0)
    assert len(seen.named(*RPC, "call", "exception")) == 1
    # The worker's own events, re-emitted in the parent with the worker's pid on its node.
    inference = seen.named(*PYTHON, "inference", "stop")
    assert inference
    assert {e.metadata["python_pid"] for e in inference} == {pid}
    assert {e.metadata["worker_id"] for e in inference} == {"rayev_worker_1"}


async def test_deadlines_cancel_async_tools_and_replace_workers_that_do_not_stop(
    tmp_path: Path,
) -> None:
    """Past its deadline an async tool is cancelled in its worker, which serves on, and so
    is a stream whose next chunk is late (its generator ends); a sync tool that does not
    return within ``cancel_grace`` gets its worker killed and replaced."""
    async with open_pool(adapter(), **on_ray(cancel_grace=0.5)) as pool:
        (pid,) = pool.workers().values()
        slow = tmp_path / "slow"
        blobs = {"n": 3, "path": str(slow), "delay": 0.5}
        async with pool.stream("blobs", blobs, timeout=0.1) as chunks:
            with pytest.raises(WorkerTimeoutError):
                await anext(chunks)
        ended = lambda: slow.exists() and "closed" in slow.read_text().split()  # noqa: E731
        await wait_until(ended, "the generator's end")
        assert await pool.execute("pid") == pid
        with pytest.raises(WorkerTimeoutError):
            await pool.execute("async_sleep", {"seconds": 30}, timeout=0.5)
        assert await pool.execute("pid") == pid
        with pytest.raises(WorkerTimeoutError):
            await pool.execute("sleep", {"seconds": 30}, timeout=0.5)
        await wait_until(lambda: pid not in pool.workers().values(), "the replacement")
        assert await pool.execute("identity", 7) == 7
        assert pool.status().timeouts == 3


async def test_a_worker_killed_on_its_node_fails_its_calls_and_is_replaced(tmp_path: Path) -> None:
    """SIGKILL to the worker's pid on its node: the call in flight fails with
    ``WorkerCrashedError`` (the signal, as the actor saw the exit), ``terminated`` says
    ``killed`` with the exit status, and a new worker takes the slot."""
    gate = tmp_path / "gate"
    with telemetry.capture((*POOL, "worker", "terminated"), (*POOL, "worker", "restarted")) as seen:
        async with open_pool(adapter(), **on_ray()) as pool:
            (pid,) = pool.workers().values()
            async with anyio.create_task_group() as tasks, opened_at_exit(gate):

                async def doomed() -> None:
                    with pytest.raises(WorkerCrashedError) as crashed:
                        await pool.execute("hold", {"gate": str(gate)})
                    assert crashed.value.signal == signal.SIGKILL

                tasks.start_soon(doomed)
                await wait_until(lambda: pool.status().in_flight == 1, "the call to start")
                os.kill(pid, signal.SIGKILL)
            await seen.wait((*POOL, "worker", "restarted"))
            assert await pool.execute("identity", 1) == 1
            assert pid not in pool.workers().values()

    killed = seen.named(*POOL, "worker", "terminated")[0]
    assert killed.metadata["reason"] == "killed"
    assert killed.metadata["exit_code"] == -signal.SIGKILL
    (restarted,) = seen.named(*POOL, "worker", "restarted")
    assert restarted.metadata["previous_pid"] == pid


async def test_a_killed_actor_takes_its_worker_along_and_is_replaced(tmp_path: Path) -> None:
    """``ray.kill`` of a worker's actor: the worker dies with it (its guard watches the
    actor's process), the call in flight fails with ``WorkerCrashedError``, ``terminated``
    says ``killed`` with no exit status (Ray has none), and the slot is filled again."""
    gate = tmp_path / "gate"
    with telemetry.capture((*POOL, "worker", "terminated"), (*POOL, "worker", "restarted")) as seen:
        async with open_pool(adapter(), **on_ray()) as pool:
            (pid,) = pool.workers().values()
            async with anyio.create_task_group() as tasks, opened_at_exit(gate):

                async def doomed() -> None:
                    with pytest.raises(WorkerCrashedError, match="Ray actor died"):
                        await pool.execute("hold", {"gate": str(gate)})

                tasks.start_soon(doomed)
                await wait_until(lambda: pool.status().in_flight == 1, "the call to start")
                ray.kill(ray_process(pool)._actor, no_restart=True)
                # ray.kill returns before the actor is dead: the gate opens (as the block
                # ends) only once the pool saw the worker end, or the call could finish.
                await seen.wait((*POOL, "worker", "terminated"))
            await seen.wait((*POOL, "worker", "restarted"))
            assert await pool.execute("identity", 2) == 2
            await wait_until(lambda: not _alive(pid), "the worker to die with its actor")

    killed = seen.named(*POOL, "worker", "terminated")[0]
    assert_catalog_shape(killed)
    assert (killed.metadata["reason"], killed.metadata["exit_code"]) == ("killed", None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _Unanswered:
    """Stands in for a worker's actor handle while its node does not answer: each call
    fails as Ray fails it then, with ``ActorUnavailableError``."""

    def __getattr__(self, method: str) -> _Unanswered:
        return self

    def remote(self, *args: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_exception(ray.exceptions.ActorUnavailableError("no answer", None))
        return types.SimpleNamespace(future=lambda: future)


async def test_a_node_that_does_not_answer_for_less_than_reconnect_window_loses_nothing(
    tmp_path: Path,
) -> None:
    """Ray reports the worker's actor unavailable for a while, shorter than
    ``reconnect_window``: the pool retries, the heartbeats unanswered meanwhile do not
    count, and once the actor answers again the call in flight finishes on the same
    worker; no ``connection.lost``, no ``terminated``."""
    gate = tmp_path / "gate"
    events = [(*POOL, "worker", "terminated"), (*RPC, "connection", "lost")]
    # A quick heartbeat: if the ones unanswered while the actor is silent counted, the
    # worker would be killed half a second into the silence.
    quick = on_ray(heartbeat_interval=0.2)
    with telemetry.capture(*events) as seen:
        async with open_pool(adapter(), **quick) as pool:
            (pid,) = pool.workers().values()
            process = ray_process(pool)
            actor = process._actor
            async with anyio.create_task_group() as tasks, opened_at_exit(gate):

                async def held() -> None:
                    assert await pool.execute("hold", {"gate": str(gate), "tag": "ok"}) == "ok"

                tasks.start_soon(held)
                await wait_until(lambda: pool.status().in_flight == 1, "the call to start")
                process._actor = _Unanswered()
                await wait_until(lambda: not process.reachable, "the actor to be unavailable")
                await anyio.sleep(1.0)
                assert seen.events == []
                process._actor = actor
            assert process.reachable
            assert pool.workers() == {"default_worker_1": pid}
            assert await pool.execute("pid") == pid
    assert [e.metadata["reason"] for e in seen.named(*POOL, "worker", "terminated")] == ["shutdown"]


async def test_recycling_and_affinity_work_through_the_actors() -> None:
    """``max_requests`` recycles a worker (a new actor, a new pid); a session stays on the
    worker that served it; the ``runtime_env`` reaches every worker, the recycled one's
    replacement too."""
    variables = {"env_vars": {"PYPIT_RUNTIME_ENV": "set"}}
    placement = RayWorkers(runtime_env=variables)
    with telemetry.capture((*POOL, "worker", "recycled")) as seen:
        async with open_pool(adapter(), **options(size=2, max_requests=3, ray=placement)) as pool:
            assert await pool.execute("env", "PYPIT_RUNTIME_ENV", session_id="s") == "set"
            first = await pool.execute("session_state", {"keep": "a"}, session_id="s")
            second = await pool.execute("session_state", session_id="s")
            assert second == ["s", "a", first[2]]
            await pool.execute("identity", 0, session_id="s")
            await seen.wait((*POOL, "worker", "recycled"))
            await wait_until(lambda: first[2] not in pool.workers().values(), "the recycling")
            await wait_until(lambda: pool.status().available_workers == 2, "the replacement")
            assert await pool.execute("identity", 3) == 3
            for _ in range(4):
                assert await pool.execute("env", "PYPIT_RUNTIME_ENV") == "set"
    assert seen.named(*POOL, "worker", "recycled")[0].metadata["reason"] == "max_requests"


async def test_output_written_faster_than_it_is_logged_waits_in_the_worker() -> None:
    """A worker that writes to its stdout faster than the pool logs it is held back, as a
    local worker is by its pipe: what came and was not logged yet stays under 2 MiB (one
    MiB behind, and one reply of at most one MiB) while 8 MiB go by, and every line is
    logged."""
    logged: list[str] = []

    class Slow:
        """The worker's logger, taking a millisecond a line."""

        def info(self, line: str, **context: Any) -> None:
            time.sleep(0.001)
            logged.append(line)

        warning = info

    async with open_pool(adapter(), **on_ray()) as pool:
        (handle,) = [h for h in pool._supervisor.handles() if h is not None]
        handle.log = Slow()  # type: ignore[assignment]
        process = ray_process(pool)
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, process._outputs[0].unread)
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch)
            assert await pool.execute("write_fd", {"n": 2048, "size": 4096}, timeout=60) == 2**23
            await wait_until(lambda: len(logged) == 2048, "every line logged", timeout=60)
            tasks.cancel_scope.cancel()

    assert most <= 2 * 2**20, most
    assert set(logged) == {"x" * 4095}


async def test_the_actor_gives_output_only_when_asked_and_a_mebibyte_at_a_time() -> None:
    """The relay's side of that: stdout and stderr come only when the pool asks for them,
    at most OUTPUT_REPLY bytes of each a reply, and the worker is said to have ended only
    once all of its output was taken; the pool asks for a pipe's output only while less
    than a MiB of it waits to be logged."""
    host = WorkerHost({}, "token", 2**20)
    host._tapes[1].append(b"o" * (OUTPUT_REPLY + 10))
    host._tapes[2].append(b"e" * 10)
    host._ended = True
    channel, stdout, stderr, ended, _, _ = await host.receive((0, 0, 0), 0.0, (False, True))
    assert (channel, stdout, stderr, ended) == (b"", b"", b"e" * 10, False)
    channel, stdout, stderr, ended, _, _ = await host.receive((0, 0, 10), 0.0, (True, True))
    assert (len(stdout), stderr, ended) == (OUTPUT_REPLY, b"", False)
    reply = await host.receive((0, OUTPUT_REPLY, 10), 0.0, (True, True))
    assert reply[1:4] == (b"o" * 10, b"", True)

    asked: list[tuple[bool, ...]] = []

    class Actor:
        class receive:  # an actor method's handle
            @staticmethod
            def remote(offsets: Any, timeout: float, wants: tuple[bool, ...]) -> None:
                asked.append(wants)

    connection = RayConnection(lambda connection, payload: True, 2**20, 1)
    process = RayProcess(Actor(), 1, "node", connection, lambda callback: None, 1.0)
    process._receive((0, 0, 0), False)
    process._outputs[0].unread = 2**20
    process._receive((0, 0, 0), False)
    process._outputs[1].unread = 2**20
    process._outputs[0].unread = 2**20 - 1
    process._receive((0, 0, 0), False)
    assert asked == [(True, True), (False, True), (True, False)]
    process._end(0)
    for output in process._outputs:
        assert [data async for data in output] == []


async def test_a_worker_that_cannot_be_placed_fails_its_start_saying_so() -> None:
    """No node has a GPU: the actor is never placed, and after ``startup_timeout`` (short
    here, to keep the test quick) the start fails with ``spawn_failed`` reason
    ``not_placed`` and an error that says it was never placed."""
    placement = RayWorkers(num_gpus=1)
    with telemetry.capture((*POOL, "worker", "spawn_failed")) as seen:
        with pytest.raises(WorkerStartError, match="never placed"):
            async with open_pool(adapter(), **options(ray=placement, startup_timeout=1)):
                pass
    failed = seen.named(*POOL, "worker", "spawn_failed")[0]
    assert_catalog_shape(failed)
    assert (failed.metadata["reason"], failed.metadata["exit_code"]) == ("not_placed", None)


async def test_an_adapter_that_fails_to_import_fails_the_start_with_its_error() -> None:
    """The worker's own start failure travels back through the actor: ``import_failed``,
    with the worker's error."""
    with pytest.raises(WorkerStartError, match="import_failed"):
        async with open_pool("tests.no_such_module:Nothing", **on_ray()):
            pass


async def test_pools_are_placed_as_asked_and_a_lost_node_s_worker_is_replaced(
    ray_node: RayNode, tmp_path: Path
) -> None:
    """Two workers, each holding a ``model`` (a custom resource): ``pack`` puts them on one
    node (the head, the only one with room for both), ``spread`` on the two nodes. The
    second node dies with a call in flight on each worker: the call on it
    fails with ``WorkerCrashedError`` once ``reconnect_window`` passed, ``terminated`` says
    ``connection_lost`` and names that node, and a new worker starts on the node that is
    left (once Ray declared the other dead and moved its bundle); the call on the
    surviving worker finishes. The replacement's start is not reported failed."""
    head = ray.get_runtime_context().get_node_id()
    packed = RayWorkers(resources={"model": 1})
    async with open_pool(adapter(), **options(size=2, ray=packed)) as pool:
        assert [ray_process(pool, w).node for w in pool.workers()] == [head, head]
    placement = RayWorkers(resources={"model": 1}, strategy="spread")
    gate = tmp_path / "gate"
    names = ("terminated", "spawned", "spawn_failed", "restarted")
    events = [(*POOL, "worker", name) for name in names]
    with telemetry.capture(*events, (*RPC, "connection", "lost")) as seen:
        # A short reconnect_window: the pool gives the worker up well before Ray, whose
        # health checks take about 5 s here, declares the node dead (then the actor is
        # dead, and the reason would be ``killed``).
        spread = options(size=2, ray=placement, reconnect_window=0.2)
        async with open_pool(adapter(), **spread) as pool:
            nodes = {w: ray_process(pool, w).node for w in pool.workers()}
            assert sorted(nodes.values()) == sorted([head, ray_node.node_id])
            (lost,) = [w for w, node in nodes.items() if node == ray_node.node_id]
            outcomes: list[object] = []
            async with anyio.create_task_group() as tasks, opened_at_exit(gate):

                async def held() -> None:
                    try:
                        outcomes.append(
                            await pool.execute("hold", {"gate": str(gate), "tag": "ok"})
                        )
                    except WorkerCrashedError as exc:
                        outcomes.append(exc)

                tasks.start_soon(held)
                tasks.start_soon(held)
                await wait_until(lambda: pool.status().in_flight == 2, "both calls to start")
                ray_node.remove()
                await seen.wait((*POOL, "worker", "terminated"), timeout=30)
            await seen.wait((*POOL, "worker", "restarted"), timeout=30)
            assert ray_process(pool, lost).node == head
            assert await pool.execute("identity", 4) == 4

    assert "ok" in outcomes
    (crashed,) = [o for o in outcomes if isinstance(o, WorkerCrashedError)]
    assert crashed.worker_id == lost
    assert "unreachable" in str(crashed)
    terminated = seen.named(*POOL, "worker", "terminated")[0]
    assert_catalog_shape(terminated)
    assert terminated.metadata["worker_id"] == lost
    assert terminated.metadata["node"] == ray_node.node_id
    assert (terminated.metadata["reason"], terminated.metadata["exit_code"]) == (
        "connection_lost",
        None,
    )
    connection_lost = seen.named(*RPC, "connection", "lost")[0]
    assert (connection_lost.metadata["worker_id"], connection_lost.metadata["reason"]) == (
        lost,
        "connection_lost",
    )
    replacement = seen.named(*POOL, "worker", "spawned")[2]
    assert (replacement.metadata["worker_id"], replacement.metadata["node"]) == (lost, head)
    (restarted,) = seen.named(*POOL, "worker", "restarted")
    assert restarted.metadata["reason"] == "connection_lost"
    # The replacement waited for the bundle Ray moved; its start did not fail meanwhile.
    assert seen.named(*POOL, "worker", "spawn_failed") == []


POOL_STARTS_RAY = """
import glob, os, sys, tempfile, anyio, psutil, ray
from pypit.pool import RayWorkers, open_pool

async def main() -> None:
    pattern = os.path.join(tempfile.gettempdir(), "pypit-ray-*")
    before = set(glob.glob(pattern))
    async with open_pool("tests.adapters:Echo", size=1, ray=RayWorkers()) as pool:
        assert ray.is_initialized()
        assert ray.get_runtime_context().gcs_address != os.environ["RAY_ADDRESS"]
        assert await pool.execute("add", {"a": 1, "b": 2}) == 3
        assert len(set(glob.glob(pattern)) - before) == 1
    assert not ray.is_initialized()
    assert set(glob.glob(pattern)) == before
    psutil.wait_procs(psutil.Process().children(recursive=True), timeout=10)
    left = [p.cmdline()[:2] for p in psutil.Process().children(recursive=True)]
    assert not left, left
    print("ok")

anyio.run(main, backend=sys.argv[1])
"""


def test_a_pool_without_an_address_starts_a_ray_of_its_own_and_stops_it() -> None:
    """``RayWorkers()`` without an address starts a Ray on this machine for the pool alone,
    even where a running one (the session's) is named by ``RAY_ADDRESS``, and stops it
    with the pool: no process of it is left. In a process of its own (Ray allows one
    ``ray.init`` a process), on trio: the start is the same on both backends, and it
    costs a Ray start (a few seconds)."""
    # RAY_ADDRESS names the session's cluster, which a plain ray.init() would join.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    done = subprocess.run(
        [sys.executable, "-c", POOL_STARTS_RAY, "trio"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


async def test_a_runtime_env_ray_refuses_is_refused_before_any_worker_starts() -> None:
    """A ``runtime_env`` that Ray would refuse when the first actor is made is the pool's
    ``TypeError``/``ValueError`` naming ``runtime_env``, before any worker starts."""
    with telemetry.capture((*POOL, "worker", "spawn_started")) as seen:
        with pytest.raises(TypeError, match=r"runtime_env: runtime_env\['pip'\] must be"):
            async with open_pool(adapter(), **options(ray=RayWorkers(runtime_env={"pip": 5}))):
                pass
    assert seen.events == []


JOINS_NOTHING = """
import sys, time, anyio
from pypit import WorkerStartError
from pypit.pool import RayWorkers, open_pool

NOTHING = RayWorkers(address="127.0.0.1:1")  # no Ray cluster listens there

async def main() -> None:
    try:
        async with open_pool("tests.adapters:Echo", size=1, startup_timeout=1, ray=NOTHING):
            raise AssertionError("a pool opened on no cluster")
    except WorkerStartError as exc:
        assert "no Ray cluster answered at '127.0.0.1:1'" in str(exc), exc
    with anyio.move_on_after(1) as scope:
        async with open_pool("tests.adapters:Echo", size=1, ray=NOTHING):
            raise AssertionError("a pool opened on no cluster")
    assert scope.cancelled_caught
    print("ok")

anyio.run(main, backend=sys.argv[1])
"""


def test_joining_a_cluster_that_does_not_answer_fails_within_startup_timeout() -> None:
    """An address where no Ray cluster answers fails the pool's start with
    ``WorkerStartError`` after ``startup_timeout``, and a cancellation of the caller ends
    the wait at once (Ray's connection retries without end); the process then exits, the
    abandoned connection attempt with it. In a process of its own: this one has joined
    the session's cluster already."""
    done = subprocess.run(
        [sys.executable, "-c", JOINS_NOTHING, "trio"],
        capture_output=True,
        text=True,
        timeout=60,  # a liveness bound: the process must exit, not wait for Ray
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")

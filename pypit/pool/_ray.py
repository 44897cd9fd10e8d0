"""Workers as Ray actors: the launcher of ``open_pool(..., ray=RayWorkers(...))``.

Each slot is one actor (:class:`~pypit.pool._ray_host.WorkerHost`) that runs the
ordinary worker process on its node; the pool's side of it is a
:class:`RayProcess`, whose channel (:class:`RayConnection`) is fed by one
long-poll per worker: ``receive`` returns as soon as the worker wrote anything,
so worker events and output come back ahead of the answer that follows them,
and between calls the poll is the heartbeat of the actor and the detector of
its death. The pool's frames go out in batches, one ``send`` in flight per
worker, coalescing whatever was queued meanwhile.

Ray's own restarts and retries are off (``max_restarts=0``,
``max_task_retries=0``): a restarted actor is a new worker the pool did not
start, and a retried call could run twice. The pool replaces the worker
itself, by its own restart policy.

Awaiting an ``ObjectRef`` works on asyncio only; its ``future()`` (a
``concurrent.futures.Future``) is resolved by Ray's thread, which wakes the
pool's loop through the loop's own thread-safe entry, on asyncio and trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import shutil
import signal
import tempfile
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio
import ray
import ray.exceptions
from anyio.streams.memory import MemoryObjectReceiveStream
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pypit._errors import WorkerStartError
from pypit.pool._channel import Connection, GreetingHandler
from pypit.pool._launch import LaunchError, WorkerProcess
from pypit.pool._ray_host import Reply, WorkerHost

if TYPE_CHECKING:
    from pypit.pool._config import PoolConfig, RayWorkers
    from pypit.pool._tasks import PoolTasks

_POLL: Final = 1.0
"""Seconds a ``receive`` waits in the actor for the worker to write something."""
_OUTPUT_BACKLOG: Final = 1024 * 1024
"""Bytes of a worker's stdout (or stderr) that came and were not logged yet, past which the
pool asks for no more of it (see ``_ray_host``)."""
_RETRY: Final = 0.1
"""Seconds between calls to an actor that Ray reports unavailable (its node does not
answer)."""

_NEVER_RAN: Final = "never ran"
"""What Ray's error says of an actor cancelled before it started, its node dead (Ray keeps
no other trace of it on the exception)."""

Wake = Callable[[Callable[[], None]], None]


def _check_runtime_env(runtime_env: Mapping[str, Any] | None) -> None:
    """``ValueError`` (or ``TypeError``) naming ``runtime_env`` for one Ray would refuse
    when the first actor is created, before any worker starts."""
    if runtime_env is None:
        return
    from ray.runtime_env import RuntimeEnv

    try:
        RuntimeEnv(**runtime_env)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"runtime_env: {exc}") from None


def _waker() -> Wake:
    """A function that runs a callback on the running event loop, from any thread."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        token = trio.lowlevel.current_trio_token()

        def wake_trio(callback: Callable[[], None]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(callback)

        return wake_trio

    def wake_asyncio(callback: Callable[[], None]) -> None:
        # The loop may be closed by the time a late reply comes: nobody waits for it then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback)

    return wake_asyncio


async def _result(ref: Any, wake: Wake) -> Any:
    """The value of ``ref``, awaited on either backend (Ray's exception if it failed)."""
    future = ref.future()
    if not future.done():
        done = anyio.Event()
        future.add_done_callback(lambda _: wake(done.set))
        await done.wait()
    return future.result()


class RayConnection(Connection):
    """The channel of one Ray worker: frames come from the long-poll, go by ``send``.

    The worker's first frame (its ``Hello``) goes to the pool's greeting handler, as on the
    pool's socket; the peer that may greet is the worker process the actor started, and
    the actor handle is the proof of that.
    """

    def __init__(self, on_greeting: GreetingHandler, max_frame_size: int, pid: int) -> None:
        super().__init__(on_greeting, max_frame_size)
        self._pid = pid
        self.wake = anyio.Event()

    def is_from(self, pid: int) -> bool:
        return pid == self._pid

    def send(self, frame: bytes, *, at_once: bool = False) -> None:
        # at_once does not apply: every batch is one actor call, and one is in flight at a
        # time; what is queued meanwhile leaves together in the next.
        if self._lost is None:
            self._outbox.append(frame)
            self.wake.set()

    def take(self) -> bytes:
        """Everything queued to the worker, at once."""
        data = b"".join(self._outbox)
        self._outbox.clear()
        return data

    def received(self, data: bytes) -> None:
        self._received(data)

    def lost(self, reason: str) -> None:
        self._closed(reason)

    def close(self) -> None:
        self._closed(self._lost or "closed")
        self._release()
        self.wake.set()


class _Output:
    """What the worker wrote to one of its pipes, as the actor returned it; read once.
    ``unread`` is what came and was not taken yet: past ``_OUTPUT_BACKLOG`` of it, the
    pool asks the actor for no more of that pipe."""

    def __init__(self, stream: MemoryObjectReceiveStream[bytes]) -> None:
        self._stream = stream
        self.unread = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async with self._stream:
            async for data in self._stream:
                self.unread -= len(data)
                yield data


class RayProcess:
    """A worker process on a Ray node, behind its actor."""

    mode = "ray_actor"

    def __init__(
        self,
        actor: Any,
        pid: int,
        node: str,
        connection: RayConnection,
        wake: Wake,
        reconnect_window: float,
    ) -> None:
        self.pid = pid
        self.node = node
        self._actor = actor
        self._wake = wake
        self._window = reconnect_window
        self._connection = connection
        self.connection: Connection | None = connection
        self._stdout_in, stdout = anyio.create_memory_object_stream[bytes](math.inf)
        self._stderr_in, stderr = anyio.create_memory_object_stream[bytes](math.inf)
        self._outputs = (_Output(stdout), _Output(stderr))
        self.stdout: AsyncIterable[bytes] | None = self._outputs[0]
        self.stderr: AsyncIterable[bytes] | None = self._outputs[1]
        self._returncode: int | None = None
        self._running = True
        self._killed = False
        self._ended = anyio.Event()
        self._rss = 0
        self.reachable = True

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def running(self) -> bool:
        return self._running

    async def wait(self) -> int | None:
        await self._ended.wait()
        return self._returncode

    def rss(self) -> int:
        return self._rss

    def signal_group(self, sig: int) -> None:
        """SIGKILL kills the actor (its worker goes with it: the worker's guard watches
        the actor's process); other signals go to the worker's group on its node. A worker
        that exited by itself leaves its actor, which SIGKILL ends too."""
        if sig == signal.SIGKILL:
            if not self._killed:
                self._killed = True
                ray.kill(self._actor, no_restart=True)
            self._end(self._returncode)
        elif self._running:
            self._actor.signal_group.remote(sig)

    def _end(self, returncode: int | None) -> None:
        if self._running:
            self._running = False
            self._returncode = returncode
            self._stdout_in.close()
            self._stderr_in.close()
            self._ended.set()
            self._connection.wake.set()

    async def run(self) -> None:
        """Relay the worker's bytes both ways until it ends."""
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._write)
                await self._poll()
                tasks.cancel_scope.cancel()
        finally:
            if self._running:
                # Cancelled (the pool's tasks end): nobody relays for this actor any more.
                self.signal_group(signal.SIGKILL)

    async def _call(self, call: Callable[[bool], Any]) -> Any:
        """The value of one call of the actor, ``call(retrying)`` giving its ``ObjectRef``;
        None once the worker is given up or ended.

        While Ray says the actor is unavailable (its node does not answer), the call is
        made again, for up to ``reconnect_window`` from the first such answer, each attempt
        bounded by what is left of it: an attempt on a node that does not answer waits
        until Ray declares the node dead, which takes Ray's health checks (15 s by
        default). Past the window the worker is given up: ``connection_lost``."""
        unavailable_since: float | None = None
        while self._running:
            left = math.inf
            if unavailable_since is not None:
                left = max(unavailable_since + self._window - anyio.current_time(), 0.0)
            try:
                with anyio.move_on_after(left):
                    value = await _result(call(unavailable_since is not None), self._wake)
                    self.reachable = True
                    return value
            except ray.exceptions.ActorUnavailableError:
                self.reachable = False
                if unavailable_since is None:
                    unavailable_since = anyio.current_time()
                if anyio.current_time() - unavailable_since < self._window:
                    await anyio.sleep(_RETRY)
                    continue
            except ray.exceptions.RayError:
                # The actor died (killed, its process or node lost): no exit status.
                self._end(self._returncode)
                return None
            # No answer for reconnect_window.
            self._connection.lost("connection_lost")
            self.signal_group(signal.SIGKILL)
            return None
        return None

    def _receive(self, offsets: tuple[int, int, int], retrying: bool) -> Any:
        # A retry asks for what is there at once: reconnect_window bounds its wait. Output
        # is asked for only while less than _OUTPUT_BACKLOG of it waits to be logged.
        wants = tuple(output.unread < _OUTPUT_BACKLOG for output in self._outputs)
        return self._actor.receive.remote(offsets, 0.0 if retrying else _POLL, wants)

    def _send(self, offset: int, data: bytes, retrying: bool) -> Any:
        return self._actor.send.remote(offset, data)

    async def _poll(self) -> None:
        offsets = [0, 0, 0]
        while self._running:
            reply: Reply | None = await self._call(
                functools.partial(self._receive, (offsets[0], offsets[1], offsets[2]))
            )
            if reply is None:
                return
            channel, stdout, stderr, ended, returncode, rss = reply
            offsets[0] += len(channel)
            offsets[1] += len(stdout)
            offsets[2] += len(stderr)
            self._rss = rss or self._rss
            if stdout:
                self._outputs[0].unread += len(stdout)
                self._stdout_in.send_nowait(stdout)
            if stderr:
                self._outputs[1].unread += len(stderr)
                self._stderr_in.send_nowait(stderr)
            if channel:
                self._connection.received(channel)
            if ended:
                self._end(returncode)

    async def _write(self) -> None:
        offset = 0
        connection = self._connection
        while self._running:
            await connection.wake.wait()
            connection.wake = anyio.Event()
            data = connection.take()
            if data:
                await self._call(functools.partial(self._send, offset, data))
                offset += len(data)


class RayLauncher:
    """Workers as actors of a Ray cluster, one per slot, in one placement group."""

    def __init__(self, config: PoolConfig, placement: RayWorkers) -> None:
        self._config = config
        self._placement = placement
        self._tasks: PoolTasks | None = None
        self._on_greeting: GreetingHandler | None = None
        self._wake: Wake | None = None
        self._group: Any = None
        self._started_ray = False
        self._directory = ""
        # Ray's typing of an actor class made of an async class does not follow its methods.
        self._host: Any = ray.remote(WorkerHost)

    async def open(self, tasks: PoolTasks, on_greeting: GreetingHandler) -> None:
        self._tasks = tasks
        self._on_greeting = on_greeting
        self._wake = _waker()
        if not ray.is_initialized():
            if self._placement.address is None:
                await anyio.to_thread.run_sync(self._start_local)
            else:
                await self._join(self._placement.address)
        _check_runtime_env(self._placement.runtime_env)
        placement = self._placement
        self._group = placement_group(
            [placement.bundle()] * self._config.size,
            strategy="SPREAD" if placement.strategy == "spread" else "PACK",
        )

    def _start_local(self) -> None:
        # A Ray of this machine, for this pool alone ("local": never one that runs
        # already): no dashboard, its files in a directory of its own, removed when the
        # pool closes.
        self._directory = tempfile.mkdtemp(prefix="pypit-ray-")
        ray.init(
            address="local",
            include_dashboard=False,
            _temp_dir=self._directory,
            log_to_driver=False,
            configure_logging=False,
        )
        self._started_ray = True

    async def _join(self, address: str) -> None:
        """Connect to the cluster at ``address`` within ``startup_timeout``. Ray's own
        connection retries without end, and cannot be interrupted: past the timeout (or a
        cancellation) the pool stops waiting for it, and a connection made after all is
        closed again."""
        lock = threading.Lock()
        gave_up = joined = False

        def join() -> BaseException | None:
            nonlocal joined
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except Exception as exc:
                return exc
            with lock:
                if gave_up:
                    ray.shutdown()
                else:
                    joined = True
            return None

        timeout = self._config.startup_timeout
        outcome: list[BaseException | None] = []
        done = anyio.Event()

        wake = _waker()

        def run() -> None:
            outcome.append(join())
            wake(done.set)

        # A daemon thread of its own: one that may run on after the pool gave up must not
        # keep the process from exiting (an anyio worker thread would).
        threading.Thread(target=run, name="pypit-ray-join", daemon=True).start()
        try:
            with anyio.move_on_after(timeout):
                await done.wait()
        finally:
            with lock:
                gave_up = not joined
        error = outcome[0] if outcome else None
        name = self._config.name
        if error is not None:
            raise WorkerStartError(
                f"pool {name!r}: cannot join the Ray cluster at {address!r}: "
                f"{type(error).__name__}: {error}"
            ) from error
        if not joined:
            raise WorkerStartError(
                f"pool {name!r}: no Ray cluster answered at {address!r} within "
                f"startup_timeout={timeout:g}s"
            )

    async def launch(
        self, slot: int, worker_id: str, token: str, settings: Mapping[str, str]
    ) -> WorkerProcess:
        assert self._tasks is not None
        assert self._on_greeting is not None
        assert self._wake is not None
        config, placement = self._config, self._placement
        options: dict[str, Any] = {
            "max_restarts": 0,
            "max_task_retries": 0,
            "num_cpus": placement.num_cpus,
            "num_gpus": placement.num_gpus,
            "resources": dict(placement.resources),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self._group, placement_group_bundle_index=slot
            ),
        }
        if placement.runtime_env is not None:
            options["runtime_env"] = dict(placement.runtime_env)
        host = self._host.options(**options)
        actor = host.remote({**config.env, **settings}, token, config.max_frame_size)
        try:
            with anyio.fail_after(config.startup_timeout):
                while True:
                    try:
                        pid, node = await _result(actor.start.remote(), self._wake)
                        break
                    except ray.exceptions.ActorDiedError as exc:
                        # Its node died before it ran: the bundle of a node that stopped
                        # answering, which Ray moves to a node with room when it declares
                        # that node dead. Not the worker's failure: again, in the bundle
                        # where it is now.
                        if _NEVER_RAN not in str(exc):
                            raise
                        await anyio.sleep(_RETRY)
                        actor = host.remote(
                            {**config.env, **settings}, token, config.max_frame_size
                        )
        except TimeoutError:
            ray.kill(actor, no_restart=True)
            raise LaunchError(
                "not_placed",
                f"its Ray actor was never placed within startup_timeout="
                f"{config.startup_timeout:g}s: no node had {placement.bundle()} free for "
                f"bundle {slot} (or its runtime_env was still being set up)",
            ) from None
        except ray.exceptions.RayActorError as exc:
            ray.kill(actor, no_restart=True)
            raise LaunchError("actor_failed", f"its Ray actor died: {exc}") from None
        except ray.exceptions.RayError as exc:
            ray.kill(actor, no_restart=True)
            raise LaunchError("exec_failed", str(exc)) from None
        except BaseException:
            ray.kill(actor, no_restart=True)
            raise
        connection = RayConnection(self._on_greeting, config.max_frame_size, pid)
        process = RayProcess(actor, pid, node, connection, self._wake, config.reconnect_window)
        self._tasks.start_soon(process.run)
        return process

    async def close(self) -> None:
        if self._group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self._group)
            self._group = None
        if self._started_ray:
            await anyio.to_thread.run_sync(ray.shutdown)
            self._started_ray = False
        if self._directory:
            await anyio.to_thread.run_sync(
                functools.partial(shutil.rmtree, self._directory, ignore_errors=True)
            )

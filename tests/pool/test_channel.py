"""The channel: private, token-checked, and able to come back after a break."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import stat
import struct
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
import structlog

from pypit import WorkerCrashedError, _wire, telemetry
from pypit.pool import Pool, open_pool
from pypit.pool._channel import MAX_PENDING_GREETINGS
from pypit.pool._launch import LocalLauncher
from pypit.pool._request import Request
from tests.pool.conftest import adapter, assert_catalog_shape, options, wait_until
from tests.pool.test_hostile import _Signal, handle


def socket_path(pool: Pool) -> str:
    """The pool's socket, where its workers connect."""
    assert isinstance(pool._launcher, LocalLauncher)
    return pool._launcher.socket_path


pytestmark = pytest.mark.anyio

RPC = ("pypit", "rpc", "connection")
MiB = 1024 * 1024


async def test_broken_channel_reconnects_and_the_call_completes() -> None:
    """The worker's channel breaks while it lives: it reconnects with its token, the answer
    that was in flight arrives on the new channel, and the same process keeps serving."""
    events = [(*RPC, "lost"), (*RPC, "reconnected")]
    with telemetry.capture(*events) as seen:
        async with open_pool(adapter(), **options()) as pool:
            pid = await pool.execute("pid")
            with anyio.fail_after(10):
                assert await pool.execute("drop_channel") == pid
                assert await pool.execute("pid") == pid

    lost, reconnected = seen.named(*RPC, "lost")[0], seen.named(*RPC, "reconnected")[0]
    assert_catalog_shape(lost)
    assert_catalog_shape(reconnected)
    assert lost.metadata["python_pid"] == pid
    assert reconnected.measurements["downtime"] > 0


async def test_a_call_made_while_the_channel_is_down_runs_once_it_is_back() -> None:
    """A call accepted while the only worker reconnects waits in the queue and is sent as
    soon as the worker is back, not when some other event happens to dispatch."""
    async with open_pool(adapter(), **options()) as pool:
        # The channel breaks once nothing is in flight, and stays down half a second.
        pid = await pool.execute("drop_channel", {"after": 0.1, "reconnect_after": 0.5})
        await wait_until(lambda: not pool.workers(), "the channel to break")
        with anyio.fail_after(5):
            assert await pool.execute("pid") == pid


async def test_a_call_abandoned_while_the_channel_is_down_costs_no_worker(
    tmp_path: Path,
) -> None:
    """A waiting call's deadline passes while its worker reconnects: the drop the pool
    could not send leaves once the worker is back, so the worker is not killed, and the
    call it runs completes."""
    gate = tmp_path / "gate"
    async with open_pool(adapter(), **options()) as pool:
        # Both commands are learned as quick, so that the second call waits in the worker.
        for _ in range(4):
            await pool.execute("hold", {"gate": str(tmp_path)})
            await pool.execute("identity", 0)
        pid = await pool.execute("pid")
        await pool.execute("drop_channel", {"after": 0.3, "reconnect_after": 2.5})
        outcomes: dict[str, object] = {}

        async def running() -> None:
            outcomes["running"] = await pool.execute("hold", {"gate": str(gate), "tag": "A"})

        async def waiting() -> None:
            with pytest.raises(TimeoutError):
                await pool.execute("identity", "B", timeout=0.5)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(running)
            await wait_until(lambda: pool.status().in_flight == 1, "the held call to start")
            tasks.start_soon(waiting)
            # Past the reconnection and past cancel_grace (2 s) after it.
            await anyio.sleep(5.0)
            gate.touch()
        assert outcomes["running"] == "A"
        assert await pool.execute("pid") == pid
        assert pool.status().crashes == 0


async def test_without_a_reconnect_window_a_broken_channel_replaces_the_worker() -> None:
    """reconnect_window=0: the worker is killed and replaced."""
    with telemetry.capture(("pypit", "pool", "worker", "terminated")) as seen:
        async with open_pool(adapter(), **options(reconnect_window=0)) as pool:
            pid = await pool.execute("pid")
            with pytest.raises(Exception, match="worker"):
                await pool.execute("drop_channel")
            with anyio.fail_after(10):
                assert await pool.execute("pid") != pid

    # The worker, which does not try to reconnect either, may exit before it is killed.
    assert seen.events[0].metadata["reason"] in {"connection_lost", "exited"}


async def test_the_socket_is_private_and_strangers_are_refused() -> None:
    """The socket lives in a directory only its owner can enter; a connection without a
    worker's token is refused and the pool serves on."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter(), **options()) as pool:
            path = socket_path(pool)
            directory = os.path.dirname(path)
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

            stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stranger.connect(path)
            stranger.sendall(_wire.encode(_wire.Hello("not-a-token", os.getpid())))
            with anyio.fail_after(5):
                while not any("refused" in entry["event"] for entry in logs):
                    await anyio.sleep(0.01)
            stranger.settimeout(5)
            assert stranger.recv(100) == b""
            stranger.close()
            assert await pool.execute("identity", 1) == 1


linux_only = pytest.mark.skipif(
    not hasattr(socket, "SO_PEERCRED"), reason="peer credentials are checked where the system tells"
)


@linux_only
async def test_the_token_is_in_no_place_another_process_can_read() -> None:
    """The worker got its token through a pipe: it is in neither its environment nor its
    command line, which any process of the same user can read."""
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        # The test reads the pool's own record of the token, to look for it elsewhere.
        (handle,) = [h for h in pool._supervisor.handles() if h is not None]
        token = handle.token.encode()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()

    assert len(token) == 32
    assert token not in environ
    assert b"PYPIT_WORKER_TOKEN=" not in environ
    assert token not in cmdline


@linux_only
async def test_a_process_with_the_token_cannot_take_the_workers_place() -> None:
    """While a worker reconnects, another process of the same user that presents its token
    and its pid is refused: the socket tells the pool who connected. The worker then comes
    back and serves."""
    with structlog.testing.capture_logs() as logs:
        async with open_pool(adapter(), **options()) as pool:
            pid = await pool.execute("pid")
            # The impostor is given what it should never have: the token.
            (handle,) = [h for h in pool._supervisor.handles() if h is not None]
            token = handle.token
            await pool.execute("drop_channel", {"after": 0.1, "reconnect_after": 1.0})
            await wait_until(lambda: not pool.workers(), "the channel to break")
            impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            impostor.connect(socket_path(pool))
            impostor.sendall(_wire.encode(_wire.Hello(token, pid)))
            impostor.settimeout(5)
            assert await anyio.to_thread.run_sync(closed_by_the_pool, impostor)
            impostor.close()
            with anyio.fail_after(10):
                assert await pool.execute("pid") == pid

    assert any("refused" in entry["event"] for entry in logs)


def closed_by_the_pool(sock: socket.socket) -> bool:
    """Wait until the pool closes the connection (read to its end, or reset: it closed with
    bytes of ours unread); the socket's timeout raises if it does not."""
    try:
        while sock.recv(65_536):
            pass
    except ConnectionResetError:
        pass
    return True


async def test_an_unauthenticated_peer_costs_a_few_bytes_and_a_second() -> None:
    """Before its greeting is accepted a peer may send one small frame, within about a
    second, and only so many may wait at once: the pool buffers nothing large, keeps no
    idle stranger, and replaces a worker while strangers crowd the socket."""
    async with open_pool(adapter(), **options()) as pool:
        with contextlib.ExitStack() as sockets:

            def stranger() -> socket.socket:
                sock = sockets.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                sock.connect(socket_path(pool))
                sock.settimeout(10)
                return sock

            def crowd_in() -> list[socket.socket]:
                # From a thread: the pool's loop must run to accept them.
                return [stranger() for _ in range(MAX_PENDING_GREETINGS + 16)]

            large = await anyio.to_thread.run_sync(stranger)
            large.sendall(struct.pack(">I", 60 * MiB) + b"x" * 65_536)
            idle = await anyio.to_thread.run_sync(stranger)
            crowd = await anyio.to_thread.run_sync(crowd_in)
            with anyio.fail_after(15):
                for sock in (large, idle, *crowd):
                    # Closed by the pool: the large frame at once, the oldest of the crowd
                    # as newer ones come, the others once GREETING_TIMEOUT passed.
                    assert await anyio.to_thread.run_sync(closed_by_the_pool, sock)

            pid = await pool.execute("pid")
            await anyio.to_thread.run_sync(crowd_in)
            with pytest.raises(WorkerCrashedError):
                await pool.execute("die")
            with anyio.fail_after(10):
                assert await pool.execute("pid") != pid


@contextmanager
def without_cyclic_gc() -> Iterator[None]:
    """Trace allocations, with the cyclic garbage collector off: what is not freed as soon
    as nothing refers to it stays counted."""
    gc.disable()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()
        gc.enable()


async def test_a_dead_workers_half_received_frame_is_not_kept() -> None:
    """A worker that dies in the middle of sending a large frame leaves nothing of it in
    the parent's memory, even before any cyclic garbage collection."""
    async with open_pool(adapter("Hostile"), **options()) as pool:
        with without_cyclic_gc():
            with pytest.raises(WorkerCrashedError):
                await pool.execute("half_frame", {"size": 32 * MiB, "sent": 24 * MiB})
            with anyio.fail_after(10):
                assert await pool.execute("identity", 1) == 1
            retained, peak = tracemalloc.get_traced_memory()

    assert peak > 24 * MiB  # the part of the frame was received
    assert retained < 4 * MiB


def test_a_reconnected_worker_is_sent_its_streams_credit_again() -> None:
    """Credit sent while the channel was down is lost with it; the worker of a stream
    would wait for it forever. On reconnection the pool sends each stream's count again
    (it is cumulative: a repeat changes nothing)."""
    sent: list[bytes] = []

    class NewConnection:
        def attach(self, *callbacks: object) -> None:
            pass

        def send(self, frame: bytes) -> None:
            sent.append(frame)

    worker = handle()
    stream = Request("s", _Signal, stream=True)
    stream.request_id, stream.window, stream.credited = 7, 4, 12
    fresh = Request("s", _Signal, stream=True)
    fresh.request_id, fresh.window = 8, 4
    worker.pending = {7: stream, 8: fresh}
    worker.resume(NewConnection(), [7, 8], b"")  # type: ignore[arg-type]

    assert [_wire.decode_to_worker(frame[4:]) for frame in sent] == [_wire.Credit(7, 12)]

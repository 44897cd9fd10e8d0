"""The channel: private, token-checked, and able to come back after a break."""

from __future__ import annotations

import os
import socket
import stat

import anyio
import pytest
import structlog

from pypit import _wire, telemetry
from pypit.pool import open_pool
from pypit.pool._worker import Request
from tests.pool.conftest import adapter, assert_catalog_shape, options
from tests.pool.test_hostile import _Signal, handle

pytestmark = pytest.mark.anyio

RPC = ("pypit", "rpc", "connection")


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
            path = pool._socket_path
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

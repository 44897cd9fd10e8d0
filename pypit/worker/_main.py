"""The worker process's entry point: read its settings, tie its life to the pool's, greet,
load the adapter, then serve (see :mod:`pypit.worker._runtime`)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import traceback
from typing import Final

from pypit import _wire
from pypit.worker import _guard, _logging, _runtime, _telemetry
from pypit.worker._runtime import Runtime

ENV_PREFIX: Final = "PYPIT_WORKER_"


def _read_token(fd: int) -> str:
    """The token, from the pipe the pool passed (it holds nothing else)."""
    try:
        chunks = []
        while chunk := os.read(fd, 256):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def main() -> int:
    """Entry point of ``python -m pypit.worker``; configured through the environment."""
    env = os.environ
    try:
        path = env[ENV_PREFIX + "SOCKET"]
        token = _read_token(int(env.pop(ENV_PREFIX + "TOKEN_FD")))
        adapter_spec = env[ENV_PREFIX + "ADAPTER"]
        parent_pid = int(env[ENV_PREFIX + "PARENT_PID"])
        max_concurrency = int(env.get(ENV_PREFIX + "MAX_CONCURRENCY", "1"))
        max_frame_size = int(env.get(ENV_PREFIX + "MAX_FRAME_SIZE", _wire.DEFAULT_MAX_FRAME_SIZE))
        extra_path = json.loads(env.get(ENV_PREFIX + "SYS_PATH", "[]"))
        reconnect_window = float(env.get(ENV_PREFIX + "RECONNECT_WINDOW", "0"))
        buffer_size = int(env.get(ENV_PREFIX + "BUFFER_SIZE", _telemetry.DEFAULT_BUFFER_SIZE))
        max_vm_bytes = int(env.get(ENV_PREFIX + "MAX_VM_BYTES") or 0)
        settings = (
            _wire.decode_to_worker(bytes.fromhex(env.get(ENV_PREFIX + "CONFIGURE", "")))
            if env.get(ENV_PREFIX + "CONFIGURE")
            else None
        )
    except (KeyError, ValueError, OSError) as exc:
        print(f"pypit worker: missing or bad setting: {exc}", file=sys.stderr)
        return 2
    _guard.protect(parent_pid)
    if max_vm_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (max_vm_bytes, max_vm_bytes))
    sys.path[:0] = [p for p in extra_path if p not in sys.path]

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    # The greeting goes first, before anything that takes time (logging set-up, the
    # adapter's import): the pool gives a connection about a second to greet.
    sock.sendall(_wire.encode(_wire.Hello(token, os.getpid())))
    runtime = _runtime.current = Runtime(
        sock,
        max_concurrency=max_concurrency,
        max_frame_size=max_frame_size,
        path=path,
        token=token,
        parent_pid=parent_pid,
        reconnect_window=reconnect_window,
        buffer_size=buffer_size,
    )
    _telemetry.current = runtime.telemetry
    if isinstance(settings, _wire.Configure):
        # The pool's settings apply from the start: setup() may emit and log.
        runtime._on_configure(settings)
    # Until the worker serves, nothing ships on a timer: what import and setup() log leaves
    # at once. What they print goes to the pipes, which the pool reads even if the start
    # fails and the worker exits.
    _logging.install(runtime.output)
    runtime.output.at_once = lambda: runtime.outbox.send(ship=True)
    try:
        ready = runtime.load(adapter_spec)
    except BaseException as exc:
        reason = "setup_failed" if runtime._adapter is not None else "import_failed"
        runtime.outbox.send(
            _wire.encode(
                _wire.Failed(reason, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            )
        )
        traceback.print_exc()
        _guard.leave(with_group=os.getppid() != parent_pid)
        return 1
    _logging.capture_stdio(runtime.output)
    runtime.output.at_once = None
    runtime.outbox.send(_wire.encode(ready), ship=True)
    runtime.serving = True
    _guard.start_reaping()
    try:
        runtime.serve()
    finally:
        _guard.stop_reaping()
        runtime.stop()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        # What the tools started goes with this worker, as the pool would kill its group
        # once it exited; and if the channel closed because the parent is gone, nobody is
        # left to kill the group: it goes too.
        _guard.leave(with_group=os.getppid() != parent_pid)
    return 0

"""What the pool says about its workers' lives: the lifecycle events and their log lines.

One function per moment (a start begins, fails, succeeds; a worker ends, is replaced,
reconnects; a slot degrades and recovers), each emitting its catalog event and writing
its log record, so that the supervisor keeps to deciding what happens.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pypit.pool import _events
from pypit.pool._worker import describe_exit

if TYPE_CHECKING:
    from pypit._log import _Logger
    from pypit.pool._supervisor import Slot
    from pypit.pool._worker import WorkerHandle


def fields(handle: WorkerHandle) -> dict[str, Any]:
    """The fields every record about a worker carries (the pool's logger has its name)."""
    return {"worker_id": handle.worker_id, "worker_pid": handle.pid}


def spawn_started(pool_name: str, worker_id: str, reason: str) -> None:
    if _events.listened(_events.SPAWN_STARTED):
        _events.emit(
            _events.SPAWN_STARTED,
            {"system_time": time.time_ns()},
            {"pool_name": pool_name, "worker_id": worker_id, "reason": reason},
        )


def spawned(pool_name: str, handle: WorkerHandle) -> None:
    if _events.listened(_events.SPAWNED):
        _events.emit(
            _events.SPAWNED,
            {
                "duration": time.monotonic_ns() - handle.spawn_started,
                "system_time": time.time_ns(),
            },
            {
                "node": handle.process.node,
                "pool_name": pool_name,
                "worker_id": handle.worker_id,
                "worker_pid": handle.pid,
                "python_pid": handle.pid,
                "mode": handle.process.mode,
            },
        )


def spawn_failed(
    pool_name: str, worker_id: str, started: int, reason: str, exit_code: int | None
) -> None:
    if _events.listened(_events.SPAWN_FAILED):
        _events.emit(
            _events.SPAWN_FAILED,
            {"duration": time.monotonic_ns() - started, "system_time": time.time_ns()},
            {
                "pool_name": pool_name,
                "worker_id": worker_id,
                "reason": reason,
                "exit_code": exit_code,
            },
        )


def launch_failed(
    log: _Logger, pool_name: str, worker_id: str, started: int, reason: str, failure: str
) -> None:
    """The worker could not even be launched (the interpreter could not be run, the Ray
    actor failed or was never placed)."""
    spawn_failed(pool_name, worker_id, started, reason, None)
    log.error(
        "worker failed to start",
        worker_id=worker_id,
        reason=reason,
        error=failure,
    )


def failed_to_start(
    log: _Logger,
    pool_name: str,
    slot: Slot,
    handle: WorkerHandle,
    returncode: int | None,
    *,
    startup_timeout: float,
    closing: bool,
) -> None:
    """A started process did not get ready: say why, once, and note it on the slot."""
    early = handle.early_stderr
    last = next((line.strip() for line in reversed(early) if line.strip()), "")
    if handle.failure is not None:
        reason = handle.failure.reason
        slot.failure = f"{reason}: {handle.failure.message}"
    elif handle.kill_reason == "handshake_timeout":
        reason = handle.kill_reason
        slot.failure = f"not ready within startup_timeout={startup_timeout:g}s"
    elif handle.kill_reason is not None:
        reason = slot.failure = handle.kill_reason
    elif returncode is None:
        # No exit status anybody could read: a Ray actor that died while its worker started.
        reason = "actor_failed"
        slot.failure = "its Ray actor died" + (f": {last}" if last else "")
    else:
        reason = "exited"
        slot.failure = describe_exit(returncode) + (f": {last}" if last else "")
    spawn_failed(pool_name, handle.worker_id, handle.spawn_started, reason, returncode)
    if closing:
        # The pool stopped this start: nothing failed.
        log.info("worker start abandoned: the pool is closing", **fields(handle))
        return
    if handle.failure is not None:
        # What it wrote before it failed, without the traceback it printed last (the
        # record carries the one it reported).
        cut = next(
            (n for n, line in enumerate(early) if line.startswith("Traceback (most recent")),
            len(early),
        )
        traceback, stderr = handle.failure.traceback, "\n".join(early[:cut])
    else:
        traceback, stderr = "\n".join(early), ""
    log.error(
        "worker failed to start",
        **fields(handle),
        reason=reason,
        error=slot.failure,
        exit_code=returncode,
        traceback=traceback,
        **({"stderr": stderr} if stderr else {}),
    )


def restarted(pool_name: str, slot: Slot, handle: WorkerHandle) -> None:
    if _events.listened(_events.RESTARTED):
        _events.emit(
            _events.RESTARTED,
            {"downtime": time.monotonic_ns() - slot.lost_at, "restart_count": slot.restarts},
            {
                "pool_name": pool_name,
                "worker_id": handle.worker_id,
                "previous_pid": slot.previous_pid,
                "new_pid": handle.pid,
                "reason": slot.lost_reason,
            },
        )


def terminated(
    log: _Logger, pool_name: str, handle: WorkerHandle, returncode: int | None, *, closing: bool
) -> None:
    """A worker that was ready ended: recycled, terminated, and a warning if unplanned."""
    handle.connection_lost()
    lifetime = time.monotonic_ns() - handle.ready_at
    reason = termination_reason(handle, returncode)
    if handle.recycle_reason is not None and _events.listened(_events.RECYCLED):
        _events.emit(
            _events.RECYCLED,
            {
                "lifetime": lifetime,
                "total_commands": handle.total_commands,
                "rss_bytes": handle.rss_bytes,
            },
            {
                "pool_name": pool_name,
                "worker_id": handle.worker_id,
                "reason": handle.recycle_reason,
            },
        )
    if _events.listened(_events.TERMINATED):
        _events.emit(
            _events.TERMINATED,
            {"lifetime": lifetime, "total_commands": handle.total_commands},
            {
                "node": handle.process.node,
                "pool_name": pool_name,
                "worker_id": handle.worker_id,
                "worker_pid": handle.pid,
                "reason": reason,
                "planned": handle.closing,
                "exit_code": returncode,
            },
        )
    if not handle.closing and not closing:
        log.warning(
            "worker terminated unexpectedly; restarting",
            **fields(handle),
            exit_code=returncode,
            reason=reason,
        )


def reconnected(log: _Logger, pool_name: str, handle: WorkerHandle) -> None:
    _events.emit(
        _events.RECONNECTED,
        {"downtime": time.monotonic_ns() - handle.lost_at},
        {"pool_name": pool_name, "worker_id": handle.worker_id, "python_pid": handle.pid},
    )
    log.info("worker reconnected", **fields(handle))


def slot_degraded(log: _Logger, pool_name: str, slot: Slot) -> None:
    _events.emit(
        _events.SLOT_DEGRADED,
        {"failed_starts": slot.failed_starts, "system_time": time.time_ns()},
        {"pool_name": pool_name, "worker_id": slot.worker_id, "reason": slot.failure},
    )
    # A warning: each failed start has its own error record already.
    log.warning(
        "worker slot degraded: its starts fail; retrying with back-off",
        worker_id=slot.worker_id,
        reason=slot.failure,
    )


def slot_recovered(log: _Logger, pool_name: str, slot: Slot, handle: WorkerHandle) -> None:
    _events.emit(
        _events.SLOT_RECOVERED,
        {"downtime": time.monotonic_ns() - slot.down_at, "failed_starts": slot.failed_starts},
        {"pool_name": pool_name, "worker_id": slot.worker_id, "worker_pid": handle.pid},
    )
    log.info(
        "worker slot recovered",
        worker_id=slot.worker_id,
        failed_starts=slot.failed_starts,
    )


def termination_reason(handle: WorkerHandle, returncode: int | None) -> str:
    if handle.recycle_reason is not None:
        return "recycle"
    if handle.closing:
        return "shutdown"
    if handle.kill_reason is not None:
        return handle.kill_reason
    if handle.lost_reason in ("protocol_error", "connection_lost"):
        return handle.lost_reason
    if returncode is not None and returncode < 0:
        return "killed"
    if returncode is None:
        # Ended with no exit status anybody could read: a Ray actor that died, taking its
        # worker along.
        return "killed"
    return "exited"

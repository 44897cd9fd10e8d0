"""What each slot of a pool is doing: :class:`WorkerStatus`, from :meth:`Pool.worker_status`.

A snapshot built from the supervisor's slots and the worker handles in them, on the
pool's event loop. Memory and CPU are not here: the workers' samplers report them as
events (``("pypit", "python", "memory", "sampled")``, ``("pypit", "python", "cpu",
"sampled")``), so a reader that wants them listens to those.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from pypit.pool._supervisor import Supervisor

STATES = ("starting", "idle", "busy", "reconnecting", "stopping", "down", "stopped")


@attrs.frozen
class WorkerStatus:
    """One slot of a pool and the worker in it, now.

    ``state`` is ``starting`` (spawned, not yet ready, or waiting to be replaced),
    ``idle`` or ``busy`` (ready, without or with calls in flight), ``reconnecting``
    (its channel broke and may come back), ``stopping`` (recycled or shutting down,
    finishing its calls), ``down`` (its starts fail: retried with back-off) or
    ``stopped`` (the pool closed). ``calls`` counts the commands the current process
    served, ``uptime`` the seconds since it got ready (0 until then); ``restarts`` and
    ``last_exit`` (the reason the slot's last ready worker ended, as the
    ``terminated`` event gives it, or None) span the slot's life. ``failure`` is what
    the slot's last start failed with, while it fails. ``import_seconds`` and
    ``setup_seconds`` are what the current process took to import its adapter and to set
    it up (instantiation and ``setup()``), 0.0 until it is ready.
    """

    pool_name: str
    worker_id: str
    pid: int | None
    node: str | None
    state: str
    calls: int
    in_flight: int
    uptime: float
    restarts: int
    last_exit: str | None
    failure: str | None
    import_seconds: float = 0.0
    setup_seconds: float = 0.0


def worker_status(supervisor: Supervisor) -> tuple[WorkerStatus, ...]:
    """The status of every slot of ``supervisor``'s pool, in slot order."""
    now = time.monotonic_ns()
    handles = supervisor.handles()
    statuses = []
    for slot in supervisor.slots:
        handle = handles[slot.index]
        pid = node = None
        calls = in_flight = 0
        uptime = imported = set_up = 0.0
        if handle is None or (supervisor.closed and not handle.process.running):
            state = "stopped" if supervisor.closed else "down" if slot.down else "starting"
        else:
            pid, node = handle.pid, handle.process.node
            calls, in_flight = handle.total_commands, handle.in_flight
            if not handle.ready:
                state = "stopping" if supervisor.closed else "starting"
            else:
                uptime = (now - handle.ready_at) / 1e9
                imported, set_up = handle.import_time / 1e9, handle.setup_time / 1e9
                if handle.lost_reason is not None:
                    state = "reconnecting"
                elif not handle.accepting:
                    state = "stopping"
                else:
                    state = "busy" if handle.in_flight else "idle"
        statuses.append(
            WorkerStatus(
                pool_name=supervisor.name,
                worker_id=slot.worker_id,
                pid=pid,
                node=node,
                state=state,
                calls=calls,
                in_flight=in_flight,
                uptime=uptime,
                restarts=slot.restarts,
                last_exit=slot.last_exit or None,
                failure=slot.failure or None,
                import_seconds=imported,
                setup_seconds=set_up,
            )
        )
    return tuple(statuses)

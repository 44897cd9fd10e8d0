"""The control plane: worker telemetry settings and log levels, and the events workers ship.

Settings are the pool's, then each worker's own overrides; they are pushed to
ready workers when they change (and acknowledged), sent to each new worker
before it imports the adapter, and so survive restarts. Events a worker ships
are checked again here -- a worker cannot widen its own allowlist -- and
re-emitted with the three keys only the pool may set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import anyio

from pypit import _wire
from pypit._errors import AcknowledgeTimeoutError, ProtocolError, UnknownWorkerError
from pypit._log import LEVELS, Levels, _Logger, check_level, get_logger
from pypit._shared import (
    CATALOG_NAMES,
    DROP_REASONS,
    check_pattern,
    invalid_metadata,
    matches,
    valid_name,
)
from pypit.pool import _events
from pypit.pool._config import PoolConfig, check_timeout
from pypit.pool._worker import WorkerHandle
from pypit.telemetry import _registry

_MAX_DECISIONS = 10_000


class Control:
    """Worker telemetry and log levels of one pool. ``workers`` lists the live handles,
    ``worker_ids`` the name of each slot's worker, ``levels`` the pool's log levels."""

    def __init__(
        self,
        config: PoolConfig,
        workers: Callable[[], Iterable[WorkerHandle | None]],
        worker_ids: list[str],
        levels: Levels | None = None,
    ) -> None:
        self._config = config
        self._name = config.name
        self._worker_log = get_logger("worker", levels, pool_name=config.name)
        # The level workers start with: the pool's for the worker category.
        self._start_level = config.log_categories.get("worker", config.log_level)
        self._workers = workers
        self._worker_ids = worker_ids
        self._generation = -1
        self._listened: list[str] = []
        self._seq = 0
        self._settings: dict[str, Any] = {
            "enabled": True,
            "sampling_rate": 1.0,
            "allow": tuple(config.telemetry_allow),
            "deny": (),
        }
        self._per_worker: dict[str, dict[str, Any]] = {}
        self._allowed: dict[tuple[str, str], bool] = {}

    # -- what workers are told -------------------------------------------------------------

    def message(self, worker_id: str, seq: int = 0) -> _wire.Configure:
        """The settings of ``worker_id``: the pool's, then its own overrides."""
        settings = {**self._settings, **self._per_worker.get(worker_id, {})}
        return _wire.Configure(
            seq=seq,
            listened=self._listened,
            enabled=settings["enabled"],
            sampling_rate=settings["sampling_rate"],
            allow=list(settings["allow"]),
            deny=list(settings["deny"]),
            log_level=settings.get("log_level", self._start_level),
            sample_interval=self._config.sample_interval,
        )

    def stale(self) -> bool:
        """Whether handlers were attached or detached since workers were last told which
        python events anyone listens to."""
        return self._generation != _registry.generation

    def _refresh_listened(self) -> None:
        """Which python events have handlers: workers ship only those."""
        self._generation = _registry.generation
        self._listened = sorted(
            {".".join(h.event_name[2:]) for h in _registry.list_handlers(("pypit", "python"))}
        )

    def push(self, seq: int = 0, target: str | None = None) -> None:
        """Send each ready worker (or ``target`` only) its settings."""
        self._refresh_listened()
        for worker in self._workers():
            if worker is None or not worker.ready:
                continue
            if target is None or worker.worker_id == target:
                worker.send(_wire.encode(self.message(worker.worker_id, seq)))

    def greet(self, worker: WorkerHandle) -> None:
        """A worker just got ready: send it its settings (everyone's, if they changed)."""
        if self.stale():
            self.push()
        else:
            worker.send(_wire.encode(self.message(worker.worker_id)))

    def initial(self, worker_id: str) -> str:
        """The settings a new worker applies before it imports the adapter (hex, for env)."""
        if self.stale():
            self._refresh_listened()
        return _wire.encode(self.message(worker_id))[4:].hex()

    async def _apply(self, worker_id: str | None, timeout: float) -> None:
        """Push settings and wait until the targeted workers acknowledged them."""
        self._seq += 1
        seq = self._seq
        self._allowed.clear()
        self.push(seq, worker_id)

        def late() -> list[str]:
            return [
                w.worker_id
                for w in self._workers()
                if w is not None
                and w.ready
                and w.acked < seq
                and w.process.running
                and (worker_id is None or w.worker_id == worker_id)
            ]

        with anyio.move_on_after(timeout):
            while late():
                await anyio.sleep(0.005)
        if waiting := late():
            raise AcknowledgeTimeoutError(
                f"pool {self._name!r}: {', '.join(waiting)} did not acknowledge the new "
                f"settings within {timeout:g}s; they apply them when they next read their channel"
            )

    def _check_worker(self, worker_id: str) -> None:
        if worker_id not in self._worker_ids:
            known = ", ".join(self._worker_ids)
            raise UnknownWorkerError(
                f"pool {self._name!r} has no worker {worker_id!r}; its workers are {known}"
            )

    def worker_log(self, worker_id: str, pid: int) -> _Logger:
        """The logger of the records of ``worker_id`` (process ``pid``): at the level set for
        that worker, if one was, since the worker's own records are filtered at it too."""
        log = self._worker_log.bind(worker_id=worker_id, worker_pid=pid)
        level = self._per_worker.get(worker_id, {}).get("log_level")
        return log if level is None else log.with_threshold(LEVELS[level])

    def _relevel(self, worker_id: str) -> None:
        for worker in self._workers():
            if worker is not None and worker.worker_id == worker_id:
                worker.log = self.worker_log(worker_id, worker.pid)

    # -- the public operations ---------------------------------------------------------------

    async def configure_telemetry(
        self,
        *,
        enabled: bool | None,
        sampling_rate: float | None,
        allow: list[str] | tuple[str, ...] | None,
        deny: list[str] | tuple[str, ...] | None,
        worker_id: str | None,
        timeout: float,
    ) -> None:
        """See :meth:`Pool.configure_telemetry`. Every argument is checked before anything
        changes."""
        check_timeout(timeout, optional=False)
        changes: dict[str, Any] = {}
        if enabled is not None:
            if type(enabled) is not bool:
                raise TypeError(f"enabled must be True, False or None, not {enabled!r}")
            changes["enabled"] = enabled
        if sampling_rate is not None:
            if type(sampling_rate) not in (int, float):
                raise TypeError(
                    f"sampling_rate must be a number from 0 to 1, not {sampling_rate!r}"
                )
            if not 0.0 <= sampling_rate <= 1.0:
                raise ValueError(
                    f"sampling_rate must be a number from 0 to 1, not {sampling_rate!r}"
                )
            changes["sampling_rate"] = float(sampling_rate)
        for key, patterns in (("allow", allow), ("deny", deny)):
            if patterns is not None:
                if not isinstance(patterns, list | tuple):
                    raise TypeError(
                        f"{key} must be a list of name patterns such as ['inference.*'], "
                        f"not {patterns!r}"
                    )
                for pattern in patterns:
                    check_pattern(key, pattern)
                changes[key] = tuple(patterns)
        if worker_id is not None:
            self._check_worker(worker_id)
        if worker_id is None:
            self._settings.update(changes)
        else:
            self._per_worker.setdefault(worker_id, {}).update(changes)
        await self._apply(worker_id, timeout)

    async def set_worker_level(self, worker_id: str, level: str, timeout: float) -> None:
        """See :meth:`Pool.set_worker_level`."""
        check_timeout(timeout, optional=False)
        check_level(level, "level")
        self._check_worker(worker_id)
        self._per_worker.setdefault(worker_id, {})["log_level"] = level
        self._relevel(worker_id)
        await self._apply(worker_id, timeout)

    async def reset_worker_level(self, worker_id: str, timeout: float) -> None:
        """See :meth:`Pool.reset_worker_level`."""
        check_timeout(timeout, optional=False)
        self._check_worker(worker_id)
        self._per_worker.get(worker_id, {}).pop("log_level", None)
        self._relevel(worker_id)
        await self._apply(worker_id, timeout)

    # -- what workers ship ---------------------------------------------------------------------

    def _is_allowed(self, worker_id: str, name: str) -> bool:
        """The pool's own check of a shipped name: a worker cannot widen its allowlist."""
        key = (worker_id, name)
        allowed = self._allowed.get(key)
        if allowed is None:
            settings = {**self._settings, **self._per_worker.get(worker_id, {})}
            allowed = valid_name(name) and (
                name in CATALOG_NAMES or matches(name, settings["allow"])
            )
            if len(self._allowed) < _MAX_DECISIONS:
                self._allowed[key] = allowed
        return allowed

    def on_events(self, worker: WorkerHandle, batch: _wire.Events) -> None:
        """Re-emit a worker's events with the three keys it cannot set, and report drops."""
        added = {"pool_name": self._name, "worker_id": worker.worker_id, "python_pid": worker.pid}
        dropped: dict[str, tuple[int, set[str]]] = {}

        def count(reason: str, name: str, n: int) -> None:
            total, names = dropped.get(reason, (0, set()))
            names.add(name)
            dropped[reason] = (total + n, names)

        for name, measurements, metadata in batch.events:
            if not self._is_allowed(worker.worker_id, name):
                count("unknown_event", name, 1)
                continue
            if invalid_metadata(metadata):
                count("invalid_metadata", name, 1)
                continue
            event = ("pypit", "python", *name.split("."))
            if _events.listened(event):
                _events.emit(event, measurements, {**metadata, **added})
        for reason, name, n in batch.dropped:
            if reason not in DROP_REASONS or n <= 0:
                raise ProtocolError(f"a drop report {reason!r} x {n} that no worker makes")
            count(reason, name, n)
        if dropped and _events.listened(_events.DROPPED):
            for reason, (n, names) in dropped.items():
                _events.emit(
                    _events.DROPPED,
                    {"count": n},
                    {
                        "pool_name": self._name,
                        "worker_id": worker.worker_id,
                        "reason": reason,
                        "event_name": next(iter(names)) if len(names) == 1 else None,
                    },
                )

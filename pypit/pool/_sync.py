"""``start_pool``: the pool for synchronous code, on a background event-loop thread."""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio.from_thread

from pypit.pool._config import Affinity
from pypit.pool._pool import Pool, PoolStatus, SessionInfo, ToolDescription, open_pool


class SyncPool:
    """A blocking view of a :class:`Pool`. Every method is safe from any thread.

    Each call hops onto the pool's event loop and blocks the calling thread
    until it is done; many threads may call at once.
    """

    def __init__(self, pool: Pool, portal: anyio.from_thread.BlockingPortal) -> None:
        self._pool = pool
        self._portal = portal

    @property
    def name(self) -> str:
        return self._pool.name

    def execute(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
        affinity: Affinity | None = None,
        idempotent: bool = False,
    ) -> Any:
        """Blocking :meth:`Pool.execute`."""
        return self._portal.call(
            functools.partial(
                self._pool.execute,
                command,
                args,
                timeout=timeout,
                session_id=session_id,
                correlation_id=correlation_id,
                affinity=affinity,
                idempotent=idempotent,
            )
        )

    def stream(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Generator[Any, None, None]:
        """Blocking :meth:`Pool.stream`: a generator of chunks; closing it cancels the stream."""
        chunks = self._pool.stream(
            command, args, timeout=timeout, session_id=session_id, correlation_id=correlation_id
        )
        try:
            while True:
                try:
                    yield self._portal.call(chunks.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            self._portal.call(chunks.aclose)

    def status(self) -> PoolStatus:
        """:meth:`Pool.status`."""
        return self._portal.call(self._snapshot)

    async def _snapshot(self) -> PoolStatus:
        return self._pool.status()

    def emit_status(self) -> None:
        """:meth:`Pool.emit_status`, on the pool's loop."""
        self._portal.call(self._emit_status)

    async def _emit_status(self) -> None:
        self._pool.emit_status()

    def configure_telemetry(self, **settings: Any) -> None:
        """Blocking :meth:`Pool.configure_telemetry`."""
        self._portal.call(functools.partial(self._pool.configure_telemetry, **settings))

    def set_worker_level(self, worker_id: str, level: str) -> None:
        """Blocking :meth:`Pool.set_worker_level`."""
        self._portal.call(self._pool.set_worker_level, worker_id, level)

    def reset_worker_level(self, worker_id: str) -> None:
        """Blocking :meth:`Pool.reset_worker_level`."""
        self._portal.call(self._pool.reset_worker_level, worker_id)

    def recycle_worker(self, worker_id: str) -> None:
        """Blocking :meth:`Pool.recycle_worker`."""
        self._portal.call(self._pool.recycle_worker, worker_id)

    def session(self, session_id: str) -> SessionInfo | None:
        """:meth:`Pool.session`."""
        return self._pool.session(session_id)

    def tools(self) -> dict[str, ToolDescription]:
        """:meth:`Pool.tools`."""
        return self._pool.tools()

    def workers(self) -> dict[str, int]:
        """:meth:`Pool.workers`."""
        return self._pool.workers()


@contextmanager
def start_pool(
    adapter: str,
    *,
    size: int | None = None,
    name: str = "default",
    backend: str = "asyncio",
    **options: Any,
) -> Iterator[SyncPool]:
    """Open a pool on a background event-loop thread, for synchronous code.

    Takes the arguments of :func:`~pypit.pool.open_pool`, plus ``backend``
    (``"asyncio"`` or ``"trio"``) for the loop thread.
    """
    with (
        anyio.from_thread.start_blocking_portal(backend) as portal,
        portal.wrap_async_context_manager(
            open_pool(adapter, size=size, name=name, **options)
        ) as pool,
    ):
        yield SyncPool(pool, portal)

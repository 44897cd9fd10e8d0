"""The pool's own tasks, which only the pool ends.

The pool's task group lives inside the block of ``open_pool``, and so inside
whatever cancel scope the caller opened around it: a cancellation of the
caller's block would reach the pool's tasks too -- the slots that stop and reap
the workers, the channels that carry their Shutdown -- just when the pool has to
stop its workers. Each of its tasks runs shielded instead, and the pool ends
them all with :meth:`PoolTasks.end` once its workers are reaped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.abc


class PoolTasks:
    """Start tasks in ``group``, each shielded from the cancellation of its scope."""

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self._group = group
        self._scopes: set[anyio.CancelScope] = set()
        self._ended = False

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self._group.start_soon(self._run, func, args)

    async def start(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start a task that reports that it started (``task_status``); wait until it did."""
        return await self._group.start(self._run_started, func, args)

    def end(self) -> None:
        """Cancel every task, and any started from now on."""
        self._ended = True
        for scope in self._scopes:
            scope.cancel()

    async def _run(self, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        with self._shielded():
            await func(*args)

    async def _run_started(
        self,
        func: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        *,
        task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with self._shielded():
            await func(*args, task_status=task_status)

    @contextmanager
    def _shielded(self) -> Iterator[None]:
        with anyio.CancelScope(shield=True) as scope:
            if self._ended:
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield
            finally:
                self._scopes.discard(scope)

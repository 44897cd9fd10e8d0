"""``start_pool``: the pool for synchronous code, on a background event-loop thread.

Ctrl-C works as in async code. KeyboardInterrupt raised in a thread waiting for
the pool (Python raises it in the main thread) cancels that thread's call on
the pool's loop, as a cancelled task's call is cancelled; leaving the pool's
block with it cancels the calls in flight and stops the workers (see
:func:`~pypit.pool.open_pool`). A second Ctrl-C while the pool stops kills the
workers, and the block is left at once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import anyio.from_thread

from pypit._errors import PoolClosedError
from pypit.pool._config import Affinity, make_config
from pypit.pool._futures import Callbacks, CallFuture
from pypit.pool._map import MAP_ENDED, Map, stop, take
from pypit.pool._pool import (
    Pool,
    PoolStatus,
    SessionInfo,
    ToolDescription,
    kill_workers,
    open_pool,
)
from pypit.pool._progress import Display, Progress
from pypit.pool._status import WorkerStatus
from pypit.pool._stream import STREAM_ENDED, Stream

T = TypeVar("T")

_ENTER_FIRST: Final = (
    "iterate a stream inside its block: `with pool.stream(...) as chunks: "
    "for chunk in chunks: ...`, so that leaving the loop early cancels it at once"
)


def _on_loop(
    portal: anyio.from_thread.BlockingPortal, func: Callable[..., Awaitable[T]], *args: Any
) -> T:
    """Run ``func`` on the pool's loop and wait for it; ``PoolClosedError`` once the pool
    closed (its loop thread is gone). If the wait is interrupted (KeyboardInterrupt), the
    task on the loop is cancelled."""
    try:
        future = portal.start_task_soon(func, *args)
    except RuntimeError as exc:
        if "portal is not running" not in str(exc):
            raise
        raise PoolClosedError("the pool is closed: its event loop thread has stopped") from None
    try:
        return future.result()
    except BaseException:
        if not future.done():
            future.cancel()
        raise


class SyncStream:
    """A blocking view of a :class:`~pypit.pool.Stream`, from :meth:`SyncPool.stream`::

        with pool.stream("generate", {"prompt": "hi"}) as chunks:
            for chunk in chunks:
                ...

    Leaving the block, however, cancels the generator in the worker at once, as
    :meth:`close` does (from any thread: an iteration blocked in another thread ends).
    Iterating without ``with`` raises ``TypeError``, for the reason a
    :class:`~pypit.pool.Stream` does: a loop left by ``break`` never tells its
    iterator, and a stream must not wait for the garbage collector to end.
    """

    __slots__ = ("_entered", "_exited", "_portal", "_stream")

    def __init__(self, stream: Stream, portal: anyio.from_thread.BlockingPortal) -> None:
        self._stream = stream
        self._portal = portal
        self._entered = False
        self._exited = False

    @property
    def buffered(self) -> int:
        """Chunks that arrived and are not taken yet (see :attr:`Stream.buffered`)."""
        return self._stream.buffered

    def __enter__(self) -> Self:
        _on_loop(self._portal, self._stream.__aenter__)
        self._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._exited = True
        self.close()

    def __iter__(self) -> Self:
        if not self._entered:
            raise TypeError(_ENTER_FIRST)
        if self._exited:
            raise TypeError(STREAM_ENDED)
        return self

    def __next__(self) -> Any:
        if not self._entered:
            raise TypeError(_ENTER_FIRST)
        if self._exited:
            raise TypeError(STREAM_ENDED)
        try:
            return _on_loop(self._portal, self._stream.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """End the stream, as leaving its block does; nothing happens the second time (nor
        once the pool closed, which ended the stream)."""
        with contextlib.suppress(PoolClosedError):
            _on_loop(self._portal, self._stream.aclose)


class SyncMap:
    """A blocking view of a :class:`~pypit.pool.Map`, from :meth:`SyncPool.map` and
    :meth:`SyncPool.map_unordered`::

        with pool.map("predict", ({"x": x} for x in range(1000))) as results:
            for result in results:
                ...

    Leaving the block, however, stops the map at once, as :meth:`close` does (from any
    thread). Iterating without ``with`` raises ``TypeError``: a ``for`` loop left by
    ``break`` never tells its iterator, and a generator that stopped the map when closed
    would stop it when the garbage collector gets to it -- in whatever thread it runs,
    possibly the pool's own, where the stop cannot wait for the loop -- while the workers
    ran inputs nobody reads. Results cross from the pool's loop in batches (all those
    ready at once), so a quick map costs a thread hop per frame, not per result; the
    progress callback runs in the iterating thread, after each batch.
    """

    __slots__ = ("_display", "_entered", "_map", "_portal", "_progress", "_results")

    def __init__(
        self, results: Map, portal: anyio.from_thread.BlockingPortal, progress: Progress
    ) -> None:
        self._map = results
        self._portal = portal
        self._progress = progress
        self._display: Display | None = None
        self._entered = False
        # Results are handed out by C code, a batch (a list of lists) at a time:
        # iterating costs next to nothing per result.
        self._results = itertools.chain.from_iterable(
            itertools.chain.from_iterable(self._batches())
        )

    def __enter__(self) -> Self:
        if self._progress in ("tqdm", "rich"):
            self._display = Display(str(self._progress), self._map.total, self._map.command)
        try:
            _on_loop(self._portal, self._map.__aenter__)
        except BaseException:
            self.close()
            raise
        self._entered = True
        self._report()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close(exc)

    def __iter__(self) -> Iterator[Any]:
        if not self._entered:
            raise TypeError(
                "iterate a map inside its block: `with pool.map(...) as results: "
                "for result in results: ...`, so that leaving the loop early cancels it at once"
            )
        if self._map.closed:
            raise TypeError(MAP_ENDED)
        return self._results

    def __next__(self) -> Any:
        iter(self)
        return next(self._results)

    def _batches(self) -> Iterator[list[list[Any]]]:
        while batch := _on_loop(self._portal, take, self._map):
            self._report()
            yield batch
        self._report()

    def _report(self) -> None:
        done = self._map.done
        if self._display is not None:
            self._display.update(done)
        elif callable(self._progress):
            self._progress(done, self._map.total)

    def close(self) -> None:
        """Stop the map, as leaving its block does; nothing happens the second time (nor
        once the pool closed, which stopped the map)."""
        self._close(None)

    def _close(self, exc: BaseException | None) -> None:
        """Stop the map; its frames in flight report ``exc`` (a Ctrl-C) as their reason."""
        try:
            with contextlib.suppress(PoolClosedError):
                _on_loop(self._portal, stop, self._map, exc)
        finally:
            if self._display is not None:
                self._display.close()
                self._display = None


class SyncPool:
    """A blocking view of a :class:`Pool`. Every method is safe from any thread.

    Each call hops onto the pool's event loop and blocks the calling thread
    until it is done; many threads may call at once.
    """

    def __init__(
        self, pool: Pool, portal: anyio.from_thread.BlockingPortal, loop_thread: int = 0
    ) -> None:
        self._pool = pool
        self._portal = portal
        self._loop_thread = loop_thread
        self._callbacks = Callbacks()

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
        return _on_loop(
            self._portal,
            functools.partial(
                self._pool.execute,
                command,
                args,
                timeout=timeout,
                session_id=session_id,
                correlation_id=correlation_id,
                affinity=affinity,
                idempotent=idempotent,
            ),
        )

    def stream(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
    ) -> SyncStream:
        """Blocking :meth:`Pool.stream`: ``with pool.stream(...) as chunks: for chunk in
        chunks: ...``; leaving the block cancels the stream (see :class:`SyncStream`)."""
        stream = self._pool.stream(
            command, args, timeout=timeout, session_id=session_id, correlation_id=correlation_id
        )
        return SyncStream(stream, self._portal)

    def submit(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
    ) -> concurrent.futures.Future[Any]:
        """:meth:`Pool.execute` without waiting: a ``concurrent.futures.Future`` of its
        result, for ``concurrent.futures.wait`` and ``as_completed``.

        ``cancel()`` cancels the call: one that waits never runs, a running one is
        cancelled as its deadline would cancel it. Callbacks added before the result run on
        a thread of the pool's, never on its loop, so they may call the pool
        (docs/calls.md). Raises ``PoolClosedError`` once the pool is closed.
        """
        future = CallFuture(self._portal, self._loop_thread, self._callbacks)
        call = functools.partial(
            self._pool.execute,
            command,
            args,
            timeout=timeout,
            session_id=session_id,
            correlation_id=correlation_id,
        )
        try:
            self._portal.start_task_soon(future.run, call)
        except RuntimeError as exc:
            if "portal is not running" not in str(exc):
                raise
            raise PoolClosedError("the pool is closed: its event loop thread has stopped") from None
        return future

    def map(
        self,
        command: str,
        inputs: Iterable[Any],
        *,
        chunksize: int | None = None,
        buffersize: int | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
        return_exceptions: bool = False,
        progress: Progress = None,
    ) -> SyncMap:
        """Blocking :meth:`Pool.map`: ``with pool.map(...) as results: for result in
        results: ...``; leaving the block stops the map (see :class:`SyncMap`). The
        iterable is pulled on the pool's loop thread, a frame at a time."""
        results = self._pool.map(command, inputs, chunksize=chunksize, buffersize=buffersize,
                                 timeout=timeout, session_id=session_id,
                                 correlation_id=correlation_id,
                                 return_exceptions=return_exceptions)  # fmt: skip
        return SyncMap(results, self._portal, progress)

    def map_unordered(
        self,
        command: str,
        inputs: Iterable[Any],
        *,
        chunksize: int | None = None,
        buffersize: int | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
        return_exceptions: bool = False,
        progress: Progress = None,
    ) -> SyncMap:
        """Blocking :meth:`Pool.map_unordered` (see :meth:`map`)."""
        results = self._pool.map_unordered(command, inputs, chunksize=chunksize,
                                           buffersize=buffersize, timeout=timeout,
                                           session_id=session_id, correlation_id=correlation_id,
                                           return_exceptions=return_exceptions)  # fmt: skip
        return SyncMap(results, self._portal, progress)

    def status(self) -> PoolStatus:
        """:meth:`Pool.status`; once the pool is closed, its last snapshot (``closed`` is
        true), as from the async pool."""
        try:
            return _on_loop(self._portal, self._snapshot)
        except PoolClosedError:
            # The loop thread is gone, and nothing changes the pool any more: read it here.
            return self._pool.status()

    async def _snapshot(self) -> PoolStatus:
        return self._pool.status()

    def emit_status(self) -> None:
        """:meth:`Pool.emit_status`, on the pool's loop."""
        _on_loop(self._portal, self._emit_status)

    async def _emit_status(self) -> None:
        self._pool.emit_status()

    def configure_telemetry(
        self,
        *,
        enabled: bool | None = None,
        sampling_rate: float | None = None,
        allow: list[str] | tuple[str, ...] | None = None,
        deny: list[str] | tuple[str, ...] | None = None,
        worker_id: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Blocking :meth:`Pool.configure_telemetry`."""
        _on_loop(
            self._portal,
            functools.partial(
                self._pool.configure_telemetry,
                enabled=enabled,
                sampling_rate=sampling_rate,
                allow=allow,
                deny=deny,
                worker_id=worker_id,
                timeout=timeout,
            ),
        )

    def set_worker_level(self, worker_id: str, level: str, *, timeout: float = 5.0) -> None:
        """Blocking :meth:`Pool.set_worker_level`."""
        _on_loop(
            self._portal,
            functools.partial(self._pool.set_worker_level, worker_id, level, timeout=timeout),
        )

    def reset_worker_level(self, worker_id: str, *, timeout: float = 5.0) -> None:
        """Blocking :meth:`Pool.reset_worker_level`."""
        _on_loop(
            self._portal,
            functools.partial(self._pool.reset_worker_level, worker_id, timeout=timeout),
        )

    def recycle_worker(self, worker_id: str) -> None:
        """Blocking :meth:`Pool.recycle_worker`."""
        _on_loop(self._portal, self._pool.recycle_worker, worker_id)

    def session(self, session_id: str) -> SessionInfo | None:
        """:meth:`Pool.session`."""
        return self._pool.session(session_id)

    def tools(self) -> dict[str, ToolDescription]:
        """:meth:`Pool.tools`."""
        return self._pool.tools()

    def workers(self) -> dict[str, int]:
        """:meth:`Pool.workers`."""
        return self._pool.workers()

    def worker_status(self) -> tuple[WorkerStatus, ...]:
        """:meth:`Pool.worker_status`; once the pool is closed, its last one."""
        try:
            return _on_loop(self._portal, self._worker_snapshot)
        except PoolClosedError:
            return self._pool.worker_status()

    async def _worker_snapshot(self) -> tuple[WorkerStatus, ...]:
        return self._pool.worker_status()


_BACKENDS: Final = ("asyncio", "trio")


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
    (``"asyncio"`` or ``"trio"``) for the loop thread. Leaving the block as
    ``open_pool``'s: normally, calls in flight drain; by an exception (Ctrl-C
    included), they are cancelled. Ctrl-C while the pool stops kills its
    workers, and the block is left at once.
    """
    if backend not in _BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, _BACKENDS))}, not {backend!r}"
        )
    make_config(adapter, size, name, options)  # misuse is refused here, with no thread yet
    callbacks: Callbacks | None = None
    try:
        with anyio.from_thread.start_blocking_portal(backend) as portal:
            opened = portal.wrap_async_context_manager(
                open_pool(adapter, size=size, name=name, **options)
            )
            pool = opened.__enter__()
            sync = SyncPool(pool, portal, portal.call(threading.get_ident))
            callbacks = sync._callbacks
            try:
                yield sync
            except BaseException as exc:
                _leave(opened, portal, pool, exc)
                raise
            _leave(opened, portal, pool, None)
    finally:
        # The callbacks of the futures the pool settled as it stopped run before the block
        # ends.
        if callbacks is not None:
            callbacks.close()


def _leave(
    opened: AbstractContextManager[Pool],
    portal: anyio.from_thread.BlockingPortal,
    pool: Pool,
    exc: BaseException | None,
) -> None:
    """Leave the pool's block; if Ctrl-C interrupts the wait, kill the workers (the pool's
    loop reaps them in a moment) and raise it at once."""
    try:
        opened.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
    except KeyboardInterrupt:
        with contextlib.suppress(RuntimeError):
            portal.call(kill_workers, pool)
        raise

"""``SyncPool.submit``: a call as a ``concurrent.futures.Future``.

The future is settled on the pool's event loop thread, where the call ran. Callbacks must
not run there: one that calls back into the pool (``pool.execute`` waits for the loop) would
wait for the very thread it blocks. So a callback added before the future is done runs on
a thread of the pool's own, one callback after the other, in the order the futures were
settled; one added once it is done runs at once in the thread that adds it, as with any
``concurrent.futures.Future``. ``wait`` and ``as_completed`` are woken from the loop at
once: they only set events.

``cancel()`` cancels the call itself, not only the future: a call that waits never runs,
and a running one is cancelled as a deadline would cancel it. Unlike an executor's
future, which cannot be cancelled once it runs, this one can until its result is set.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread

from pypit._errors import PoolClosedError

_LOGGER = logging.getLogger("concurrent.futures")


class Callbacks:
    """The thread that runs the callbacks of a pool's futures, started on first use and
    stopped by :meth:`close` once the callbacks queued before it ran."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], object], Any] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, callback: Callable[[Any], object], future: Any) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pypit-future-callbacks", daemon=True
                )
                self._thread.start()
        self._queue.put((callback, future))

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            callback, future = item
            try:
                callback(future)
            except Exception:
                # As concurrent.futures does with a callback that raises.
                _LOGGER.exception("exception calling callback for %r", future)


class CallFuture(concurrent.futures.Future[Any]):
    """A call of the pool as a future; see the module's docstring."""

    def __init__(
        self, portal: anyio.from_thread.BlockingPortal, loop_thread: int, callbacks: Callbacks
    ) -> None:
        super().__init__()
        self._portal = portal
        self._loop_thread = loop_thread
        self._callbacks = callbacks
        self._scope: anyio.CancelScope | None = None

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[Any]], object]) -> None:
        super().add_done_callback(functools.partial(self._dispatch, fn))

    def _dispatch(self, fn: Callable[[Any], object], future: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            self._callbacks.put(fn, future)
        else:
            fn(future)

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        if threading.get_ident() == self._loop_thread:
            self._cancel_call()
        else:
            # A portal that stopped raises: the pool's loop is gone, and the call with it.
            with contextlib.suppress(RuntimeError):
                self._portal.start_task_soon(self._cancel_call)
        return True

    def _cancel_call(self) -> None:
        """On the loop: cancel the call if it runs (one not started yet never will)."""
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, call: Callable[[], Awaitable[Any]]) -> None:
        """Run the call on the loop and settle the future with its outcome."""
        value: Any = None
        error: BaseException | None = None
        try:
            with anyio.CancelScope() as self._scope:
                if not self.cancelled():
                    try:
                        value = await call()
                    except Exception as exc:
                        error = exc
        except BaseException:
            # Cancelled from outside: the pool's loop stops. Its waiters are not left waiting.
            if self.set_running_or_notify_cancel():
                self.set_exception(PoolClosedError("the pool stopped with the call in flight"))
            raise
        self._scope = None
        if not self.set_running_or_notify_cancel():
            return  # cancelled: wait() and as_completed() are told now
        if error is not None:
            self.set_exception(error)
        else:
            self.set_result(value)

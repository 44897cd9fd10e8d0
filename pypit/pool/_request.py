"""A call on its way, and what the scheduler needs of a worker to place it.

:class:`Request` is the one record of a call, from the moment it is encoded
until its caller has the answer; it settles itself (:meth:`Request.succeed`,
:meth:`Request.fail`, :meth:`Request.end`). :class:`Worker` is the narrow view
of a worker that the scheduler places calls on: the parent's handle of a local
process implements it, and so can a fake in tests.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from pypit import _wire


class Worker(Protocol):
    """What the scheduler reads and counts on a worker, and the two messages it sends."""

    worker_id: str
    slot: int
    pid: int
    accepting: bool
    """Ready, and not stopping, recycling or reconnecting: it may be sent calls."""
    max_concurrency: int
    in_flight: int
    """Calls sent and not answered: running, or waiting in the worker behind them."""
    slow: int
    """Calls in flight of a command not known to be quick: none may wait behind them."""
    withdrawn: int
    """Calls in flight whose callers gave up while they waited here: being dropped."""
    pending: dict[int, Request]
    """The calls in flight by request id, in the order they were sent."""

    def send(self, frame: bytes, *, at_once: bool = False) -> None:
        """Queue a frame to the worker; never blocks. ``at_once``: the worker is idle, so
        the frame is written now rather than with the others of this turn of the loop."""

    def cancel(self, request_id: int, *, if_waiting: bool = False) -> None:
        """Tell the worker to drop the call, or to cancel it if it runs (unless
        ``if_waiting``)."""

    def waiting(self, request: Request) -> bool:
        """Whether ``request`` still waits in the worker behind ``max_concurrency`` calls."""


class Request:
    """One call, from the moment it is encoded until its caller has the answer.

    It waits in the pool's queue (``worker`` is None) or sits in its worker's
    ``pending`` map (``prefetched`` if it was sent while the worker had no free slot:
    then it may still wait there). ``abandoned`` requests (their caller timed out or was
    cancelled) stay there until the worker answers, so the worker's capacity
    stays counted as used.
    """

    __slots__ = (
        "abandoned",
        "arrived",
        "budget",
        "chunks",
        "command",
        "correlation_id",
        "credited",
        "deadline",
        "done",
        "enqueued",
        "error",
        "failed_items",
        "frame",
        "inputs",
        "message",
        "metadata",
        "parts",
        "prefetched",
        "queue_deadline",
        "quick",
        "received",
        "request_id",
        "scope",
        "sent_at",
        "session_id",
        "size",
        "started",
        "target",
        "value",
        "window",
        "withdrawn",
        "worker",
    )

    def __init__(self, command: str, signal: Callable[[], Any], stream: bool = False) -> None:
        self.command = command
        self.done = signal()
        self.value: Any = None
        self.error: BaseException | None = None
        self.size = 0
        self.abandoned = False
        # Streams: chunks (value, size) not yet taken, and what is told of each arrival
        # (a worker, a chunk, the end); ``set()`` is all it has to offer.
        self.chunks: deque[tuple[Any, int]] | None = deque() if stream else None
        self.arrived: Any = None
        # A stream's flow control: the worker may send ``window`` chunks beyond the count
        # ``credited`` to it (the chunks its consumer took); more is a protocol error.
        self.window = 0
        self.received = 0
        self.credited = 0
        self.request_id = 0
        self.correlation_id = ""
        self.session_id: str | None = None
        self.frame = b""
        self.message: _wire.Call | None = None
        self.deadline = math.inf
        self.queue_deadline = math.inf
        # Seconds the call has from the moment it is sent to a worker (0: none); its
        # deadline is set then (a map's frames: time spent behind the map's own frames in
        # the pool's queue does not count).
        self.budget = 0.0
        # A batch call (pool.map) carries several inputs; those whose tool raised.
        self.inputs = 1
        self.failed_items = 0
        # A batch's results that came in parts (``_wire.Results.more``), until the last.
        self.parts: list[_wire.Results] | None = None
        self.enqueued = 0
        self.started = 0
        self.sent_at = 0
        # Sent to a worker that had no free slot: it waits there, and counts as queued.
        self.prefetched = False
        self.quick = False
        # Its caller gave up while it waited in the worker, which is told to drop it.
        self.withdrawn = False
        self.metadata: dict[str, Any] = {}
        self.scope: anyio.CancelScope | None = None
        self.worker: Worker | None = None
        self.target: Worker | None = None

    def succeed(self, value: Any, size: int) -> None:
        """Settle with the worker's result (``size`` bytes on the wire) and wake the caller."""
        self.value = value
        self.size = size
        self.done.set()

    def fail(self, error: BaseException) -> None:
        """Settle with an error and wake the caller (or the stream's consumer)."""
        self.error = error
        self.done.set()
        if self.arrived is not None:
            self.arrived.set()

    def end(self) -> None:
        """Settle a call that ended without a value (a stream's end, a dropped call)."""
        self.done.set()
        if self.arrived is not None:
            self.arrived.set()

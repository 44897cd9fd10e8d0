"""``capture``: collect the events emitted while a block runs, for tests and debugging.

The Python counterpart of ``:telemetry_test``: attach a collector to some
events, read back what was emitted, and the collector is detached on exit.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

import anyio
import attrs

from pypit._checks import check_seconds
from pypit.telemetry._registry import (
    EventName,
    Measurements,
    Metadata,
    attach_many,
    detach,
    event_name,
)

_ids = itertools.count(1)


@attrs.frozen
class CapturedEvent:
    """One event as a handler saw it (measurements and metadata copied)."""

    event: EventName
    measurements: dict[str, Any]
    metadata: dict[str, Any]


class Capture:
    """The events emitted on the captured names, in emission order.

    Thread-safe: events emitted from other threads (the blocking pool facade
    runs its loop in one) are recorded too, and :meth:`wait_sync` /
    :meth:`wait` block until enough of them arrived.
    """

    def __init__(self, events: Iterable[EventName | list[str]]) -> None:
        self._names = tuple(dict.fromkeys(event_name(e) for e in events))
        if not self._names:
            raise ValueError("capture needs at least one event name")
        self._id = f"pypit.capture.{next(_ids)}"
        self._events: list[CapturedEvent] = []
        self._changed = threading.Condition()
        self._attached = False

    @property
    def events(self) -> list[CapturedEvent]:
        """A copy of everything captured so far."""
        with self._changed:
            return list(self._events)

    def named(self, *event: str) -> list[CapturedEvent]:
        """The captured events whose name is ``event``."""
        return [e for e in self.events if e.event == event]

    def clear(self) -> None:
        """Forget what was captured so far."""
        with self._changed:
            self._events.clear()

    def _record(
        self, event: EventName, measurements: Measurements, metadata: Metadata, _config: Any
    ) -> None:
        captured = CapturedEvent(event, dict(measurements), dict(metadata))
        with self._changed:
            self._events.append(captured)
            self._changed.notify_all()

    def _count(self, predicate: Callable[[CapturedEvent], bool]) -> int:
        return sum(1 for e in self._events if predicate(e))

    def wait_sync(
        self,
        event: EventName,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[CapturedEvent]:
        """Block this thread until ``count`` events named ``event`` were captured.

        Raises ``TimeoutError`` after ``timeout`` seconds (0 to 1e9). Do not call it on
        the thread that emits the events.
        """
        check_seconds("timeout", timeout, positive=False)
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._count(lambda e: e.event == event) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{count} x {event} not captured within {timeout}s")
                self._changed.wait(remaining)
        return self.named(*event)

    async def wait(
        self,
        event: EventName,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[CapturedEvent]:
        """Wait, without blocking the event loop, until ``count`` events named ``event`` arrive.

        Raises ``TimeoutError`` after ``timeout`` seconds (0 to 1e9).
        """
        check_seconds("timeout", timeout, positive=False)
        with anyio.move_on_after(timeout):
            while len(self.named(*event)) < count:
                await anyio.sleep(0.005)
            return self.named(*event)
        raise TimeoutError(f"{count} x {event} not captured within {timeout}s")

    def __enter__(self) -> Capture:
        attach_many(self._id, self._names, self._record)
        self._attached = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._attached:
            self._attached = False
            detach(self._id)

    def __iter__(self) -> Iterator[CapturedEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        with self._changed:
            return len(self._events)


def capture(*events: EventName | list[str]) -> Capture:
    """Capture the events named ``events`` while a ``with`` block runs.

    ::

        with capture(("pypit", "pool", "status")) as seen:
            pool.emit_status()
        assert seen.named("pypit", "pool", "status")
    """
    return Capture(events)

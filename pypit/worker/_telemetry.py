"""Worker-side telemetry state: the correlation id and the outgoing event buffer.

Events emitted inside a worker are appended to a bounded buffer and shipped to
the parent in batches -- ahead of the result of the call that produced them,
and by a timer for events emitted between calls. What does not fit is counted
and reported as ``("pypit", "telemetry", "dropped")``, never lost silently.
"""

from __future__ import annotations

import threading
from collections import Counter
from contextvars import ContextVar
from typing import Any, Final

from pypit import _wire

DEFAULT_BUFFER_SIZE: Final = 65_536

correlation_id_var: ContextVar[str | None] = ContextVar("pypit_correlation_id", default=None)


class EventBuffer:
    """A bounded, thread-safe buffer of worker events and drop counts."""

    def __init__(self, capacity: int = DEFAULT_BUFFER_SIZE) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._events: list[tuple[str, dict[str, int | float], dict[str, Any]]] = []
        self._dropped: Counter[tuple[str, str]] = Counter()

    def add(
        self, name: str, measurements: dict[str, int | float], metadata: dict[str, Any]
    ) -> None:
        with self._lock:
            if len(self._events) < self._capacity:
                self._events.append((name, measurements, metadata))
            else:
                self._dropped["buffer_full", name] += 1

    def drop(self, reason: str, name: str, count: int = 1) -> None:
        with self._lock:
            self._dropped[reason, name] += count

    def drain(self) -> _wire.Events | None:
        """Everything buffered since the last drain, as one message, or None."""
        with self._lock:
            if not self._events and not self._dropped:
                return None
            events, self._events = self._events, []
            dropped = [(reason, name, n) for (reason, name), n in self._dropped.items()]
            self._dropped.clear()
        return _wire.Events(events, dropped)

    def __len__(self) -> int:
        return len(self._events)

"""Telemetry inside a worker: ``emit``, ``span``, correlation ids, and the outgoing buffer.

Events emitted inside a worker are checked, sampled, appended to a bounded
buffer and shipped to the pool in batches -- ahead of the result of the call
that produced them, and by a timer for events emitted between calls. The pool
re-emits them as ``("pypit", "python", *name.split("."))``.

Every event is either shipped, filtered on purpose (telemetry disabled, a
deny pattern, not sampled, nobody in the pool listens to that name), or
counted in ``("pypit", "telemetry", "dropped")`` with its reason:
``unknown_event`` (not in the catalog nor allowed), ``invalid_measurements``,
``invalid_metadata``, ``buffer_full``. Nothing is lost silently.

Outside a worker process ``emit`` and ``span`` send nothing (a cheap no-op),
so adapter code can be imported and tested on its own; the correlation id
functions work in any process.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

from pypit import _wire
from pypit._decorate import within
from pypit._shared import (
    CATALOG_NAMES,
    MAX_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_STRING_LENGTH,
    SCALARS,
    correlation_id_var,
    matches,
    valid_name,
)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_BUFFER_SIZE: Final = 65_536
MAX_BATCH: Final = 4096
_SHIP: Final = 1
_IGNORE: Final = 2  # allowed, but filtered on purpose (denied, or nobody listens)
_UNKNOWN: Final = 3
_SCALAR_TYPES: Final = frozenset(SCALARS)

_span_var: ContextVar[str | None] = ContextVar("pypit_span", default=None)
trace_context_var: ContextVar[Mapping[str, str] | None] = ContextVar(
    "pypit_trace_context", default=None
)


class Settings:
    """One immutable set of telemetry settings, swapped whole when the pool changes them."""

    __slots__ = ("allow", "decisions", "deny", "enabled", "listened", "rate")

    def __init__(
        self,
        *,
        enabled: bool = True,
        rate: float = 1.0,
        listened: Iterable[str] = (),
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
    ) -> None:
        self.enabled = enabled
        self.rate = rate
        self.listened = frozenset(listened)
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.decisions: dict[str, int] = {}

    def decide(self, name: str) -> int:
        decision = self.decisions.get(name)
        if decision is not None:
            return decision
        if not valid_name(name):
            return _UNKNOWN
        if name not in CATALOG_NAMES and not matches(name, self.allow):
            decision = _UNKNOWN
        elif matches(name, self.deny) or name not in self.listened:
            decision = _IGNORE
        else:
            decision = _SHIP
        if len(self.decisions) < 10_000:
            self.decisions[name] = decision
        return decision

    def sampled(self, correlation_id: str | None) -> bool:
        """Keep this event? Decided per correlation id, so a call's events go together."""
        if self.rate >= 1.0:
            return True
        if self.rate <= 0.0:
            return False
        if correlation_id is None:
            import random

            return random.random() < self.rate
        return zlib.crc32(correlation_id.encode()) % 10_000 < self.rate * 10_000


def take(items: deque[T], limit: int) -> list[T]:
    """Up to ``limit`` items from the left of ``items``.

    Several threads may take at once (a call's end and the shipper): each pops until the
    deque is empty rather than trusting a length another thread may shrink meanwhile.
    """
    taken: list[T] = []
    popleft = items.popleft
    try:
        for _ in range(limit):
            taken.append(popleft())
    except IndexError:
        pass
    return taken


class EventBuffer:
    """A bounded, thread-safe buffer of worker events and drop counts.

    Adding and draining take no lock: ``deque.append`` and ``popleft`` are
    atomic, so an event is taken by exactly one drain or left for the next
    one, never lost or taken twice, however many threads drain at once. The
    bound is checked without a lock and may be overshot by the few threads
    that pass the check at the same moment.
    """

    def __init__(
        self, capacity: int = DEFAULT_BUFFER_SIZE, filling: threading.Event | None = None
    ) -> None:
        self._capacity = capacity
        self._watermark = min(MAX_BATCH, max(1, capacity // 2))
        self.filling = filling if filling is not None else threading.Event()
        """Set when a batch's worth is waiting: the shipper need not wait for its timer."""
        self._lock = threading.Lock()
        self._events: deque[tuple[str, dict[str, int | float], dict[str, Any]]] = deque()
        self._dropped: Counter[tuple[str, str]] = Counter()

    def add(
        self, name: str, measurements: dict[str, int | float], metadata: dict[str, Any]
    ) -> None:
        events = self._events
        size = len(events)
        if size < self._capacity:
            events.append((name, measurements, metadata))
            if size + 1 == self._watermark:
                self.filling.set()
        else:
            self.drop("buffer_full", name)

    def drop(self, reason: str, name: str, count: int = 1) -> None:
        with self._lock:
            self._dropped[reason, name] += count

    def drain(self, limit: int = MAX_BATCH) -> _wire.Events | None:
        """Up to ``limit`` buffered events and every drop count, as one message, or None."""
        events = self._events
        if not events and not self._dropped:
            # Checked without the lock: a drop counted meanwhile leaves with the next drain.
            return None
        taken = take(events, limit)
        with self._lock:
            dropped = [(reason, name, n) for (reason, name), n in self._dropped.items()]
            self._dropped.clear()
        if not taken and not dropped:
            return None
        return _wire.Events(taken, dropped)

    def __len__(self) -> int:
        return len(self._events)


class WorkerTelemetry:
    """The telemetry of this worker process: its settings and its buffer."""

    def __init__(self, buffer: EventBuffer | None = None) -> None:
        self.settings = Settings()
        self.buffer = buffer if buffer is not None else EventBuffer()

    def ship(
        self, name: str, measurements: dict[str, int | float], metadata: dict[str, Any]
    ) -> None:
        """Ship one of pypit's own events (already well formed), if the settings let it."""
        settings = self.settings
        if not settings.enabled or settings.decide(name) != _SHIP:
            return
        if settings.rate < 1.0 and not settings.sampled(metadata.get("correlation_id")):
            return
        self.buffer.add(name, measurements, metadata)

    def wants(self, name: str) -> bool:
        """Whether an event of that name would be shipped (before sampling)."""
        settings = self.settings
        return settings.enabled and settings.decide(name) == _SHIP


current: WorkerTelemetry | None = None
"""This process's telemetry, set when it runs as a pool's worker."""


def emit(
    name: str,
    measurements: Mapping[str, float],
    metadata: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
) -> None:
    """Emit ``name`` to the pool, where it arrives as ``("pypit", "python", *name.split("."))``.

    ``measurements`` are numbers; ``metadata`` values are str, int, float,
    bool or None (at most 32 keys, strings up to 1024 characters). The
    correlation id of the call being served is added unless one is given (a str:
    anything else raises ``TypeError``, in or out of a worker).
    Accepted names are the catalog's python events and the pool's allowlist.
    The dicts are shipped as given, a moment later: do not change them after
    emitting. Costs well under a microsecond.
    """
    # The checks are written out here rather than called: emit runs in the
    # tool's own code path, and each call would cost a tenth of a microsecond.
    if correlation_id is not None and type(correlation_id) is not str:
        raise TypeError(f"correlation_id must be a str or None, not {correlation_id!r}")
    state = current
    if state is None:
        return
    settings = state.settings
    if not settings.enabled:
        return
    decision = settings.decisions.get(name) or settings.decide(name)
    if decision != _SHIP:
        if decision == _UNKNOWN:
            state.buffer.drop("unknown_event", name if isinstance(name, str) else repr(name))
        return
    try:
        for key, value in measurements.items():
            kind = type(value)
            if (kind is not int and kind is not float) or type(key) is not str:
                state.buffer.drop("invalid_measurements", name)
                return
    except AttributeError:
        state.buffer.drop("invalid_measurements", name)
        return
    if metadata:
        if len(metadata) > MAX_METADATA_KEYS:
            state.buffer.drop("invalid_metadata", name)
            return
        for key, value in metadata.items():
            kind = type(value)
            if (
                kind not in _SCALAR_TYPES
                or (kind is str and len(value) > MAX_STRING_LENGTH)
                or type(key) is not str
                or len(key) > MAX_KEY_LENGTH
            ):
                state.buffer.drop("invalid_metadata", name)
                return
    if correlation_id is None:
        correlation_id = correlation_id_var.get()
    if settings.rate < 1.0 and not settings.sampled(correlation_id):
        return
    if correlation_id is not None:
        metadata = (
            {**metadata, "correlation_id": correlation_id}
            if metadata
            else {"correlation_id": correlation_id}
        )
    elif not metadata:
        metadata = {}
    # EventBuffer.add, written out (see above). The dicts are kept as given,
    # as :telemetry's execute keeps them: do not change them after emitting.
    buffer = state.buffer
    events = buffer._events
    size = len(events)
    if size < buffer._capacity:
        events.append((name, measurements, metadata))  # type: ignore[arg-type]
        if size + 1 == buffer._watermark:
            buffer.filling.set()
    else:
        buffer.drop("buffer_full", name)


def get_trace_context() -> Mapping[str, str] | None:
    """The W3C trace context (``traceparent``, ``tracestate``) the caller's span sent with
    the call being served, or None: worker code with its own OpenTelemetry SDK can
    continue the caller's trace from it."""
    return trace_context_var.get()


def new_correlation_id() -> str:
    """A new random correlation id."""
    return os.urandom(8).hex()


def set_correlation_id(correlation_id: str) -> Token[str | None]:
    """Make ``correlation_id`` current in this context; returns a token for
    :func:`reset_correlation_id`. ``TypeError`` for anything but a str."""
    if type(correlation_id) is not str:
        raise TypeError(f"a correlation id is a str, not {correlation_id!r}")
    return correlation_id_var.set(correlation_id)


def get_correlation_id() -> str | None:
    """The current correlation id: the call's, unless set otherwise."""
    return correlation_id_var.get()


def reset_correlation_id(token: Token[str | None] | None = None) -> None:
    """Undo :func:`set_correlation_id` (with its token), or clear the correlation id."""
    if token is None:
        correlation_id_var.set(None)
    else:
        correlation_id_var.reset(token)


class span:
    """Emit ``name.start``, then ``name.stop`` or ``name.exception``, around some work.

    A context manager (``with`` and ``async with``) and a decorator (plain and
    coroutine functions). The metadata has the shape of the application's
    ``pypit.telemetry.span``, so one handler serves both: every event carries
    ``telemetry_span_context`` (this span's id, a str), and ``exception`` adds
    ``kind`` (``"error"``, or ``"exit"`` for a cancellation), ``error_type``
    and ``error_message``. The exception object itself does not cross the
    process boundary, so there is no ``reason`` or ``stacktrace``. Spans also
    carry ``span_id`` (the same id) and ``parent_span_id`` (the enclosing
    span's, None at the top), so nested spans keep their parent/child
    relation. The exception is always re-raised.
    """

    __slots__ = ("_metadata", "_name", "_started", "_token")

    def __init__(self, name: str, metadata: Mapping[str, Any] | None = None) -> None:
        if not isinstance(name, str):
            raise TypeError(
                f"a worker span's name is a dotted str such as 'inference', not {name!r}; "
                "it arrives in the pool as ('pypit', 'python', *name.split('.'), phase)"
            )
        self._name = name
        self._metadata = dict(metadata) if metadata else {}
        self._started = 0
        self._token: Token[str | None] | None = None

    def __enter__(self) -> span:
        span_id = os.urandom(8).hex()
        self._metadata["telemetry_span_context"] = span_id
        self._metadata["span_id"] = span_id
        self._metadata["parent_span_id"] = _span_var.get()
        self._token = _span_var.set(span_id)
        self._started = time.monotonic_ns()
        emit(f"{self._name}.start", {"system_time": time.time_ns()}, self._metadata)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration = time.monotonic_ns() - self._started
        if self._token is not None:
            _span_var.reset(self._token)
        if exc is None:
            emit(f"{self._name}.stop", {"duration": duration}, self._metadata)
        else:
            try:
                message = str(exc)
            except Exception:
                # The span reports the exception it saw, never raises another.
                message = f"<{type(exc).__name__} whose str() raised>"
            metadata = {
                **self._metadata,
                "kind": "error" if isinstance(exc, Exception) else "exit",
                "error_type": type(exc).__name__,
                "error_message": message[:MAX_STRING_LENGTH],
            }
            emit(f"{self._name}.exception", {"duration": duration}, metadata)

    async def __aenter__(self) -> span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        name, metadata = self._name, self._metadata
        return within(lambda: span(name, metadata), function)

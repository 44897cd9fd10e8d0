"""``span``: a start event, then a stop or an exception event, with ``:telemetry``'s keys."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, overload

from pypit._decorate import within
from pypit.telemetry import _registry
from pypit.telemetry._registry import (
    EventName,
    Measurements,
    Metadata,
    _dispatch,
    _handler_failed,
    event_name,
)

P = ParamSpec("P")
R = TypeVar("R")

SPAN_CONTEXT_KEY: Final = "telemetry_span_context"

_next_context = itertools.count(1).__next__
_monotonic_ns = time.monotonic_ns
_time_ns = time.time_ns
_Events = tuple[EventName, EventName, EventName]
# Validating a prefix and building its three names costs more than the rest
# of a span, so the names of recently used prefixes are kept.
_known_prefixes: dict[EventName, _Events] = {}
_MAX_KNOWN_PREFIXES: Final = 1024


def error_message(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception cannot say it: a span reports the
    exception it saw and must never raise another in its place."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose str() raised>"


def _events(value: EventName | list[str]) -> _Events:
    prefix = event_name(value)
    events = ((*prefix, "start"), (*prefix, "stop"), (*prefix, "exception"))
    if len(_known_prefixes) < _MAX_KNOWN_PREFIXES:
        _known_prefixes[prefix] = events
    return events


class Span:
    """One span: ``prefix + ("start",)`` on entry, ``("stop",)`` or ``("exception",)`` on exit.

    Use it with ``with`` or ``async with``. The stop event's metadata is the
    start metadata unless :meth:`set_stop_metadata` replaces it (the two are
    never merged, as in ``:telemetry``); :meth:`add_measurements` adds
    measurements to the stop event, which cannot override ``duration`` or
    ``monotonic_time``. An exception is reported and always re-raised. A span is entered
    once: entering it again raises ``TypeError``.
    """

    # No __slots__: the class-level defaults below make the two rarely set
    # attributes free to leave unset, which costs less than initialising slots.
    _stop_metadata: Metadata | None = None
    _extra: Measurements | None = None
    _start_time = -1

    def __init__(self, prefix: EventName | list[str], start_metadata: Metadata | None = None):
        try:
            self._events = _known_prefixes[prefix]  # type: ignore[index]
        except (KeyError, TypeError):
            self._events = _events(prefix)
        if start_metadata is None:
            self._start_metadata: Metadata = {SPAN_CONTEXT_KEY: _next_context()}
        elif SPAN_CONTEXT_KEY in start_metadata:
            self._start_metadata = start_metadata
        else:
            self._start_metadata = {**start_metadata, SPAN_CONTEXT_KEY: _next_context()}

    @property
    def context(self) -> Any:
        """The span's ``telemetry_span_context``, shared by its start and stop/exception events."""
        return self._start_metadata[SPAN_CONTEXT_KEY]

    def set_stop_metadata(self, metadata: Metadata) -> None:
        """Use ``metadata`` (plus the span context) as the stop event's metadata."""
        if SPAN_CONTEXT_KEY in metadata:
            self._stop_metadata = metadata
        else:
            self._stop_metadata = {**metadata, SPAN_CONTEXT_KEY: self.context}

    def add_measurements(self, measurements: Measurements) -> None:
        """Add measurements to the stop event (``duration``/``monotonic_time`` always win)."""
        self._extra = {**self._extra, **measurements} if self._extra else dict(measurements)

    def __enter__(self) -> Span:
        if self._start_time >= 0:
            raise TypeError("a span is entered once; call span() again for a new one")
        self._start_time = now = _monotonic_ns()
        event = self._events[0]
        entries = _registry._table.get(event)
        if entries:
            # The dispatch loop is inlined: a span is two events, and a call
            # per event is a tenth of the span's cost.
            measurements = {"monotonic_time": now, "system_time": _time_ns()}
            metadata = self._start_metadata
            for function, config, handler_id in entries:
                try:
                    function(event, measurements, metadata, config)
                except Exception as error:
                    _handler_failed(handler_id, event, config, error)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        now = _monotonic_ns()
        if exc is None:
            event = self._events[1]
            entries = _registry._table.get(event)
            if not entries:
                return
            if self._extra:
                measurements = {
                    **self._extra,
                    "duration": now - self._start_time,
                    "monotonic_time": now,
                }
            else:
                measurements = {"duration": now - self._start_time, "monotonic_time": now}
            metadata = self._stop_metadata or self._start_metadata
            for function, config, handler_id in entries:
                try:
                    function(event, measurements, metadata, config)
                except Exception as error:
                    _handler_failed(handler_id, event, config, error)
        else:
            event = self._events[2]
            entries = _registry._table.get(event)
            if not entries:
                return
            _dispatch(
                entries,
                event,
                {"duration": now - self._start_time, "monotonic_time": now},
                {
                    **self._start_metadata,
                    "kind": "error" if isinstance(exc, Exception) else "exit",
                    "reason": exc,
                    "stacktrace": tb,
                    "error_type": type(exc).__name__,
                    "error_message": error_message(exc),
                },
            )

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        """Use the span as a decorator: every call of ``function`` runs in a new span.

        Works on plain functions and on coroutine functions.
        """
        prefix = self._events[0][:-1]
        start_metadata = {k: v for k, v in self._start_metadata.items() if k != SPAN_CONTEXT_KEY}
        return within(lambda: Span(prefix, start_metadata), function)


SpanResult = tuple[R, Metadata] | tuple[R, Measurements, Metadata]


@overload
def span(prefix: EventName | list[str], start_metadata: Metadata | None = None) -> Span: ...


@overload
def span(
    prefix: EventName | list[str],
    start_metadata: Metadata | None,
    function: Callable[[], SpanResult[R]],
) -> R: ...


def span(
    prefix: EventName | list[str],
    start_metadata: Metadata | None = None,
    function: Callable[[], SpanResult[R]] | None = None,
) -> Span | R:
    """Emit a span of events around some work.

    Three forms:

    * ``with span(prefix, meta) as s: ...`` (also ``async with``);
    * ``@span(prefix, meta)`` on a function or coroutine function;
    * ``span(prefix, meta, fn)``, where ``fn()`` returns ``(result,
      stop_metadata)`` or ``(result, extra_measurements, stop_metadata)``;
      ``result`` is returned.

    Events: ``prefix + ("start",)`` with ``monotonic_time, system_time``;
    ``prefix + ("stop",)`` with ``duration, monotonic_time`` (plus extra
    measurements); ``prefix + ("exception",)`` with ``duration,
    monotonic_time`` and the start metadata plus ``kind`` (``"error"`` for an
    ``Exception``, ``"exit"`` for cancellation and other ``BaseException``),
    ``reason`` (the exception) and ``stacktrace`` (its traceback), as in
    ``:telemetry``, and ``error_type`` and ``error_message`` (its class name
    and its text, both str), the keys a worker's span reports a failure with.
    Each span gets a fresh ``telemetry_span_context`` unless the start
    metadata has one.
    """
    current = Span(prefix, start_metadata)
    if function is None:
        return current
    with current:
        returned = function()
        if not isinstance(returned, tuple) or len(returned) not in (2, 3):
            raise TypeError(
                "a span function returns (result, stop_metadata) or "
                f"(result, extra_measurements, stop_metadata), not {returned!r}"
            )
        if len(returned) == 3:
            current.add_measurements(returned[1])
        current.set_stop_metadata(returned[-1])
        return returned[0]

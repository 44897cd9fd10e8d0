"""What leaves a worker: frames from any thread, coalesced, in the order they were made.

Writes from any thread go through :meth:`Outbox.send`: the thread that finds
the channel idle writes everything queued so far in one system call, and the
others just queue. What the worker's code logged, printed and emitted is
queued ahead of each answer, in the same critical section, so it reaches the
pool before the answer of the call that produced it, whichever thread ships
it. A result may be held back to leave with the next call's (under load,
results leave in batches); the flusher thread releases it after a
millisecond at most, and ships output and telemetry produced between calls.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Final

from pypit import _wire
from pypit._errors import FrameTooLargeError, SerializationError
from pypit.worker import _batch, _logging, _telemetry

_FLUSH_INTERVAL: Final = 0.05
_HOLD_FOR_CALLS_UNDER: Final = 100_000  # ns
_HOLD_AT_MOST: Final = 1_000_000  # ns


class Unsendable(Exception):
    """Raised inside a stream whose chunk cannot be encoded: the stream ends with ``reply``."""

    def __init__(self, reply: _wire.Error) -> None:
        super().__init__(reply.message)
        self.reply = reply


class Outbox:
    """The frames on their way to the pool, and the output and telemetry that go first.

    ``running`` is the worker's map of calls in progress: a call leaves it in the same
    critical section as its answer is queued, so that a reconnection names exactly the
    calls whose answers have not left (:meth:`unanswered`).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_frame_size: int,
        running: dict[int, Any],
        output: _logging.OutputBuffer,
        events: _telemetry.EventBuffer,
        holding: threading.Event,
    ) -> None:
        self._sock = sock
        self._max_frame_size = max_frame_size
        self._running = running
        self._output = output
        self._events = events
        self._lock = threading.Lock()
        self._frames: list[bytes] = []
        self._answers: list[int] = []
        self._sending_answers: list[int] = []  # answers in the write now under way
        self._flushing = False
        self._broken = False
        self._held_since = 0
        # One event wakes the flusher for both of its reasons: a held result, and a
        # batch of output or telemetry waiting.
        self._holding = holding

    # -- sending ---------------------------------------------------------------------

    def send(self, *frames: bytes, answers: int | None = None, ship: bool = False) -> None:
        """Queue frames and write them, coalesced with whatever other threads queued.

        ``answers`` is the call whose last reply is among the frames: until they
        are written, that call counts as in progress (see :meth:`unanswered`).
        With ``ship``, the output and telemetry waiting go ahead of the frames.
        """
        with self._lock:
            if ship:
                self._frames.extend(self._shipment())
            self._frames.extend(frames)
            if answers is not None:
                self._answers.append(answers)
                self._running.pop(answers, None)
            if self._flushing:
                return
            self._flushing = True
        while True:
            with self._lock:
                if not self._frames or self._broken:
                    self._flushing = False
                    return
                data = b"".join(self._frames)
                self._frames.clear()
                self._sending_answers, self._answers = self._answers, []
            try:
                self._sock.sendall(data)
            except OSError:
                # Kept whole for the next connection: what part of it left
                # went down with the old one.
                with self._lock:
                    self._frames.insert(0, data)
                    self._answers[:0] = self._sending_answers
                    self._sending_answers = []
                    self._broken = True
                    self._flushing = False
                return
            with self._lock:
                self._sending_answers = []

    def send_message(self, message: _wire._Message) -> None:
        self.send(_wire.encode(message, self._max_frame_size))

    def finish(self, message: _wire._Message, *, hold: bool = False) -> None:
        """Send a call's last message, preceded by the output and telemetry it produced
        (a line it left unfinished included).

        With ``hold``, the frames wait for the next ones instead of leaving
        now: under load, results leave in batches.
        """
        call_id: int = getattr(message, "id")  # noqa: B009 - every final reply has an id
        frames = self.encode_reply(message)
        _logging.end_lines()
        if hold:
            with self._lock:
                self._frames.extend(self._shipment())
                self._frames.extend(frames)
                self._answers.append(call_id)
                self._running.pop(call_id, None)
                if not self._held_since:
                    self._held_since = time.monotonic_ns()
                    self._holding.set()
            return
        self._held_since = 0
        self.send(*frames, answers=call_id, ship=True)

    def may_hold(self, typical: float | None) -> bool:
        """Whether a result may wait to leave with the next call's, whose command typically
        takes ``typical`` ns: only if that call is quick and nothing has been held long."""
        if typical is None or typical > _HOLD_FOR_CALLS_UNDER:
            return False
        held = self._held_since
        return not held or time.monotonic_ns() - held < _HOLD_AT_MOST

    # -- the channel broke, and came back ------------------------------------------------

    def unanswered(self) -> list[int]:
        """The calls whose answers have not left: running, queued or being written."""
        with self._lock:
            return sorted({*self._running, *self._answers, *self._sending_answers})

    def reconnected(self, sock: socket.socket) -> None:
        """Write on ``sock`` from now on, starting with what the old connection did not take."""
        with contextlib.suppress(OSError):
            self._sock.close()
        self._sock = sock
        with self._lock:
            self._broken = False
        self.send()

    # -- the flusher thread ------------------------------------------------------------

    def flush(self, stopping: threading.Event) -> None:
        """Ship output and telemetry every _FLUSH_INTERVAL, or as soon as a batch is waiting;
        release results held back longer than _HOLD_AT_MOST; until ``stopping``."""
        wake = self._holding
        while not stopping.is_set():
            if wake.wait(_FLUSH_INTERVAL):
                wake.clear()
                # A result may be held for the next call: it leaves after
                # _HOLD_AT_MOST at the latest, even if that call runs long.
                while held := self._held_since:
                    remaining = _HOLD_AT_MOST - (time.monotonic_ns() - held)
                    if remaining <= 0:
                        self._held_since = 0
                        self.send()
                        break
                    time.sleep(remaining / 1e9)
            self.send(ship=True)

    # -- encoding ------------------------------------------------------------------------

    def _shipment(self) -> list[bytes]:
        """The frames of the output and telemetry waiting, oldest first (the lock is held:
        whatever is queued after them was produced after them)."""
        frames: list[bytes] = []
        while (output := self._output.drain()) is not None:
            frames.extend(self._encode_output(output))
            if len(output.entries) < _logging.MAX_BATCH:
                break
        while (batch := self._events.drain()) is not None:
            frames.extend(self._encode_events(batch))
            if len(batch.events) < _telemetry.MAX_BATCH:
                break
        return frames

    def _encode_events(self, batch: _wire.Events) -> list[bytes]:
        """``batch`` as frames: halves of it, if need be, and an event the wire cannot
        carry (an int out of msgpack's range, a string UTF-8 cannot hold) is dropped and
        counted as ``invalid_measurements`` or ``invalid_metadata``."""
        try:
            return [_wire.encode(batch, self._max_frame_size)]
        except (FrameTooLargeError, SerializationError):
            events = batch.events
            if len(events) > 1:
                half = len(events) // 2
                return [
                    *self._encode_events(_wire.Events(events[:half], batch.dropped)),
                    *self._encode_events(_wire.Events(events[half:])),
                ]
            dropped = list(batch.dropped)
            for name, measurements, _ in events:
                try:
                    _wire.encode(_wire.Events([(name, measurements, {})]))
                except (FrameTooLargeError, SerializationError):
                    dropped.append(("invalid_measurements", _utf8_or_empty(name), 1))
                else:
                    dropped.append(("invalid_metadata", _utf8_or_empty(name), 1))
            return [_wire.encode(_wire.Events([], dropped))]

    def _encode_output(self, output: _wire.Output) -> list[bytes]:
        """``output`` as frames under the size limit: halves of it, if need be; an entry
        too large for a frame of its own is cut to fit (its fields as text), and one that
        still cannot travel is counted as lost."""
        try:
            return [_wire.encode(output, self._max_frame_size)]
        except (FrameTooLargeError, SerializationError):
            entries = output.entries
            if len(entries) > 1:
                half = len(entries) // 2
                return [
                    *self._encode_output(_wire.Output(entries[:half], output.dropped)),
                    *self._encode_output(_wire.Output(entries[half:])),
                ]
            if entries:
                shrunk = _logging.shrink(entries[0], self._max_frame_size)
                with contextlib.suppress(FrameTooLargeError, SerializationError):
                    return [_wire.encode(_wire.Output([shrunk], output.dropped))]
            return [_wire.encode(_wire.Output([], output.dropped + len(entries)))]

    def encode_reply(self, message: _wire._Message) -> list[bytes]:
        """The frames of a call's answer or, if a value in it cannot travel, of the error
        that says so: whatever a tool returned, its call gets an answer. A batch's results
        over the frame size limit go in parts (see ``_wire.Results``), and only a result
        too large alone fails, as its input's error."""
        try:
            return [_wire.encode(message, self._max_frame_size)]
        except (FrameTooLargeError, SerializationError) as exc:
            if isinstance(message, _wire.Results):
                if isinstance(exc, FrameTooLargeError):
                    return self._encode_parts(message, 0)
                return self.encode_reply(_batch.without_unsendable(message))
            return [_wire.encode(unsent(getattr(message, "id", 0), exc))]

    def _encode_parts(self, results: _wire.Results, start: int) -> list[bytes]:
        """``results`` (the values of inputs from ``start`` on) as frames: itself, or its
        halves, each a part; a value too large alone is its input's error."""
        try:
            return [_wire.encode(results, self._max_frame_size)]
        except FrameTooLargeError as exc:
            values, errors = results.values, results.errors
            if len(values) == 1:
                error = _wire.ItemError(start, "too_large", "FrameTooLargeError", str(exc))
                alone = _wire.Results(
                    results.id, [None], [error], results.waited, results.took, results.more
                )
                return [_wire.encode(alone, self._max_frame_size)]
            half = len(values) // 2
            middle = start + half
            first = _wire.Results(
                results.id, values[:half], [e for e in errors if e.index < middle], more=True
            )
            rest = _wire.Results(
                results.id,
                values[half:],
                [e for e in errors if e.index >= middle],
                results.waited,
                results.took,
                results.more,
            )
            return self._encode_parts(first, start) + self._encode_parts(rest, middle)

    def encode_chunk(self, call_id: int, seq: int, value: Any) -> bytes:
        """The frame of a stream's chunk; :class:`Unsendable` if it cannot travel (the
        stream must end there: a chunk after the error would break the protocol)."""
        try:
            return _wire.encode(_wire.Chunk(call_id, seq, value), self._max_frame_size)
        except (FrameTooLargeError, SerializationError) as exc:
            raise Unsendable(unsent(call_id, exc, f"chunk {seq}: ")) from None


def unsent(
    call_id: int, exc: FrameTooLargeError | SerializationError, what: str = ""
) -> _wire.Error:
    """The error that answers a call whose result or chunk cannot travel."""
    if isinstance(exc, FrameTooLargeError):
        return _wire.Error(call_id, "frame_too_large", "FrameTooLargeError", what + str(exc))
    return _wire.Error(call_id, "serialization", "SerializationError", what + str(exc))


def _utf8_or_empty(name: str) -> str:
    """``name`` if msgpack can carry it (UTF-8), else ``""``: a drop is counted under no
    name rather than not at all."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return ""
    return name

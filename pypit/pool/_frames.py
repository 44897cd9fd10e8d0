"""A map's frames: how many inputs a frame takes, and how a chunk of inputs becomes frames.

A frame is one call carrying a chunk of inputs (``_wire.Call.batch``). Its size is the
map's ``chunksize`` or chosen from what the pool learned of the command: quick commands
are chunked, slow ones sent one input a frame. A chunk whose inputs cannot all travel
together is halved until each input that cannot be sent, does not fit the tool's signature
or is over the frame size limit is alone: it is a frame that failed already, and the
others run. Each chunk's types are collected (see ``Calls.request``), except a range's:
its inputs are ints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from typing import TYPE_CHECKING, Any, Final

from pypit import _wire
from pypit._errors import ArgumentsError, FrameTooLargeError, SerializationError, ToolError

if TYPE_CHECKING:
    from pypit.pool._calls import Calls
    from pypit.pool._request import Request

_MAX_CHUNK: Final = 16_384
"""The largest chunk the map chooses by itself for inputs of known length (a ``chunksize``
given may be larger)."""
_MAX_LAZY_CHUNK: Final = 4096
"""The largest chunk the map chooses by itself for inputs of unknown length (an iterator):
what it holds of them, in its window of frames, stays small."""
_FRAMES_PER_SLOT: Final = 4
"""A map of known length is cut in at least this many frames per worker slot, as
``multiprocessing.Pool.map`` cuts its inputs: each worker gets several, so that one slow
frame does not leave the others idle at the end."""
_DEFAULT_TARGET: Final = 500_000
"""ns a chosen chunk aims at when every command is quick (``prefetch_below=0``)."""


class Frame:
    """Inputs ``start`` to ``start + count - 1``, sent as one call (``request``; None for
    an input refused before it was sent, whose ``error`` is already known).

    It is also its request's ``done`` signal (``set``, ``is_set``, ``wait``): the worker
    handle and the scheduler settle a request through it, and it tells its map
    (``on_answer``).
    """

    __slots__ = (
        "_event",
        "_on_answer",
        "_signal",
        "answered",
        "count",
        "error",
        "request",
        "settled",
        "start",
        "value",
        "withdrawn_until",
    )

    def __init__(
        self,
        start: int,
        count: int,
        request: Request | None,
        on_answer: Callable[[Frame], None],
        signal: Callable[[], Any],
    ) -> None:
        self.start = start
        self.count = count
        self.request = request
        self._on_answer = on_answer
        self._signal = signal
        self._event: Any = None
        self.answered = False  # the request is settled (answered, failed or dropped)
        self.settled = request is None  # the map knows its outcome
        self.value: _wire.Results | None = None
        self.error: BaseException | None = None
        self.withdrawn_until = 0.0  # withdrawn from its worker: wait for it until then
        if request is not None:
            request.done = self

    def set(self) -> None:
        if self.answered:
            return
        self.answered = True
        if self._event is not None:
            self._event.set()
        if not self.settled:
            self._on_answer(self)

    def is_set(self) -> bool:
        return self.answered

    async def wait(self) -> None:
        if not self.answered:
            if self._event is None:
                self._event = self._signal()
            await self._event.wait()


class Framer:
    """Makes one map's frames: each a checked, encoded call of ``command`` with a chunk of
    inputs, the map's session and correlation ids, and a budget of ``timeout`` per input."""

    __slots__ = (
        "_calls",
        "_chunksize",
        "_command",
        "_kinds",
        "_max_frame_size",
        "_most",
        "_on_answer",
        "_session_id",
        "_signal",
        "_stop_on_error",
        "_target",
        "_timeout",
        "correlation_id",
        "most_ints",
        "spans",
    )

    def __init__(
        self,
        calls: Calls,
        command: str,
        *,
        chunksize: int | None,
        timeout: float | None,
        session_id: str | None,
        correlation_id: str | None,
        stop_on_error: bool,
        on_answer: Callable[[Frame], None],
        signal: Callable[[], Any],
        inputs: Any = None,
        slots: int = 1,
    ) -> None:
        config = calls.config
        self._calls = calls
        self._command = command
        self._chunksize = chunksize
        self._timeout = timeout
        self._session_id = session_id
        self.correlation_id = correlation_id
        """Every frame's: set before the first frame is made."""
        self._stop_on_error = stop_on_error
        self._on_answer = on_answer
        self._signal = signal
        below = int(config.prefetch_below * 1e9)
        self._target = below // 2 if below else _DEFAULT_TARGET
        self._max_frame_size = config.max_frame_size
        self._kinds = _known_kinds(inputs)
        self.spans = self._kinds is not None
        """Whether the inputs are a range of ints, whose chunks are ranges too."""
        self.most_ints = max(1, (config.max_frame_size - 1024) // 9)
        """The most ints of a range in one frame: as many as a list of them could carry."""
        self._most = _MAX_LAZY_CHUNK
        if isinstance(inputs, Sized):
            self._most = max(1, min(_MAX_CHUNK, -(-len(inputs) // (_FRAMES_PER_SLOT * slots))))

    def chunk(self) -> int:
        """Inputs for the next frame: ``chunksize``, or as many as make a frame that runs
        about half of ``prefetch_below`` by the command's learned cost (one while it has
        none), so that quick commands are chunked and slow ones sent one by one; no more
        than make answers of a quarter of ``max_frame_size`` by the learned size of one
        input's answer, so that a frame's results fit in one frame; and, for inputs of
        known length, no more than make four frames per worker slot."""
        if self._chunksize is not None:
            return self._chunksize
        scheduler = self._calls.scheduler
        cost = scheduler.cost(self._command)
        if cost is None:
            return 1
        chunk = min(self._most, int(self._target / max(cost, 1.0)))
        size = scheduler.result_bytes(self._command)
        if size is not None:
            chunk = min(chunk, int(self._max_frame_size // 4 / max(size, 1.0)))
        return max(1, chunk)

    def frames(self, start: int, chunk: Sequence[Any]) -> list[Frame]:
        """The frames of a chunk: one, unless inputs of it cannot be sent, or together
        they are over the frame size limit (see the module's docstring)."""
        try:
            request = self._calls.request(
                self._command,
                chunk,
                None,
                self._session_id,
                self.correlation_id,
                stream=False,
                batch=True,
                stop_on_error=self._stop_on_error,
                kinds=self._kinds,
            )
        except (SerializationError, FrameTooLargeError, ArgumentsError) as exc:
            # Halves until the inputs that cannot go are alone: each is then a frame that
            # failed already, and the others run.
            if len(chunk) == 1:
                return [self._failed(start, _where(exc, start))]
            half = len(chunk) // 2
            return self.frames(start, chunk[:half]) + self.frames(start + half, chunk[half:])
        request.budget = self._timeout * len(chunk) if self._timeout else 0.0
        return [Frame(start, len(chunk), request, self._on_answer, self._signal)]

    def _failed(self, start: int, error: BaseException) -> Frame:
        """The frame of an input refused before it was sent."""
        frame = Frame(start, 1, None, self._on_answer, self._signal)
        frame.error = error
        return frame


def _known_kinds(inputs: Any) -> set[type] | None:
    """The types of a map's inputs when they are known without looking at them: a range
    gives ints, each of which travels as itself when both ends of the range do."""
    if type(inputs) is not range or (
        inputs and not (inputs[0] in _wire.INTS and inputs[-1] in _wire.INTS)
    ):
        return None
    return {int}


def _where(error: Exception, index: int) -> Exception:
    """The error of input ``index``, which cannot be sent alone, naming it as such."""
    if isinstance(error, ArgumentsError):
        return ArgumentsError(f"inputs[{index}]: {error}")
    message = str(error).replace("args[0]", f"inputs[{index}]")
    if f"inputs[{index}]" not in message:
        message = f"cannot send inputs[{index}]: {message}"
    return type(error)(message)


def item_error(error: _wire.ItemError, start: int) -> Exception:
    """The exception of one input's failure, as the worker described it (``start``: the
    index of its frame's first input)."""
    if error.kind in ("serialization", "too_large"):
        kind = SerializationError if error.kind == "serialization" else FrameTooLargeError
        return kind(
            f"the worker could not send the result of inputs[{start + error.index}]: "
            f"{error.message}"
        )
    return ToolError(error.type, error.message, error.traceback)

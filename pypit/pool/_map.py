"""``pool.map`` and ``pool.map_unordered``: one tool over many inputs, as results.

A map sends its inputs in *frames*: one call carries a chunk of inputs, the worker runs the
tool once per input and answers with one result per input (``_wire.Results``), each a
value or that input's error. A frame is a call like any other for the queue, the
scheduler, deadlines, cancellation and the ``rpc.call`` events; its request counts its
inputs, so that what a command costs is learned per input and a frame is prefetched only
while the whole frame is quick.

The inputs are pulled lazily: at most ``buffersize`` frames are out at once, counted from
the moment a frame is made until the consumer has taken its last result. So a map holds at
most ``buffersize`` frames of inputs and results, however long its iterable, and a consumer
that stops reading stops the map instead of filling memory. Of those, at most two per
worker slot are sent and unanswered (four for quick frames, which wait in their worker):
each worker has its next frame at hand, and the map holds few places in the pool's queue,
ahead of other callers. The rest of the window absorbs a frame that is slow to come back:
``map`` yields in input order, so the frames after it wait, done, without stopping the
workers.

A frame costs no task: its request's ``done`` signal tells the map when the answer came,
and the map's consumer settles it, applying the rules ``Pool.execute`` applies to a call
(``Pool._wait``): a frame past its queue deadline in the pool's queue fails with
``QueueTimeoutError``; one waiting in its worker is withdrawn; one running past its
deadline is cancelled and fails with ``WorkerTimeoutError``. So a frame costs the parent
what a call's wire costs, whatever its size. Leaving the map's block cancels the frames in
flight: a frame that waits is dropped and never runs, a running one stops after the input
that runs (the worker looks between inputs), and the block waits a round trip for the
workers to confirm.
"""

from __future__ import annotations

import importlib
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import anyio
import anyio.lowlevel

from pypit import _wire
from pypit._errors import (
    ArgumentsError,
    FrameTooLargeError,
    PoolClosedError,
    PoolSaturatedError,
    QueueTimeoutError,
    SerializationError,
    ToolError,
    ToolKindError,
    UnknownCommandError,
)
from pypit._shared import correlation_id_var
from pypit.pool import _events
from pypit.pool._channel import signal_factory
from pypit.pool._config import check_timeout
from pypit.pool._request import Request

if TYPE_CHECKING:
    from pypit.pool._pool import Pool

Progress = Callable[[int, int | None], object] | Literal["tqdm", "rich"] | None
"""What ``progress`` takes: a callable ``(done, total)``, ``"tqdm"``, ``"rich"`` or None."""

# How long a frame withdrawn from its worker (its queue deadline passed) may take to be
# confirmed dropped, as for a call (``Pool._WITHDRAW_GRACE``).
_WITHDRAW_GRACE: Final = 0.25
# How long leaving a map's block waits for the workers to confirm that its frames stopped:
# a round trip, unless a sync tool is inside an input (the worker then has cancel_grace).
_CLOSE_GRACE: Final = 0.25
_TAKE_MAX: Final = 16_384
"""Results the blocking facade takes in one hop from the loop, at most."""
_MAX_CHUNK: Final = 4096
"""The largest chunk the map chooses by itself (a ``chunksize`` given may be larger)."""
_DEFAULT_TARGET: Final = 500_000
"""ns a chosen chunk aims at when every command is quick (``prefetch_below=0``)."""
_ENTER_FIRST: Final = (
    "iterate a map inside its block: `async with pool.map(...) as results: "
    "async for result in results: ...`, so that leaving the loop early cancels it at once"
)
_ENTERED: Final = "a map is entered once: call pool.map(...) again for another"
MAP_ENDED: Final = (
    "this map is closed (its block ended, or aclose() was called): iterate a map inside "
    "its block, or call pool.map(...) again"
)


def check_map(
    pool: Pool,
    command: str,
    inputs: Any,
    chunksize: Any,
    buffersize: Any,
    timeout: Any,
    return_exceptions: Any,
    progress: Any,
) -> float | None:
    """Refuse what a map cannot run, before anything is sent; the timeout, as a float."""
    pool._check_open()
    tool = pool._supervisor.tools.get(command)
    if tool is None:
        raise UnknownCommandError(command, tuple(sorted(pool._supervisor.tools)))
    if tool.stream:
        raise ToolKindError(
            f"{command!r} is a stream (a generator tool): map runs tools that return; "
            "use pool.stream() for each input instead"
        )
    if isinstance(inputs, str | bytes) or not isinstance(inputs, Iterable):
        raise TypeError(f"inputs must be an iterable of inputs (not a str), not {inputs!r}")
    for name, value in (("chunksize", chunksize), ("buffersize", buffersize)):
        if value is not None and (type(value) is not int or value < 1):
            kind = ValueError if type(value) is int else TypeError
            raise kind(f"{name} must be an int >= 1 or None, not {value!r}")
    if type(return_exceptions) is not bool:
        raise TypeError(f"return_exceptions must be a bool, not {return_exceptions!r}")
    if progress is not None and not callable(progress) and progress not in ("tqdm", "rich"):
        raise TypeError(
            f"progress must be a callable (done, total), 'tqdm', 'rich' or None, not {progress!r}"
        )
    if progress in ("tqdm", "rich"):
        _import_display(progress)
    return check_timeout(timeout, optional=True)


class _Frame:
    """Inputs ``start`` to ``start + count - 1``, sent as one call (``request``; None for
    an input refused before it was sent, whose ``error`` is already known).

    It is also its request's ``done`` signal (``set``, ``is_set``, ``wait``): the worker
    handle and the scheduler settle a request through it, and it tells its map.
    """

    __slots__ = (
        "_event",
        "_map",
        "answered",
        "count",
        "error",
        "request",
        "settled",
        "start",
        "value",
        "withdrawn_until",
    )

    def __init__(self, start: int, count: int, request: Request | None, owner: Map) -> None:
        self.start = start
        self.count = count
        self.request = request
        self._map = owner
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
            self._map._answered(self)

    def is_set(self) -> bool:
        return self.answered

    async def wait(self) -> None:
        if not self.answered:
            if self._event is None:
                self._event = self._map._signal()
            await self._event.wait()


class Map:
    """The results of one tool over many inputs: an async context manager that is also
    async-iterable. Get one from :meth:`Pool.map <pypit.pool.Pool.map>` (results in the
    order of the inputs) or :meth:`Pool.map_unordered <pypit.pool.Pool.map_unordered>`
    (as they finish)::

        async with pool.map("predict", ({"x": x} for x in range(1000))) as results:
            async for result in results:
                ...

    The map starts when its block starts. Leaving the block -- at the end, by ``break``,
    by an exception or by cancellation -- stops it at once: frames that wait are dropped
    and never run, running ones stop after their current input, and the block waits a
    round trip (0.25 s at most) for the workers to confirm. Iterating without
    ``async with`` raises ``TypeError`` before anything is sent, for the reason a
    :class:`~pypit.pool.Stream` does: ``async for`` never tells its iterator that the
    loop was left early.

    Several tasks may iterate one map: each result goes to one of them.
    """

    __slots__ = (
        "_arrivals",
        "_buffersize",
        "_chunksize",
        "_closed",
        "_command",
        "_correlation_id",
        "_display",
        "_ended",
        "_entered",
        "_exhausted",
        "_finished",
        "_flying",
        "_frames",
        "_held",
        "_input_error",
        "_inputs",
        "_max_frame_size",
        "_next_index",
        "_ordered",
        "_pool",
        "_progress",
        "_raise",
        "_ready",
        "_reported",
        "_return_exceptions",
        "_session_id",
        "_signal",
        "_slots",
        "_stop_at",
        "_target",
        "_timed",
        "_timeout",
        "_unconfirmed",
        "_waiters",
        "done",
        "total",
    )

    def __init__(
        self,
        pool: Pool,
        command: str,
        inputs: Iterable[Any],
        *,
        ordered: bool,
        chunksize: int | None = None,
        buffersize: int | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
        return_exceptions: bool = False,
        progress: Progress = None,
    ) -> None:
        self._timeout = check_map(
            pool, command, inputs, chunksize, buffersize, timeout, return_exceptions, progress
        )
        for name, value in (("session_id", session_id), ("correlation_id", correlation_id)):
            if value is not None and type(value) is not str:
                raise TypeError(f"{name} must be a str or None, not {value!r}")
        config = pool.config
        self._pool = pool
        self._command = command
        self._ordered = ordered
        self._chunksize = chunksize
        self._slots = config.size * config.max_concurrency
        self._buffersize = buffersize or 8 * self._slots
        below = int(config.prefetch_below * 1e9)
        self._target = below // 2 if below else _DEFAULT_TARGET
        self._max_frame_size = config.max_frame_size
        self._session_id = session_id
        self._correlation_id = correlation_id
        self._return_exceptions = return_exceptions
        self._progress = progress
        self._display: Display | None = None
        self.total: int | None = len(inputs) if isinstance(inputs, Sized) else None
        """How many inputs there are, if the iterable knows (``len()``); else None."""
        self.done = 0
        """Inputs whose results have arrived (taken or not)."""
        self._reported = -1
        self._inputs: Iterator[Any] = iter(inputs)
        self._next_index = 0
        self._exhausted = False
        self._input_error: BaseException | None = None
        self._frames: deque[_Frame] = deque()  # created and not loaded, in input order
        self._finished: deque[_Frame] = deque()  # settled and not loaded, as they settled
        self._flying: set[_Frame] = set()  # submitted, not settled yet
        self._arrivals: list[_Frame] = []  # answered, to be settled by the consumer
        self._unconfirmed: list[_Frame] = []  # cancelled on their worker, not answered yet
        # Whether frames have deadlines to watch: a timeout, or the pool's queue_timeout.
        self._timed = self._timeout is not None or config.queue_timeout is not None
        self._held: deque[_Frame] = deque()  # made, not sent: the pool's queue was full
        self._stop_at: int | None = None  # the input of the first error (default mode)
        self._ready: deque[Any] = deque()
        self._raise: BaseException | None = None
        self._entered = False
        self._ended = False  # it raised its error: the iteration is over
        self._closed = False
        self._signal: Callable[[], Any] = anyio.Event
        self._waiters: list[Any] = []

    # -- the block ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise TypeError(_ENTERED)
        self._entered = True
        self._signal = signal_factory()
        if self._correlation_id is None:
            from pypit.pool._pool import new_correlation_id

            # One correlation id for the whole map: the caller's, or a new one.
            self._correlation_id = correlation_id_var.get() or new_correlation_id()
        try:
            if self._progress in ("tqdm", "rich"):
                self._display = Display(str(self._progress), self.total, self._command)
            self._report()
            self._refill()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._close(exc)

    def __aiter__(self) -> Self:
        self._check_iterable()
        return self

    async def __anext__(self) -> Any:
        ready = self._ready
        if ready:
            return ready.popleft()
        return await self._next()

    async def aclose(self) -> None:
        """Stop the map, as leaving its block does; nothing happens the second time."""
        await self._close(None)

    async def _close(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._ready.clear()
        self._held.clear()
        self._wake()
        self._cancel(lambda frame: True, exc)
        try:
            # The workers confirm that the frames stopped, so that they serve at once.
            with anyio.move_on_after(_CLOSE_GRACE, shield=True):
                for frame in self._unconfirmed:
                    await frame.wait()
        finally:
            if self._display is not None:
                self._display.close()

    # -- taking results ----------------------------------------------------------------

    def _check_iterable(self) -> None:
        if not self._entered:
            raise TypeError(_ENTER_FIRST)
        if self._closed:
            raise TypeError(MAP_ENDED)

    async def _next(self) -> Any:
        self._check_iterable()
        await anyio.lowlevel.checkpoint_if_cancelled()
        while not (self._closed or self._ended):
            self._settle_answers()
            if self._timed:
                self._expire()
            self._report()
            if self._ready:
                return self._ready.popleft()
            if self._raise is not None:
                error, self._raise = self._raise, None
                self._stop()
                raise error
            frame = self._take_frame()
            if frame is not None:
                self._load(frame)
                self._refill()
                continue
            if not self._frames and self._exhausted:
                if self._input_error is not None:
                    error, self._input_error = self._input_error, None
                    raise error
                break
            self._refill()
            await self._wait()
        raise StopAsyncIteration

    async def _take(self) -> list[Any]:
        """The next result and every other one that came already, in order, up to
        ``_TAKE_MAX`` (the blocking facade's batch: one thread hop for all of them); an
        empty list at the end. An error is raised by the next call."""
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            return []
        batch = [first]
        ready = self._ready
        while True:
            batch.extend(ready)
            ready.clear()
            if len(batch) >= _TAKE_MAX or self._raise is not None:
                break
            self._settle_answers()
            frame = self._take_frame()
            if frame is None:
                break
            self._load(frame)
        self._refill()
        return batch

    def _take_frame(self) -> _Frame | None:
        """The next frame whose results are due and have arrived, if any."""
        if self._ordered:
            frames = self._frames
            if frames and frames[0].settled:
                return frames.popleft()
            return None
        if self._finished:
            frame = self._finished.popleft()
            self._frames.remove(frame)
            return frame
        return None

    def _load(self, frame: _Frame) -> None:
        """Put a settled frame's results in the queue of results to take; in the default
        mode, an error ends them, to be raised once those before it are taken."""
        stop = not self._return_exceptions
        if frame.value is None:
            error = frame.error or PoolClosedError(
                f"pool {self._pool.name!r} stopped with the call in flight"
            )
            if stop:
                self._raise = error
            else:
                self._ready.extend(itertools.repeat(error, frame.count))
            return
        results = frame.value
        if not results.errors:
            self._ready.extend(results.values)
        elif stop:
            first = results.errors[0]
            self._ready.extend(itertools.islice(results.values, first.index))
            self._raise = _item_error(first)
        else:
            values = list(results.values)
            for failure in results.errors:
                values[failure.index] = _item_error(failure)
            self._ready.extend(values)

    def _report(self) -> None:
        """Tell the progress callback or display, in the consumer's task, if more is done."""
        if self.done == self._reported:
            return
        self._reported = self.done
        if self._display is not None:
            self._display.update(self.done)
        elif callable(self._progress):
            self._progress(self.done, self.total)

    async def _wait(self) -> None:
        """Wait until a frame is answered, or the next deadline of one passes."""
        waiter = self._signal()
        self._waiters.append(waiter)
        deadline = self._deadline() if self._timed else math.inf
        if deadline == math.inf:
            await waiter.wait()
            return
        with anyio.CancelScope(deadline=deadline):
            await waiter.wait()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.set()

    # -- sending inputs ----------------------------------------------------------------

    def _refill(self) -> None:
        """Send frames while fewer than ``buffersize`` are out (the one being taken
        included) and fewer than two per worker slot wait for their answers, and the
        inputs last; first those held back by a full queue."""
        held = self._held
        while held:
            if not self._needed(held[0]):
                held.clear()
            elif not self._sent(held[0]):
                return
            else:
                held.popleft()
        out = len(self._frames) + (1 if self._ready else 0)
        size = self._chunk()
        sending = min(self._buffersize, self._sending(size))
        while (
            out < self._buffersize
            and len(self._flying) < sending
            and not self._exhausted
            and not held
        ):
            try:
                chunk = list(itertools.islice(self._inputs, size))
            except Exception as exc:
                # Raised once every result before it was taken.
                self._input_error = exc
                chunk = []
            if not chunk:
                self._exhausted = True
                return
            start = self._next_index
            self._next_index += len(chunk)
            for frame in self._make_frames(start, chunk):
                if not self._needed(frame):
                    return
                self._frames.append(frame)
                out += 1
                if frame.request is None:
                    self._settled(frame)
                elif held or not self._sent(frame):
                    held.append(frame)

    def _sending(self, size: int) -> int:
        """Frames sent and not answered, at most: two per worker slot, one running and the
        next at hand in the pool's queue, so that a map holds few places in it, ahead of
        other callers; four for frames quick enough to wait in their worker (prefetch),
        which keep it busy while answers travel and the consumer catches up."""
        quick = self._pool._scheduler.is_quick(self._command, size)
        return (4 if quick else 2) * self._slots

    def _needed(self, frame: _Frame) -> bool:
        """Whether a frame's results may still be taken: after an error, in the default
        mode, only those before it in input order (none, unordered)."""
        stop = self._stop_at
        return stop is None or (self._ordered and frame.start < stop)

    def _chunk(self) -> int:
        """Inputs for the next frame: ``chunksize``, or as many as make a frame that runs
        about half of ``prefetch_below`` by the command's learned cost (one while it has
        none), so that quick commands are chunked and slow ones sent one by one; and no
        more than make answers of a quarter of ``max_frame_size`` by the learned size of
        one input's answer, so that a frame's results fit in one frame."""
        if self._chunksize is not None:
            return self._chunksize
        scheduler = self._pool._scheduler
        cost = scheduler.cost(self._command)
        if cost is None:
            return 1
        chunk = min(_MAX_CHUNK, int(self._target / max(cost, 1.0)))
        size = scheduler.result_bytes(self._command)
        if size is not None:
            chunk = min(chunk, int(self._max_frame_size // 4 / max(size, 1.0)))
        return max(1, chunk)

    def _make_frames(self, start: int, chunk: list[Any]) -> list[_Frame]:
        """The frames of a chunk: one, unless inputs of it cannot be sent (each is then a
        frame of its own that failed already) or together they are over the frame size
        limit (then halves)."""
        try:
            request = self._pool._request(
                self._command,
                chunk,
                None,
                self._session_id,
                self._correlation_id,
                stream=False,
                batch=True,
                stop_on_error=not self._return_exceptions,
            )
        except FrameTooLargeError as exc:
            if len(chunk) == 1:
                return [self._failed(start, exc)]
            half = len(chunk) // 2
            return self._make_frames(start, chunk[:half]) + self._make_frames(
                start + half, chunk[half:]
            )
        except SerializationError as exc:
            if len(chunk) == 1:
                return [self._failed(start, _where(exc, start))]
            return self._make_frames_apart(start, chunk)
        except ArgumentsError as exc:
            # An input that does not fit the tool's signature fails alone, as one that
            # cannot travel does: each input of this chunk goes in a frame of its own.
            if len(chunk) == 1:
                return [self._failed(start, ArgumentsError(f"inputs[{start}]: {exc}"))]
            return [f for i, v in enumerate(chunk) for f in self._make_frames(start + i, [v])]
        request.budget = self._timeout * len(chunk) if self._timeout else 0.0
        return [_Frame(start, len(chunk), request, self)]

    def _make_frames_apart(self, start: int, chunk: list[Any]) -> list[_Frame]:
        """Frames of the inputs that can be sent, in runs between those that cannot."""
        frames: list[_Frame] = []
        run: list[Any] = []
        for offset, value in enumerate(chunk):
            try:
                _wire.check(value, f"inputs[{start + offset}]")
            except SerializationError as exc:
                if run:
                    frames += self._make_frames(start + offset - len(run), run)
                    run = []
                frames.append(self._failed(start + offset, exc))
            else:
                run.append(value)
        if run:
            if len(run) == len(chunk):  # refused by the encoder alone: one at a time
                return [f for i, v in enumerate(chunk) for f in self._make_frames(start + i, [v])]
            frames += self._make_frames(start + len(chunk) - len(run), run)
        return frames

    def _sent(self, frame: _Frame) -> bool:
        """:meth:`_send`; an error of the pool (closed, degraded ...) ends the map."""
        try:
            return self._send(frame)
        except BaseException:
            self._stop()
            raise

    def _send(self, frame: _Frame) -> bool:
        """Submit a frame; False if the queue is full and the map has frames of its own in
        flight (it waits for one of them instead)."""
        request = frame.request
        assert request is not None
        pool = self._pool
        try:
            pool._submit(request, pool.config.affinity, None)
        except PoolSaturatedError:
            if self._flying:
                return False
            raise
        self._flying.add(frame)
        return True

    def _failed(self, start: int, error: BaseException) -> _Frame:
        """The frame of an input refused before it was sent."""
        frame = _Frame(start, 1, None, self)
        frame.error = error
        return frame

    # -- settling frames -----------------------------------------------------------------

    def _answered(self, frame: _Frame) -> None:
        """A frame's request was settled (by its worker, a crash, the pool closing): the
        consumer settles the frame. Called from the pool's own code, so it only notes it."""
        self.done += frame.count
        self._arrivals.append(frame)
        self._wake()

    def _settle_answers(self) -> None:
        """Settle the frames answered since last time, as ``Pool.execute`` settles a call."""
        if not self._arrivals:
            return
        arrivals, self._arrivals = self._arrivals, []
        pool = self._pool
        for frame in arrivals:
            request = frame.request
            if frame.settled or request is None:
                continue
            error = request.error
            if error is None:
                pool._counters["completed"] += 1
                _events.call_stopped(request)
                frame.value = request.value
            else:
                if isinstance(error, QueueTimeoutError):
                    # Its worker dropped it before it started: the pool closed, or it
                    # waited too long.
                    scheduler = pool._scheduler
                    closed = pool._closed
                    error = scheduler.closed_error() if closed else scheduler.queue_timeout(request)
                pool._failed(request, error)
                frame.error = error
            self._settled(frame)

    def _deadline(self) -> float:
        """The next moment a frame in flight must be looked at (the loop's clock)."""
        deadline = math.inf
        for frame in self._flying:
            request = frame.request
            assert request is not None
            worker = request.worker
            if worker is None:
                moment = request.queue_deadline
            elif frame.withdrawn_until:
                moment = frame.withdrawn_until
            elif request.prefetched and worker.waiting(request):
                moment = request.queue_deadline
            else:
                moment = request.deadline
            deadline = min(deadline, moment)
        return deadline

    def _expire(self) -> None:
        """Fail the frames whose deadlines passed, as ``Pool._wait`` does for a call: one
        waiting in the pool's queue never runs (``QueueTimeoutError``); one waiting in its
        worker is withdrawn (the worker drops it, unless it started); one running is
        cancelled (``WorkerTimeoutError``)."""
        now = anyio.current_time()
        scheduler = self._pool._scheduler
        for frame in list(self._flying):
            request = frame.request
            assert request is not None
            worker = request.worker
            if worker is None:
                if now >= request.queue_deadline:
                    self._give_up(frame, scheduler.timed_out(request))
            elif frame.withdrawn_until:
                if now >= frame.withdrawn_until:
                    self._give_up(frame, scheduler.timed_out(request))
            elif request.prefetched and now >= request.queue_deadline and worker.waiting(request):
                scheduler.withdraw(request)
                frame.withdrawn_until = max(request.deadline, now + _WITHDRAW_GRACE)
            elif now >= request.deadline:
                self._give_up(frame, scheduler.timed_out(request))

    def _give_up(self, frame: _Frame, error: BaseException) -> None:
        """Stop waiting for a frame: it fails with ``error`` (its worker cancels or drops
        it), and the map goes on as for any failed frame."""
        self._drop(frame, error)
        self._settled(frame)

    def _drop(self, frame: _Frame, error: BaseException) -> None:
        request = frame.request
        assert request is not None
        frame.settled = True
        frame.error = error
        self._flying.discard(frame)
        if request.worker is not None and not frame.answered:
            if len(self._unconfirmed) > self._buffersize:
                # Kept to the frames still unconfirmed: a long map may cancel many.
                self._unconfirmed = [f for f in self._unconfirmed if not f.answered]
            self._unconfirmed.append(frame)
        self._pool._scheduler.abandon(request)
        self._pool._failed(request, error)

    def _settled(self, frame: _Frame) -> None:
        frame.settled = True
        self._flying.discard(frame)
        if not frame.answered:  # failed here: refused before it was sent, or timed out
            self.done += frame.count
        if not self._ordered:
            self._finished.append(frame)
        if not self._return_exceptions and (
            frame.error is not None or (frame.value is not None and frame.value.errors)
        ):
            # The map stops at its first error: no more inputs, and frames whose results
            # would come after it are not needed.
            self._exhausted = True
            if self._stop_at is None or frame.start < self._stop_at:
                self._stop_at = frame.start
            self._cancel(lambda other: not self._needed(other))
        self._wake()

    # -- stopping ----------------------------------------------------------------------

    def _cancel(self, which: Callable[[_Frame], bool], exc: BaseException | None = None) -> None:
        """Cancel the frames in flight that ``which`` picks. Their ``rpc.call.exception``
        carries ``exc`` when the block was left by a cancellation (or Ctrl-C), as a call's
        would; otherwise ``GeneratorExit``: their consumer stopped, and they failed in
        nothing of their own."""
        if exc is None or isinstance(exc, Exception):
            exc = GeneratorExit("the map stopped before the call's answer")
        for frame in list(self._flying):
            if which(frame):
                self._drop(frame, exc)

    def _stop(self) -> None:
        """The map raised an error: nothing more is sent, what is in flight is cancelled,
        and the iteration is over."""
        self._ended = self._exhausted = True
        self._stop_at = -1
        self._held.clear()
        self._cancel(lambda frame: True)


def _where(error: SerializationError, index: int) -> SerializationError:
    """The error of input ``index`` that cannot be sent, naming it as such."""
    message = str(error).replace("cannot send args[0]", f"cannot send inputs[{index}]", 1)
    return SerializationError(message)


def _item_error(error: _wire.ItemError) -> Exception:
    if error.kind == "serialization":
        return SerializationError(f"the worker could not send the result: {error.message}")
    return ToolError(error.type, error.message, error.traceback)


# -- progress displays ----------------------------------------------------------------------


def _import_display(kind: str) -> Any:
    """The module a display needs, imported only when asked for: neither is a dependency."""
    try:
        return importlib.import_module("tqdm" if kind == "tqdm" else "rich.progress")
    except ImportError:
        raise ImportError(
            f"progress={kind!r} needs the {kind} package, which is not installed "
            f"(pip install {kind}); or pass a callable (done, total)"
        ) from None


class Display:
    """A tqdm or rich progress bar for one map, updated from the consumer's task."""

    __slots__ = ("_bar", "_kind", "_shown", "_task")

    def __init__(self, kind: str, total: int | None, command: str) -> None:
        self._kind = kind
        self._shown = 0
        module = _import_display(kind)
        if kind == "tqdm":
            self._bar = module.tqdm(total=total, desc=command, unit="input")
            self._task = None
        else:
            self._bar = module.Progress()
            self._bar.start()
            self._task = self._bar.add_task(command, total=total)

    def update(self, done: int) -> None:
        if self._kind == "tqdm":
            self._bar.update(done - self._shown)
        else:
            self._bar.update(self._task, completed=done)
        self._shown = done

    def close(self) -> None:
        if self._kind == "tqdm":
            self._bar.close()
        else:
            self._bar.stop()

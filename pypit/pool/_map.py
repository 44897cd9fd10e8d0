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
and the map's consumer settles it, applying the rules a call is settled by
(``Calls.call``): a frame past its queue deadline in the pool's queue fails with
``QueueTimeoutError``; one waiting in its worker is withdrawn; one running past its
deadline is cancelled and fails with ``WorkerTimeoutError``. So a frame costs the parent
what a call's wire costs, whatever its size. Leaving the map's block cancels the frames in
flight: a frame that waits is dropped and never runs, a running one stops after the input
that runs (the worker looks between inputs), and the block waits a round trip for the
workers to confirm.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import anyio
import anyio.lowlevel

from pypit._checks import exact_str
from pypit._errors import (
    PoolClosedError,
    PoolSaturatedError,
    QueueTimeoutError,
    ToolKindError,
)
from pypit._shared import correlation_id_var
from pypit.pool._calls import WITHDRAW_GRACE, new_correlation_id
from pypit.pool._channel import signal_factory
from pypit.pool._config import check_timeout
from pypit.pool._frames import Frame, Framer, item_error
from pypit.pool._progress import Display, Progress, import_display

if TYPE_CHECKING:
    from pypit.pool._calls import Calls


# How long leaving a map's block waits for the workers to confirm that its frames stopped:
# a round trip, unless a sync tool is inside an input (the worker then has cancel_grace).
_CLOSE_GRACE: Final = 0.25
_TAKE_MAX: Final = 65_536
"""Results the blocking facade takes in one hop from the loop: no more frames are added
to a batch once it has this many."""
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
    calls: Calls,
    command: str,
    inputs: Any,
    chunksize: Any,
    buffersize: Any,
    timeout: Any,
    return_exceptions: Any,
    progress: Any,
) -> float | None:
    """Refuse what a map cannot run, before anything is sent; the timeout, as a float."""
    calls.check_open()
    tool = calls.tool(command)
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
        import_display(progress)
    return check_timeout(timeout, optional=True)


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
        "_calls",
        "_closed",
        "_command",
        "_display",
        "_ended",
        "_entered",
        "_exhausted",
        "_finished",
        "_flying",
        "_framer",
        "_frames",
        "_held",
        "_input_error",
        "_inputs",
        "_next_index",
        "_ordered",
        "_progress",
        "_raise",
        "_range",
        "_ready",
        "_reported",
        "_return_exceptions",
        "_signal",
        "_slots",
        "_stop_at",
        "_timed",
        "_timeout",
        "_unconfirmed",
        "_waiters",
        "done",
        "total",
    )

    def __init__(
        self,
        calls: Calls,
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
            calls, command, inputs, chunksize, buffersize, timeout, return_exceptions, progress
        )
        session_id = exact_str("session_id", session_id, optional=True)
        correlation_id = exact_str("correlation_id", correlation_id, optional=True)
        config = calls.config
        self._calls = calls
        self._command = command
        self._ordered = ordered
        self._slots = config.size * config.max_concurrency
        self._buffersize = buffersize or 8 * self._slots
        self._return_exceptions = return_exceptions
        self._framer = Framer(
            calls,
            command,
            chunksize=chunksize,
            timeout=self._timeout,
            session_id=session_id,
            correlation_id=correlation_id,
            stop_on_error=not return_exceptions,
            on_answer=self._answered,
            signal=self._new_signal,
            inputs=inputs,
            slots=self._slots,
        )
        self._progress = progress
        self._display: Display | None = None
        self.total: int | None = len(inputs) if isinstance(inputs, Sized) else None
        """How many inputs there are, if the iterable knows (``len()``); else None."""
        self.done = 0
        """Inputs whose results have arrived (taken or not)."""
        self._reported = -1
        self._inputs: Iterator[Any] = iter(inputs)
        self._range = inputs if type(inputs) is range and self._framer.spans else None
        self._next_index = 0
        self._exhausted = False
        self._input_error: BaseException | None = None
        self._frames: deque[Frame] = deque()  # created and not loaded, in input order
        self._finished: deque[Frame] = deque()  # settled and not loaded, as they settled
        self._flying: set[Frame] = set()  # submitted, not settled yet
        self._arrivals: list[Frame] = []  # answered, to be settled by the consumer
        self._unconfirmed: list[Frame] = []  # cancelled on their worker, not answered yet
        # Whether frames have deadlines to watch: a timeout, or the pool's queue_timeout.
        self._timed = self._timeout is not None or config.queue_timeout is not None
        self._held: deque[Frame] = deque()  # made, not sent: the pool's queue was full
        self._stop_at: int | None = None  # the input of the first error (default mode)
        self._ready: deque[Any] = deque()
        self._raise: BaseException | None = None
        self._entered = False
        self._ended = False  # it raised its error: the iteration is over
        self._closed = False
        self._signal: Callable[[], Any] = anyio.Event
        self._waiters: list[Any] = []

    @property
    def command(self) -> str:
        """The tool the map runs."""
        return self._command

    @property
    def closed(self) -> bool:
        """Whether the map was stopped (its block ended, or ``aclose()`` was called)."""
        return self._closed

    # -- the block ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise TypeError(_ENTERED)
        self._entered = True
        self._signal = signal_factory()
        if self._framer.correlation_id is None:
            # One correlation id for the whole map: the caller's, or a new one.
            self._framer.correlation_id = correlation_id_var.get() or new_correlation_id()
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
            if self._arrivals or self._has_frame() or (not self._frames and self._exhausted):
                # The refill ended the inputs, or made a frame that failed before it was
                # sent: nothing would wake the wait for it.
                continue
            await self._wait()
        raise StopAsyncIteration

    async def _take(self) -> list[list[Any]]:
        """The next result and every other one that came already, in order, up to about
        ``_TAKE_MAX``, as lists to read one after the other: the blocking facade's batch,
        one thread hop for all of them, each frame's results handed over in the list they
        arrived in; an empty list at the end. An error is raised by the next call."""
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            return []
        ready = self._ready
        batch = [[first, *ready]]
        ready.clear()
        taken = len(batch[0])
        while taken < _TAKE_MAX and self._raise is None:
            self._settle_answers()
            frame = self._take_frame()
            if frame is None:
                break
            results = self._results_of(frame)
            batch.append(results)
            taken += len(results)
        self._refill()
        return batch

    def _has_frame(self) -> bool:
        """Whether :meth:`_take_frame` would take a frame."""
        if self._ordered:
            return bool(self._frames) and self._frames[0].settled
        return bool(self._finished)

    def _take_frame(self) -> Frame | None:
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

    def _load(self, frame: Frame) -> None:
        """Put a settled frame's results in the queue of results to take."""
        self._ready.extend(self._results_of(frame))

    def _results_of(self, frame: Frame) -> list[Any]:
        """A settled frame's results to take; in the default mode, an error ends them, to
        be raised once those before it are taken."""
        stop = not self._return_exceptions
        if frame.value is None:
            error = frame.error or PoolClosedError(
                f"pool {self._calls.name!r} stopped with the call in flight"
            )
            if stop:
                self._raise = error
                return []
            return [error] * frame.count
        results = frame.value
        if not results.errors:
            return results.values
        if stop:
            first = results.errors[0]
            self._raise = item_error(first, frame.start)
            return results.values[: first.index]
        values = list(results.values)
        for failure in results.errors:
            values[failure.index] = item_error(failure, frame.start)
        return values

    def _report(self) -> None:
        """Tell the progress callback or display, in the consumer's task, if more is done."""
        if self.done == self._reported:
            return
        self._reported = self.done
        if self._display is not None:
            self._display.update(self.done)
        elif callable(self._progress):
            self._progress(self.done, self.total)

    def _new_signal(self) -> Any:
        return self._signal()

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
        size = self._framer.chunk()
        sending = min(self._buffersize, self._sending(size))
        while (
            out < self._buffersize
            and len(self._flying) < sending
            and not self._exhausted
            and not held
        ):
            chunk = self._chunk(size)
            if not chunk:
                self._exhausted = True
                return
            start = self._next_index
            self._next_index += len(chunk)
            for frame in self._framer.frames(start, chunk):
                if not self._needed(frame):
                    return
                self._frames.append(frame)
                out += 1
                if frame.request is None:
                    self._settled(frame)
                elif held or not self._sent(frame):
                    held.append(frame)

    def _chunk(self, size: int) -> Sequence[Any]:
        """The next ``size`` inputs, or fewer at their end: a slice of a range of ints
        (which travels as its ends), or a list taken from the iterable. An error of the
        iterable ends the inputs after those taken before it, and is raised once every
        result before it was taken."""
        if self._range is not None:
            # No more ints than the same inputs as a list could carry in one frame (9
            # bytes each at most): a worker never takes more in one call for a range.
            size = min(size, self._framer.most_ints)
            return self._range[self._next_index : self._next_index + size]
        chunk: list[Any] = []
        try:
            # extend keeps what it took before the iterable raised: those inputs run.
            chunk.extend(itertools.islice(self._inputs, size))
        except Exception as exc:
            self._input_error = exc
            self._exhausted = True
        return chunk

    def _sending(self, size: int) -> int:
        """Frames sent and not answered, at most: two per worker slot, one running and the
        next at hand in the pool's queue, so that a map holds few places in it, ahead of
        other callers; four for frames quick enough to wait in their worker (prefetch),
        which keep it busy while answers travel and the consumer catches up."""
        quick = self._calls.scheduler.is_quick(self._command, size)
        return (4 if quick else 2) * self._slots

    def _needed(self, frame: Frame) -> bool:
        """Whether a frame's results may still be taken: after an error, in the default
        mode, only those before it in input order (none, unordered)."""
        stop = self._stop_at
        return stop is None or (self._ordered and frame.start < stop)

    def _sent(self, frame: Frame) -> bool:
        """:meth:`_send`; an error of the pool (closed, degraded ...) ends the map."""
        try:
            return self._send(frame)
        except BaseException:
            self._stop()
            raise

    def _send(self, frame: Frame) -> bool:
        """Submit a frame; False if the queue is full and the map has frames of its own in
        flight (it waits for one of them instead)."""
        request = frame.request
        assert request is not None
        calls = self._calls
        try:
            calls.submit(request, calls.config.affinity, None)
        except PoolSaturatedError:
            if self._flying:
                return False
            raise
        self._flying.add(frame)
        return True

    # -- settling frames -----------------------------------------------------------------

    def _answered(self, frame: Frame) -> None:
        """A frame's request was settled (by its worker, a crash, the pool closing): the
        consumer settles the frame. Called from the pool's own code, so it only notes it."""
        self.done += frame.count
        self._arrivals.append(frame)
        self._wake()

    def _settle_answers(self) -> None:
        """Settle the frames answered since last time, as ``Calls.call`` settles a call."""
        if not self._arrivals:
            return
        arrivals, self._arrivals = self._arrivals, []
        calls = self._calls
        for frame in arrivals:
            request = frame.request
            if frame.settled or request is None:
                continue
            error = request.error
            if error is None:
                calls.completed(request)
                frame.value = request.value
            else:
                if isinstance(error, QueueTimeoutError):
                    error = calls.dropped(request)
                calls.failed(request, error)
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
        """Fail the frames whose deadlines passed, as ``Calls.call`` does for a call: one
        waiting in the pool's queue never runs (``QueueTimeoutError``); one waiting in its
        worker is withdrawn (the worker drops it, unless it started); one running is
        cancelled (``WorkerTimeoutError``)."""
        now = anyio.current_time()
        scheduler = self._calls.scheduler
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
                frame.withdrawn_until = max(request.deadline, now + WITHDRAW_GRACE)
            elif now >= request.deadline:
                self._give_up(frame, scheduler.timed_out(request))

    def _give_up(self, frame: Frame, error: BaseException) -> None:
        """Stop waiting for a frame: it fails with ``error`` (its worker cancels or drops
        it), and the map goes on as for any failed frame."""
        self._drop(frame, error)
        self._settled(frame)

    def _drop(self, frame: Frame, error: BaseException) -> None:
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
        self._calls.scheduler.abandon(request)
        self._calls.failed(request, error)

    def _settled(self, frame: Frame) -> None:
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

    def _cancel(self, which: Callable[[Frame], bool], exc: BaseException | None = None) -> None:
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


async def stop(results: Map, exc: BaseException | None) -> None:
    """Stop ``results`` as leaving its block with ``exc`` does: the blocking facade's
    ``__exit__``, so that a Ctrl-C is the reason its frames report."""
    await results._close(exc)


async def take(results: Map) -> list[list[Any]]:
    """The next batch of ``results`` for the blocking facade (``SyncMap``), taken on the
    loop in one hop: see ``Map._take``."""
    return await results._take()

"""One worker process as the pool sees it: its process, its channel, its calls.

Frames from the worker arrive in :meth:`WorkerHandle.on_frame` and settle the
calls in flight. What the worker's code logs and prints arrives on the channel
too (``Output``), ahead of the answer of the call that produced it, and becomes
the pool's records; two drains turn what reaches the worker's stdout and stderr
pipes (C code, child processes, and everything before the worker is ready)
into records, line by line. Nothing the worker sends is trusted: a malformed
frame ends the worker, never the pool.
"""

from __future__ import annotations

import math
import signal
import time
from collections import deque
from collections.abc import AsyncIterable, Callable
from typing import Final

import anyio
import anyio.abc
import attrs

from pypit import _wire
from pypit._errors import (
    FrameTooLargeError,
    PoolClosedError,
    ProtocolError,
    PypitError,
    QueueTimeoutError,
    SerializationError,
    ToolError,
    UnknownCommandError,
    WorkerCrashedError,
)
from pypit._log import _Logger, get_logger
from pypit.pool._channel import Connection
from pypit.pool._events import CONNECTION_ESTABLISHED, CONNECTION_LOST, emit, listened
from pypit.pool._launch import WorkerProcess
from pypit.pool._request import Request

_MAX_LOG_LINE: Final = 65_536
# Fields of a worker's record that only the pool sets, or that would change how the pool's
# own logging reads the record.
_RESERVED: Final = frozenset(
    {"event", "category", "logger", "pool_name", "worker_id", "worker_pid"}
    | {"exc_info", "stack_info"}
)
_STDERR_TAIL: Final = 20
_TRACEBACK: Final = "Traceback (most recent call last):"
_CHAINED: Final = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


@attrs.define(eq=False)
class _Traceback:
    """The lines of a traceback printed so far. It has ended at a line that is neither
    indented, blank nor a link of a chain (``During handling ...``): the exception's own;
    it is logged at the first line after that which does not continue it, or when no
    more lines came with the same read."""

    lines: list[str]
    ended: bool = False

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.ended = bool(line) and not line[0].isspace() and line not in _CHAINED
        if line == _TRACEBACK:
            self.ended = False


_EARLY_LINES: Final = 1000


def error_from_reply(reply: _wire.Error, command: str) -> PypitError:
    """The exception a caller gets for an ``Error`` reply."""
    if reply.kind == "tool":
        return ToolError(reply.type, reply.message, reply.traceback)
    if reply.kind == "unknown_command":
        return UnknownCommandError(command)
    if reply.kind == "serialization":
        return SerializationError(f"the worker could not send the result: {reply.message}")
    if reply.kind == "frame_too_large":
        return FrameTooLargeError(f"the worker's result is too large: {reply.message}")
    if reply.kind == "dropped":
        return QueueTimeoutError(f"{command!r} was withdrawn before it started; it was not run")
    return ToolError(reply.type, reply.message, reply.traceback)


@attrs.define(eq=False)
class WorkerHandle:
    """The parent's side of one worker process, wherever it runs."""

    pool_name: str
    worker_id: str
    process: WorkerProcess
    max_frame_size: int
    on_release: Callable[[WorkerHandle, Request, _wire.Answer | None], None]
    """Called with each call whose answer came, and that answer (None: the answer was lost)."""
    on_events: Callable[[WorkerHandle, _wire.Events], None]
    spawn_started: int
    slot: int = 0
    max_concurrency: int = 1
    slow: int = 0
    withdrawn: int = 0
    """Calls in flight whose callers gave up while they waited here: being dropped."""
    """Calls in flight whose command was not known to be quick when sent: while there is
    one, the worker is sent no call beyond ``max_concurrency`` (see the pool's prefetch)."""
    pid: int = attrs.field(init=False)
    connection: Connection | None = None
    tools: dict[str, _wire.Tool] = attrs.field(factory=dict)
    in_flight: int = 0
    total_commands: int = 0
    ready: bool = False
    accepting: bool = False
    failure: _wire.Failed | None = None
    lost_reason: str | None = None
    ready_at: int = 0
    import_time: int = 0
    setup_time: int = 0
    """Nanoseconds the worker took to import the adapter, and to make it and run its
    ``setup()``, as it reported them."""
    token: str = ""
    recycle_reason: str | None = None
    kill_reason: str | None = None
    pings_sent: int = 0
    pongs_seen: int = 0
    rss_bytes: int = 0
    lost_emitted: bool = False
    lost_at: int = 0
    acked: int = 0
    pending: dict[int, Request] = attrs.field(factory=dict)
    cancel_grace: float = 2.0
    cancelling: dict[int, float] = attrs.field(factory=dict)
    """Calls told to cancel, oldest first, with the time (the loop's clock) by which the
    worker must have answered them: past it, the worker is killed."""
    _cancel_wake: anyio.Event | None = None
    stderr_tail: deque[str] = attrs.field(factory=lambda: deque(maxlen=_STDERR_TAIL))
    tracebacks: dict[str, _Traceback] = attrs.field(factory=dict)
    """Per stream, the lines of a traceback being printed, logged once it is complete."""
    early_stderr: list[str] = attrs.field(factory=list)
    """What the worker wrote to stderr before it was ready, not logged yet."""
    changed: anyio.Event = attrs.field(factory=anyio.Event)
    closing: bool = False
    """Asked to stop: it finishes its calls and exits."""
    log: _Logger = attrs.field(
        default=attrs.Factory(
            lambda self: get_logger(
                "worker",
                pool_name=self.pool_name,
                worker_id=self.worker_id,
                worker_pid=self.process.pid,
            ),
            takes_self=True,
        )
    )
    """The logger of this worker's records, with its pool's and its own ids: at the pool's
    levels, or at the worker's own once it was set."""

    def __attrs_post_init__(self) -> None:
        self.pid = self.process.pid

    # -- the channel ---------------------------------------------------------------

    def send(self, frame: bytes, *, at_once: bool = False) -> None:
        """Queue a frame to the worker (coalesced with others unless ``at_once``, never
        blocks)."""
        if self.connection is not None:
            self.connection.send(frame, at_once=at_once)

    def cancel(self, request_id: int, *, if_waiting: bool = False) -> None:
        """Tell the worker to drop the call (if it has not started) or cancel it (if it
        runs, unless ``if_waiting``). A call cancelled outright must be answered within
        ``cancel_grace``, or :meth:`enforce_cancels` kills the worker."""
        self.send(_wire.encode(_wire.Cancel(request_id, if_waiting=if_waiting)))
        if not if_waiting and request_id not in self.cancelling:
            self.cancelling[request_id] = anyio.current_time() + self.cancel_grace
            if self._cancel_wake is not None:
                self._cancel_wake.set()

    async def enforce_cancels(self) -> None:
        """Kill the worker once a cancelled call is still unanswered ``cancel_grace``
        after the cancel. One task per worker, however many calls are cancelled: their
        deadlines come in the order of the cancels, and an answer forgets its own."""
        while self.process.running:
            if not self.cancelling:
                self._cancel_wake = anyio.Event()
                await self._cancel_wake.wait()
                continue
            request_id, deadline = next(iter(self.cancelling.items()))
            if anyio.current_time() < deadline:
                await anyio.sleep_until(deadline)
                continue
            if self.lost_reason is not None:
                # The channel is down: the cancel did not reach the worker. It is sent
                # again, with a new grace, if the worker reconnects (resume).
                await anyio.sleep(0.05)
                continue
            if request_id in self.pending:
                self.kill("timeout")
                return
            del self.cancelling[request_id]

    def on_lost(self, reason: str) -> None:
        """The channel closed or the worker broke the protocol."""
        if self.lost_reason is None:
            self.lost_at = time.monotonic_ns()
        self.lost_reason = self.lost_reason or reason
        self.accepting = False
        if reason == "protocol_error":
            self.log.error("worker broke the protocol; it is being replaced")
        self.changed.set()

    def on_frame(self, payload: bytes) -> None:
        """Handle one frame from the worker; :class:`ProtocolError` if it is not valid."""
        message = _wire.decode_from_worker(payload)
        match message:
            case _wire.Result():
                if (answered := self.pending.get(message.id)) is not None:
                    answered.size = len(payload) + 4  # learned by the scheduler as it settles
                pending = self._settle(message.id, message)
                if pending.abandoned:
                    pending.end()
                else:
                    pending.succeed(message.value, len(payload) + 4)
            case _wire.Results():
                batch = self.pending.get(message.id)
                if batch is None or batch.message is None or not batch.message.batch:
                    raise ProtocolError(f"results of a batch for call {message.id}, not a batch")
                batch.size += len(payload) + 4  # learned by the scheduler as it settles
                results = _joined(batch, message)
                if results is None:
                    return
                _check_results(results, batch.inputs, batch.message.stop_on_error)
                pending = self._settle(results.id, results)
                if pending.abandoned:
                    pending.end()
                else:
                    pending.failed_items = len(results.errors)
                    pending.succeed(results, batch.size)
            case _wire.Chunk():
                streaming = self.pending.get(message.id)
                if streaming is None or streaming.chunks is None:
                    raise ProtocolError(f"a chunk for call {message.id} that is not a stream")
                if streaming.received >= streaming.credited + streaming.window:
                    raise ProtocolError(
                        f"stream {message.id} sent chunk {streaming.received + 1} with credit "
                        f"for {streaming.credited} and a window of {streaming.window}"
                    )
                streaming.received += 1
                if not streaming.abandoned:
                    streaming.chunks.append((message.value, len(payload) + 4))
                    if streaming.arrived is not None:
                        streaming.arrived.set()
            case _wire.End() | _wire.Error():
                if isinstance(message, _wire.End) and self._streams_not(message.id):
                    raise ProtocolError(f"an end of stream for call {message.id}, not a stream")
                pending = self._settle(message.id, message)
                if isinstance(message, _wire.Error) and not pending.abandoned:
                    pending.fail(error_from_reply(message, pending.command))
                else:
                    # An abandoned call ends too: its caller may wait to know it was dropped.
                    pending.end()
            case _wire.Events():
                self.on_events(self, message)
            case _wire.Output():
                self.on_output(message)
            case _wire.Ready():
                if self.ready:
                    raise ProtocolError("a second Ready")
                self.log_early_stderr()
                self.tools = {t.name: t for t in message.tools}
                self.import_time, self.setup_time = message.import_time, message.setup_time
                self.ready = self.accepting = True
                self.ready_at = time.monotonic_ns()
                self.changed.set()
            case _wire.Failed():
                self.failure = message
                self.changed.set()
            case _wire.Ack():
                self.acked = max(self.acked, message.seq)
            case _wire.Pong():
                if message.seq > self.pings_sent:
                    # Answering pings never sent would switch the heartbeat off.
                    raise ProtocolError(f"a pong for ping {message.seq}, which was not sent")
                self.pongs_seen = max(self.pongs_seen, message.seq)
            case _:
                raise ProtocolError(f"unexpected {type(message).__name__} from a worker")

    def _settle(self, call_id: int, answer: _wire.Answer | None = None) -> Request:
        pending = self.pending.pop(call_id, None)
        if pending is None:
            raise ProtocolError(f"an answer to call {call_id}, which is not in flight")
        self.cancelling.pop(call_id, None)
        if not isinstance(answer, _wire.Error) or answer.kind != "dropped":
            self.total_commands += 1
        self.on_release(self, pending, answer)
        return pending

    def _streams_not(self, call_id: int) -> bool:
        call = self.pending.get(call_id)
        return call is not None and call.chunks is None

    def waiting(self, request: Request) -> bool:
        """Whether ``request`` still waits in the worker for a slot, as far as the pool
        can tell: ``max_concurrency`` calls sent before it are still in flight."""
        for ahead, other in enumerate(self.pending.values()):
            if other is request:
                return ahead >= self.max_concurrency
        return False

    def fail_pending(self, error_for: Callable[[], BaseException]) -> None:
        """Settle every call in flight with an error; the worker is gone."""
        pending, self.pending = self.pending, {}
        self.cancelling.clear()
        for call in pending.values():
            if not call.abandoned:
                call.fail(error_for())
        self.in_flight = self.slow = self.withdrawn = 0

    # -- output ----------------------------------------------------------------

    def on_output(self, output: _wire.Output) -> None:
        """Log what the worker's code printed and logged, in the order it was written."""
        for entry in output.entries:
            if isinstance(entry, _wire.Line):
                self._log_line(entry.stream, entry.text)
            else:
                self._log_record(entry)
        self._end_tracebacks()
        if output.dropped:
            self.log.warning(
                "worker output lost: the worker's buffer was full, or an entry could not be sent",
                lost=output.dropped,
            )

    def _log_record(self, record: _wire.Record) -> None:
        """A record of the worker's code, at its level, with its logger's name and fields;
        the keys the pool sets are the pool's."""
        fields = {
            key: value
            for key, value in record.fields.items()
            if key not in _RESERVED and not key.startswith("_")
        }
        if record.logger:
            fields["logger"] = record.logger
        self.log.log(record.level, record.message, **fields)

    async def drain_output(self, stream: AsyncIterable[bytes] | None, name: str) -> None:
        """Log each line that reaches the worker's ``name`` pipe (stdout or stderr)."""
        if stream is None:
            return
        buffer = b""
        try:
            async for data in stream:
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                if len(buffer) > _MAX_LOG_LINE:
                    lines.append(buffer)
                    buffer = b""
                for raw in lines:
                    self._log_line(name, raw.decode("utf-8", "replace").rstrip("\r"))
                self._end_tracebacks()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        if buffer:
            self._log_line(name, buffer.decode("utf-8", "replace").rstrip("\r"))
        self._end_tracebacks(unfinished_too=True)

    def _log_line(self, name: str, line: str) -> None:
        """One line of the worker's stdout (logged at info) or stderr (at warning)."""
        if name == "stderr":
            self.stderr_tail.append(line)
            if not self.ready:
                # Before the worker is ready its stderr is held: a failed start logs it
                # once, in its own record; a start that succeeds logs it then. Past
                # _EARLY_LINES it is logged as it comes, what was held first.
                if len(self.early_stderr) < _EARLY_LINES:
                    self.early_stderr.append(line)
                    return
                self.log_early_stderr()
        held = self.tracebacks.get(name)
        if held is not None:
            if held.ended and line and line != _TRACEBACK and line not in _CHAINED:
                self._log_traceback(name)
            else:
                held.add(line)
                return
        if line == _TRACEBACK:
            self.tracebacks[name] = _Traceback([line])
            return
        log = self.log.info if name == "stdout" else self.log.warning
        log(line, stream=name)

    def _end_tracebacks(self, *, unfinished_too: bool = False) -> None:
        """Log the tracebacks that ended with the lines received so far (or every one held,
        at the end of the pipe)."""
        for name, held in list(self.tracebacks.items()):
            if held.ended or unfinished_too:
                self._log_traceback(name)

    def _log_traceback(self, name: str) -> None:
        """A traceback printed line by line, as one record: its last line (the exception)
        as the message, the whole of it as ``traceback``."""
        held = self.tracebacks.pop(name)
        text = "\n".join(held.lines).rstrip("\n")
        last = next((line for line in reversed(held.lines) if line.strip()), "")
        log = self.log.info if name == "stdout" else self.log.warning
        log(last, stream=name, traceback=text)

    def log_early_stderr(self) -> None:
        """Log what the worker wrote to stderr while it started (its start succeeded)."""
        early, self.early_stderr = self.early_stderr, []
        for line in early:
            self.log.warning(line, stream="stderr")

    # -- stopping --------------------------------------------------------------

    def kill_group(self, sig: int) -> None:
        """Send ``sig`` to the worker and everything it started (see
        :meth:`~pypit.pool._launch.WorkerProcess.signal_group`)."""
        self.process.signal_group(sig)

    async def reap(self, grace: float) -> int | None:
        """Wait for the process to exit, escalating to SIGTERM and SIGKILL; its return code.

        SIGCONT follows SIGTERM (as systemd sends it): a stopped worker acts on SIGTERM
        at once instead of holding it until SIGKILL, a second ``grace`` later."""
        with anyio.move_on_after(grace):
            return await self.process.wait()
        self.kill_group(signal.SIGTERM)
        self.kill_group(signal.SIGCONT)
        with anyio.move_on_after(grace):
            return await self.process.wait()
        self.kill_group(signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await self.process.wait()
        return self.process.returncode

    def request_stop(self) -> None:
        """Ask the worker to finish and exit."""
        self.closing = True
        self.accepting = False
        self.send(_wire.encode(_wire.Shutdown()))
        self.changed.set()

    def kill(self, reason: str) -> None:
        """Kill the worker now (it hangs or ignores a cancellation); it will be replaced."""
        if self.kill_reason is None and not self.closing:
            self.kill_reason = reason
            self.accepting = False
            self.log.warning("killing worker", reason=reason)
            self.kill_group(signal.SIGKILL)
            self.changed.set()

    def measure_rss(self) -> int:
        """The worker process's resident memory in bytes (the last known if it cannot be
        read now)."""
        self.rss_bytes = self.process.rss() or self.rss_bytes
        return self.rss_bytes

    def resume(self, connection: Connection, running: list[int], configure: bytes) -> None:
        """The worker connected again after its channel broke.

        Calls the worker no longer has in progress lost their answers with
        the old channel: they fail now rather than wait for their deadlines.
        """
        still_running = set(running)
        for request_id in [r for r in self.pending if r not in still_running]:
            request = self._settle(request_id)
            if not request.abandoned:
                request.fail(
                    WorkerCrashedError(
                        f"the channel to worker {self.worker_id} broke and the answer of the "
                        "call was lost with it",
                        worker_id=self.worker_id,
                    )
                )
        self.connection = connection
        self.lost_reason = None
        self.lost_emitted = False
        connection.attach(self.on_frame, self.on_lost)
        if configure:
            connection.send(configure)
        # A credit may have gone down with the old channel: a stream whose worker waits
        # for it would wait forever. The count is cumulative, so sending it again is safe.
        for request in self.pending.values():
            if request.credited:
                connection.send(_wire.encode(_wire.Credit(request.request_id, request.credited)))
        # So may a cancel: a call whose caller gave up while the channel was down is
        # cancelled (or dropped, if it waits) now, and has its cancel_grace from now.
        for request in list(self.pending.values()):
            if request.abandoned:
                self.cancelling.pop(request.request_id, None)
                self.cancel(request.request_id)
            elif (
                request.prefetched
                and request.queue_deadline != math.inf
                and anyio.current_time() >= request.queue_deadline
                and self.waiting(request)
            ):
                self.cancel(request.request_id, if_waiting=True)
        self.accepting = self.recycle_reason is None and not self.closing
        self.changed.set()

    def connection_established(self, duration: int) -> None:
        if listened(CONNECTION_ESTABLISHED):
            emit(
                CONNECTION_ESTABLISHED,
                {"duration": duration, "system_time": time.time_ns()},
                {"pool_name": self.pool_name, "worker_id": self.worker_id, "python_pid": self.pid},
            )

    def connection_lost(self) -> None:
        if self.lost_emitted:
            return
        self.lost_emitted = True
        if listened(CONNECTION_LOST):
            emit(
                CONNECTION_LOST,
                {"system_time": time.time_ns()},
                {
                    "pool_name": self.pool_name,
                    "worker_id": self.worker_id,
                    "python_pid": self.pid,
                    "reason": "shutdown" if self.closing else (self.lost_reason or "closed"),
                },
            )


def describe_exit(returncode: int | None) -> str:
    """How a process ended, from its return code: ``exited with code 1``, ``was killed by
    SIGKILL``."""
    if returncode is not None and returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _joined(batch: Request, part: _wire.Results) -> _wire.Results | None:
    """The whole results of ``batch`` once ``part`` is the last of them (None until then);
    :class:`ProtocolError` for a part that cannot be one: empty, or beyond the inputs."""
    parts = batch.parts
    if parts is None and not part.more:
        return part
    if parts is None:
        parts = batch.parts = []
    parts.append(part)
    values = sum(len(p.values) for p in parts)
    if not part.values or values > batch.inputs:
        raise ProtocolError(
            f"results of batch {part.id} in parts: {values} values for {batch.inputs} inputs"
            + ("" if part.values else ", and an empty part")
        )
    if part.more:
        return None
    batch.parts = None
    return _wire.Results(
        part.id,
        [value for p in parts for value in p.values],
        [error for p in parts for error in p.errors],
        part.waited,
        part.took,
    )


def _check_results(results: _wire.Results, inputs: int, stop_on_error: bool) -> None:
    """:class:`ProtocolError` unless ``results`` answers a batch of ``inputs`` inputs: one
    value per input, or, when it stops at its first error, up to that error; errors in
    order, each naming a value."""
    ran = len(results.values)
    indices = [error.index for error in results.errors]
    stopped = stop_on_error and ran < inputs and bool(indices) and indices[-1] == ran - 1
    if (
        (ran != inputs and not stopped)
        or indices != sorted(set(indices))
        or (indices and indices[-1] >= ran)
    ):
        raise ProtocolError(
            f"results of batch {results.id}: {ran} values and errors at {indices[:5]} "
            f"for {inputs} inputs"
        )


def crash_error(
    handle: WorkerHandle, returncode: int | None, closing: bool
) -> Callable[[], BaseException]:
    """A factory of the error that calls in flight on a dead worker get."""
    if closing:
        return lambda: PoolClosedError(f"pool {handle.pool_name!r} closed with the call in flight")
    exit_code = returncode if returncode is not None and returncode >= 0 else None
    signum = -returncode if returncode is not None and returncode < 0 else None
    if handle.lost_reason == "protocol_error":
        how = "broke the protocol and was stopped"
    elif handle.lost_reason == "connection_lost":
        how = "stopped answering (its node is unreachable) and was given up"
    elif returncode is None:
        how = "ended without an exit status (its Ray actor died)"
    else:
        how = describe_exit(returncode)
    message = f"worker {handle.worker_id} (pid {handle.pid}) {how} with the call in flight"
    return lambda: WorkerCrashedError(
        message, worker_id=handle.worker_id, exit_code=exit_code, signal=signum
    )

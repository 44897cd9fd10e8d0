"""Placing calls: how the pool checks, encodes, places and settles a call, for
``execute``, ``stream``, ``map`` and ``submit`` alike.

A call is encoded once, in the caller's task (a :class:`~pypit.pool._request.Request`),
placed by the scheduler, and its caller waits for the answer within the call's deadlines:
a call that has not started by its queue deadline fails with ``QueueTimeoutError`` and
never runs; one that runs past its deadline is cancelled in the worker. The pool's
facade, its streams and its maps all go through one :class:`Calls`, so that a call is
checked, counted and reported the same way whichever of them made it.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio

from pypit import _wire
from pypit._checks import exact_str
from pypit._errors import PoolClosedError, QueueTimeoutError, ToolKindError, UnknownCommandError
from pypit._shared import correlation_id_var
from pypit.pool import _events
from pypit.pool._config import PoolConfig, check_timeout
from pypit.pool._request import Request

if TYPE_CHECKING:
    from pypit.pool._control import Control
    from pypit.pool._scheduler import Scheduler
    from pypit.pool._supervisor import Supervisor
    from pypit.pool._tools import ToolDescription
    from pypit.pool._worker import WorkerHandle

_request_ids = itertools.count(1)

# How long a caller whose call waits in a worker waits for the worker to confirm that it
# dropped the call, when the call's deadline passed or its caller was cancelled: the
# confirmation takes a round trip.
WITHDRAW_GRACE: Final = 0.25

# A correlation id is this process's random prefix and a counter: unique across
# processes and restarts, and a tenth of the cost of fresh random bytes per call.
_correlation_prefix = secrets.token_hex(6)
_correlation_counter = itertools.count(1)


def new_correlation_id() -> str:
    return f"{_correlation_prefix}-{next(_correlation_counter):x}"


class Calls:
    """The calls of one pool: each checked against the tools the workers reported, encoded,
    handed to the scheduler, and settled as answered, failed or timed out, with its events
    and the pool's counters."""

    def __init__(
        self,
        config: PoolConfig,
        scheduler: Scheduler[WorkerHandle],
        supervisor: Supervisor,
        control: Control,
    ) -> None:
        self.config = config
        self.name = config.name
        self.scheduler = scheduler
        self._supervisor = supervisor
        self._control = control
        self._counters = scheduler.counters
        self.closed = False
        """The pool stopped taking calls."""
        self.signal: Callable[[], Any] = anyio.Event
        """What a request's ``done`` is made with (the running backend's event)."""

    @property
    def tools(self) -> Mapping[str, ToolDescription]:
        return self._supervisor.tools

    # -- checking and encoding ----------------------------------------------------------

    def check_open(self) -> None:
        if self.closed:
            raise PoolClosedError(f"pool {self.name!r} is closed")

    def tool(self, command: str) -> ToolDescription:
        """The tool ``command`` names; ``UnknownCommandError`` if no worker reported it."""
        tool = self._supervisor.tools.get(command)
        if tool is None:
            raise UnknownCommandError(command, tuple(sorted(self._supervisor.tools)))
        return tool

    def _check(
        self, command: str, args: Any, *, stream: bool, batch: bool, kinds: set[type] | None
    ) -> bool:
        """Refuse a call the pool cannot place; for a batch (``args`` its list of inputs),
        whether every input is a value the wire takes as it is (its types are collected
        once, for this and for the tool's signature, unless ``kinds`` knows them) and none
        is None or a dict."""
        self.check_open()
        tool = self.tool(command)
        if tool.stream != stream:
            how = "pool.stream()" if tool.stream else "pool.execute()"
            kind = "stream" if tool.stream else "call"
            raise ToolKindError(f"{command!r} is a {kind}; use {how}")
        check = self._supervisor.checks.get(command)
        if not batch:
            if check is not None:
                check.check(args)
            return False
        if kinds is None:
            kinds = _wire.kinds(args)
        if check is not None:
            check.check_many(args, kinds)
        return _wire.ATOMS.issuperset(kinds) and type(None) not in kinds

    def request(
        self,
        command: str,
        args: Any,
        timeout: float | None,
        session_id: str | None,
        correlation_id: str | None,
        *,
        stream: bool,
        batch: bool = False,
        stop_on_error: bool = False,
        kinds: set[type] | None = None,
    ) -> Request:
        """Check and encode a call (with ``batch``, a frame of a map: ``args`` is its list
        of inputs, whose types are ``kinds`` if known, or a range of ints, which travels as
        its ends); nothing is sent or queued yet."""
        command = exact_str("command", command)
        timeout = check_timeout(timeout, optional=True)
        session_id = exact_str("session_id", session_id, optional=True)
        correlation_id = exact_str("correlation_id", correlation_id, optional=True)
        # A batch of plain inputs: the wire need not look at them again, and the worker
        # may pass each as one positional argument without looking either.
        plain = self._check(command, args, stream=stream, batch=batch, kinds=kinds)
        request_id = next(_request_ids)
        correlation_id = correlation_id or correlation_id_var.get() or new_correlation_id()
        if type(correlation_id) is not str:
            raise TypeError(
                f"the current correlation id must be a str, not {correlation_id!r} "
                "(set with set_correlation_id)"
            )
        span = _wire.span(args) if batch and type(args) is range and plain else None
        message = _wire.Call(
            request_id, command, args if span is None else span, correlation_id, timeout, stream
        )
        message.session_id = session_id
        if batch:
            message.batch = True
            message.stop_on_error = stop_on_error
            message.positional = plain
            if span is not None:
                message.span = True
            elif type(args) is range:
                message.args = list(args)
        if stream:
            message.window = self.config.stream_window
        frame = _wire.encode(message, self.config.max_frame_size, checked=plain)
        if _events.trace_hook is not None:
            _events.trace_hook.capture(request_id)
        request = Request(command, self.signal, stream)
        request.message = message
        request.request_id = request_id
        request.correlation_id = correlation_id
        request.session_id = session_id
        request.frame = frame
        request.window = message.window
        if batch:
            request.inputs = len(args)
        if timeout is not None:
            request.deadline = request.queue_deadline = anyio.current_time() + timeout
        return request

    # -- placing and settling -----------------------------------------------------------

    def submit(self, request: Request, affinity: str, avoid: str | None) -> None:
        if self._control.stale():
            self._control.push()
        self.scheduler.submit(request, affinity, avoid)

    def completed(self, request: Request) -> None:
        """Count and report a call answered with its value."""
        self._counters["completed"] += 1
        _events.call_stopped(request)

    def failed(self, request: Request, exc: BaseException) -> None:
        """Count and report a call that failed with ``exc``."""
        self._counters["failed"] += 1
        _events.call_failed(request, exc)

    def dropped(self, request: Request) -> BaseException:
        """The error of a call its worker dropped before it started (it came back as a
        ``QueueTimeoutError``): the pool closed, or the call waited too long."""
        if self.closed:
            return self.scheduler.closed_error()
        return self.scheduler.queue_timeout(request)

    async def call(self, request: Request, affinity: str | None, avoid: str | None) -> Any:
        """Place ``request`` and return its value, or raise its error."""
        self.submit(request, affinity or self.config.affinity, avoid)
        try:
            await self._wait(request)
        except BaseException as exc:
            self.scheduler.abandon(request)
            self.failed(request, exc)
            if request.withdrawn:
                # It waited in its worker: resume the caller once the worker dropped it
                # (or, if a slot freed before the cancel arrived, started it).
                with anyio.move_on_after(WITHDRAW_GRACE, shield=True):
                    await request.done.wait()
            raise
        if not request.done.is_set():
            self.scheduler.abandon(request)
            error = self.scheduler.timed_out(request)
            self.failed(request, error)
            raise error
        if request.error is not None:
            if isinstance(request.error, QueueTimeoutError):
                request.error = self.dropped(request)
            self.failed(request, request.error)
            raise request.error
        self.completed(request)
        return request.value

    async def _wait(self, request: Request) -> None:
        """Wait for the answer while the call's deadlines allow.

        A call waiting for a worker has its queue deadline; once it runs, its
        deadline. A call waiting inside a worker (prefetched) is withdrawn when
        its queue deadline passes: the worker drops it and says so, unless it
        started meanwhile, and then the call runs on to its deadline.
        """
        waiting = request.worker is None or request.prefetched
        deadline = request.queue_deadline if waiting else request.deadline
        if deadline == math.inf:
            await request.done.wait()
            return
        with anyio.CancelScope(deadline=deadline) as scope:
            request.scope = scope
            await request.done.wait()
        request.scope = None
        worker = request.worker
        if request.done.is_set() or worker is None or not request.prefetched:
            return
        if self.scheduler.withdraw(request):
            deadline = max(request.deadline, anyio.current_time() + WITHDRAW_GRACE)
        elif request.deadline > deadline:
            deadline = request.deadline
        else:
            return
        with anyio.CancelScope(deadline=deadline):
            await request.done.wait()

"""The exception tree of pypit.

Every error pypit raises on purpose is a :class:`PypitError`, and each leaf also
inherits the builtin a caller would naturally catch, so ``except TimeoutError``
works on a call that ran out of time::

    PypitError (Exception)
    ├── HandlerExistsError (ValueError)         attach with an id already in use
    ├── HandlerNotFoundError (LookupError)      detach of an unknown id
    ├── PoolClosedError (RuntimeError)          the pool is closing or closed
    ├── PoolSaturatedError (RuntimeError)       the pool's queue is full
    ├── PoolDegradedError (RuntimeError)        no worker can serve the call
    ├── SessionUnavailableError (RuntimeError)  the session's worker cannot take the call
    ├── StreamBusyError (RuntimeError)          a stream iterated by two tasks at once
    ├── QueueTimeoutError (TimeoutError)        waited in the queue past queue_timeout
    ├── WorkerTimeoutError (TimeoutError)       the call ran past its deadline
    ├── WorkerCrashedError (RuntimeError)       the worker died with the call in flight
    ├── WorkerStartError (RuntimeError)         no worker could be started
    ├── ToolError (RuntimeError)                the tool raised inside the worker
    ├── UnknownCommandError (LookupError)       no such tool in the adapter
    ├── UnknownWorkerError (LookupError)        no worker of that id in the pool
    ├── ToolKindError (TypeError)               execute() on a stream tool, or the reverse
    ├── ArgumentsError (TypeError)              arguments that do not fit the tool's signature
    ├── AcknowledgeTimeoutError (TimeoutError)  workers did not apply new settings in time
    ├── SerializationError (TypeError)          a value the wire cannot carry
    └── ProtocolError (ValueError)              a malformed or oversized frame
        └── FrameTooLargeError                  a frame over the size limit

All of them survive a pickle round trip with their attributes, so they can be
handed between threads, processes and test runners unchanged.

Misuse -- an option or an argument of the wrong type or out of range -- raises the
plain ``TypeError`` or ``ValueError`` before anything changes, with a message that
names the option, the value and what it takes: the error is in the calling code, not
in anything pypit did.
"""

from __future__ import annotations

from typing import Any


class PypitError(Exception):
    """Base class of every error pypit raises on purpose."""


class HandlerExistsError(PypitError, ValueError):
    """A handler with this id is already attached."""


class HandlerNotFoundError(PypitError, LookupError):
    """No handler with this id is attached."""


class PoolClosedError(PypitError, RuntimeError):
    """The pool does not accept calls: it is closing or closed."""


class PoolSaturatedError(PypitError, RuntimeError):
    """The pool's queue is full; the call was rejected at once."""


class PoolDegradedError(PypitError, RuntimeError):
    """No worker of the pool is able to serve the call."""


class SessionUnavailableError(PypitError, RuntimeError):
    """``affinity="strict_fail_fast"``: the worker of the session cannot take the call now."""


class StreamBusyError(PypitError, RuntimeError):
    """Another task is taking this stream's chunks: a stream is iterated by one task at a
    time."""


class QueueTimeoutError(PypitError, TimeoutError):
    """The call waited in the queue past ``queue_timeout`` and will never run."""


class WorkerTimeoutError(PypitError, TimeoutError):
    """The call ran past its deadline."""


class WorkerCrashedError(PypitError, RuntimeError):
    """The worker serving the call died before answering.

    ``exit_code`` is the process exit status when it exited, ``signal`` the
    number of the signal that killed it, otherwise both are ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        worker_id: str | None = None,
        exit_code: int | None = None,
        signal: int | None = None,
    ) -> None:
        super().__init__(message)
        self.worker_id = worker_id
        self.exit_code = exit_code
        self.signal = signal

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (
                type(self),
                self.args,
                {
                    "worker_id": self.worker_id,
                    "exit_code": self.exit_code,
                    "signal": self.signal,
                },
            ),
        )


class WorkerStartError(PypitError, RuntimeError):
    """No worker of the pool could be started.

    ``failures`` maps each worker id to what its start failed with (the reason, and the
    exception the worker reported or the last lines it wrote); the message lists them.
    """

    def __init__(self, message: str, failures: dict[str, str] | None = None) -> None:
        self.failures = dict(failures or {})
        if self.failures:
            message += "".join(
                f"\n  {worker_id}: {failure}" for worker_id, failure in self.failures.items()
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, {"failures": self.failures}))


class ToolError(PypitError, RuntimeError):
    """The tool raised inside the worker.

    ``remote_type`` is the qualified name of the exception's class in the
    worker, ``remote_message`` its message and ``remote_traceback`` the
    formatted traceback, as text: nothing of the worker's exception is
    unpickled in the parent.
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.remote_type, self.remote_message, self.remote_traceback))

    def __str__(self) -> str:
        if not self.remote_traceback:
            return f"{self.remote_type}: {self.remote_message}"
        head = f"{self.remote_type}: {self.remote_message}"
        return f"{head}\n\nRemote traceback:\n{self.remote_traceback}"


class UnknownCommandError(PypitError, LookupError):
    """The adapter has no tool of that name."""

    def __init__(self, command: str, known: tuple[str, ...] = ()) -> None:
        hint = f"; known tools: {', '.join(known)}" if known else ""
        super().__init__(f"unknown command {command!r}{hint}")
        self.command = command
        self.known = known

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.command, self.known))


class UnknownWorkerError(PypitError, LookupError):
    """The pool has no worker of that id (or none that is live, for an operation that needs
    one)."""


class ToolKindError(PypitError, TypeError):
    """``execute()`` was called on a stream tool, or ``stream()`` on a tool that returns."""


class ArgumentsError(PypitError, TypeError):
    """The arguments of a call do not fit the tool's signature: an unknown keyword, a
    required argument missing, too many positional arguments. Raised in the caller before
    anything is sent, naming the tool, the problem and the signature. Only the shape of
    the call is checked, never the types of the values."""


class AcknowledgeTimeoutError(PypitError, TimeoutError):
    """Workers did not acknowledge new settings (telemetry, log level) in time; those
    that did apply them, the others apply them when they next read their channel."""


class SerializationError(PypitError, TypeError):
    """A value cannot be carried over the wire."""


class ProtocolError(PypitError, ValueError):
    """A frame is malformed: the peer does not speak the protocol."""


class FrameTooLargeError(ProtocolError):
    """A frame is larger than the configured limit."""


def _rebuild(cls: type[PypitError], args: tuple[Any, ...], attrs: dict[str, Any]) -> PypitError:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(attrs)
    return exc

"""The error tree: one root, the fitting builtins, clean pickling."""

from __future__ import annotations

import pickle

import pytest

import pypit
from pypit import (
    HandlerExistsError,
    PoolSaturatedError,
    PypitError,
    QueueTimeoutError,
    ToolError,
    UnknownCommandError,
    WorkerCrashedError,
    WorkerTimeoutError,
)

EXAMPLES: list[Exception] = [
    HandlerExistsError("dup"),
    pypit.HandlerNotFoundError("missing"),
    pypit.PoolClosedError("closed"),
    PoolSaturatedError("full"),
    pypit.PoolDegradedError("degraded"),
    QueueTimeoutError("waited"),
    WorkerTimeoutError("late"),
    WorkerCrashedError("died", worker_id="p_worker_1", exit_code=None, signal=9),
    pypit.WorkerStartError("no start:", {"p_worker_1": "import_failed: ModuleNotFoundError"}),
    pypit.UnknownWorkerError("p_worker_9"),
    pypit.ToolKindError("a stream"),
    pypit.ArgumentsError("predict() missing a required argument: 'x'; predict(x: float)"),
    pypit.AcknowledgeTimeoutError("late"),
    ToolError("ValueError", "bad", "Traceback (most recent call last):\n  ...\n"),
    UnknownCommandError("nope", ("a", "b")),
    pypit.SerializationError("set"),
    pypit.ProtocolError("garbage"),
    pypit.FrameTooLargeError("big"),
]


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_is_a_pypit_error_and_pickles(error: Exception) -> None:
    """Each error is a PypitError and survives pickling with its attributes and message."""
    assert isinstance(error, PypitError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(error) is type(copy)
    assert str(error) == str(copy)
    assert vars(error) == vars(copy)


@pytest.mark.parametrize(
    ("error_type", "builtin"),
    [
        (HandlerExistsError, ValueError),
        (pypit.HandlerNotFoundError, LookupError),
        (PoolSaturatedError, RuntimeError),
        (QueueTimeoutError, TimeoutError),
        (WorkerTimeoutError, TimeoutError),
        (WorkerCrashedError, RuntimeError),
        (ToolError, RuntimeError),
        (UnknownCommandError, LookupError),
        (pypit.UnknownWorkerError, LookupError),
        (pypit.ToolKindError, TypeError),
        (pypit.ArgumentsError, TypeError),
        (pypit.AcknowledgeTimeoutError, TimeoutError),
        (pypit.SerializationError, TypeError),
        (pypit.ProtocolError, ValueError),
    ],
)
def test_errors_subclass_the_fitting_builtin(
    error_type: type[Exception], builtin: type[Exception]
) -> None:
    """``except TimeoutError`` catches a call that ran out of time, and so on."""
    assert issubclass(error_type, builtin)


def test_tool_error_carries_the_remote_details() -> None:
    """A ToolError names the remote type and message and shows the remote traceback."""
    error = ToolError("mod.Boom", "it broke", "Traceback ...\nmod.Boom: it broke\n")
    assert (error.remote_type, error.remote_message) == ("mod.Boom", "it broke")
    assert "Remote traceback" in str(error)
    assert "it broke" in str(error)


def test_unknown_command_lists_known_tools() -> None:
    """The message names the command and the tools that exist."""
    error = UnknownCommandError("predikt", ("predict", "train"))
    assert "'predikt'" in str(error)
    assert "predict, train" in str(error)

"""pypit: a pure-Python worker pool with a built-in telemetry bus.

The public faces are ``pypit`` (version and errors), :mod:`pypit.telemetry`
(the event bus), :mod:`pypit.pool` (the supervisor side) and
:mod:`pypit.worker` (the worker side). Importing ``pypit`` is cheap: it loads
none of them.
"""

from pypit._decorate import publish as _publish
from pypit._errors import AcknowledgeTimeoutError as AcknowledgeTimeoutError
from pypit._errors import ArgumentsError as ArgumentsError
from pypit._errors import FrameTooLargeError as FrameTooLargeError
from pypit._errors import HandlerExistsError as HandlerExistsError
from pypit._errors import HandlerNotFoundError as HandlerNotFoundError
from pypit._errors import PoolClosedError as PoolClosedError
from pypit._errors import PoolDegradedError as PoolDegradedError
from pypit._errors import PoolSaturatedError as PoolSaturatedError
from pypit._errors import ProtocolError as ProtocolError
from pypit._errors import PypitError as PypitError
from pypit._errors import QueueTimeoutError as QueueTimeoutError
from pypit._errors import SerializationError as SerializationError
from pypit._errors import SessionUnavailableError as SessionUnavailableError
from pypit._errors import StreamBusyError as StreamBusyError
from pypit._errors import ToolError as ToolError
from pypit._errors import ToolKindError as ToolKindError
from pypit._errors import UnknownCommandError as UnknownCommandError
from pypit._errors import UnknownWorkerError as UnknownWorkerError
from pypit._errors import WorkerCrashedError as WorkerCrashedError
from pypit._errors import WorkerStartError as WorkerStartError
from pypit._errors import WorkerTimeoutError as WorkerTimeoutError
from pypit._version import __version__ as __version__

__all__ = [
    "AcknowledgeTimeoutError",
    "ArgumentsError",
    "FrameTooLargeError",
    "HandlerExistsError",
    "HandlerNotFoundError",
    "PoolClosedError",
    "PoolDegradedError",
    "PoolSaturatedError",
    "ProtocolError",
    "PypitError",
    "QueueTimeoutError",
    "SerializationError",
    "SessionUnavailableError",
    "StreamBusyError",
    "ToolError",
    "ToolKindError",
    "UnknownCommandError",
    "UnknownWorkerError",
    "WorkerCrashedError",
    "WorkerStartError",
    "WorkerTimeoutError",
    "__version__",
]

_publish(globals(), __all__, __name__)

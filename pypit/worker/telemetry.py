"""Telemetry from inside a worker: events that arrive in the pool's bus.

::

    from pypit.worker import telemetry

    telemetry.emit(
        "tool.execution.stop",
        {"duration": 1234, "bytes": 5000},
        {"tool": "predict", "status": "success"},
        correlation_id="abc-123",
    )
    with telemetry.span("inference", {"model": "gpt-4"}):   # "inference.*" allowed by the app
        ...

An event ``a.b.c`` arrives as ``("pypit", "python", "a", "b", "c")`` with the
pool adding ``pool_name``, ``worker_id`` and ``python_pid``. Accepted names are
the catalog's python events and the pool's ``telemetry_allow`` patterns;
anything refused or lost is counted in ``("pypit", "telemetry", "dropped")``.
"""

from pypit.worker._telemetry import emit as emit
from pypit.worker._telemetry import get_correlation_id as get_correlation_id
from pypit.worker._telemetry import get_trace_context as get_trace_context
from pypit.worker._telemetry import new_correlation_id as new_correlation_id
from pypit.worker._telemetry import reset_correlation_id as reset_correlation_id
from pypit.worker._telemetry import set_correlation_id as set_correlation_id
from pypit.worker._telemetry import span as span

__all__ = [
    "emit",
    "get_correlation_id",
    "get_trace_context",
    "new_correlation_id",
    "reset_correlation_id",
    "set_correlation_id",
    "span",
]

span.__module__ = __name__

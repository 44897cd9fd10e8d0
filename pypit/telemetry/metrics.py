"""Metrics on top of the bus, with the rules of Elixir's ``Telemetry.Metrics``.

::

    from pypit.telemetry import metrics

    definitions = [
        metrics.last_value("pypit.pool.status.queue_depth", tags=["pool_name"]),
        metrics.summary(
            "pypit.python.call.stop.duration",
            unit=("native", "millisecond"),
            tags=["command"],
        ),
        metrics.counter("pypit.python.call.exception.count", tags=["error_type"]),
    ]
    with metrics.PrometheusReporter(definitions, port=9568):
        ...  # /metrics is served while the block runs
"""

from pypit._decorate import publish as _publish
from pypit.telemetry._dashboard import DashboardReporter as DashboardReporter
from pypit.telemetry._metrics import Metric as Metric
from pypit.telemetry._metrics import counter as counter
from pypit.telemetry._metrics import distribution as distribution
from pypit.telemetry._metrics import last_value as last_value
from pypit.telemetry._metrics import sum as sum
from pypit.telemetry._metrics import summary as summary
from pypit.telemetry._reporters import ConsoleReporter as ConsoleReporter
from pypit.telemetry._reporters import Poller as Poller
from pypit.telemetry._reporters import PrometheusReporter as PrometheusReporter
from pypit.telemetry._reporters import prometheus_name as prometheus_name

__all__ = [
    "ConsoleReporter",
    "DashboardReporter",
    "Metric",
    "Poller",
    "PrometheusReporter",
    "counter",
    "distribution",
    "last_value",
    "prometheus_name",
    "sum",
    "summary",
]

_publish(globals(), __all__, __name__)

"""OpenTelemetry: pypit's call spans as OpenTelemetry spans, exported over OTLP/HTTP.

::

    from pypit.telemetry.otel import configure_opentelemetry

    bridge = configure_opentelemetry(endpoint="http://collector:4318")

Needs the ``otel`` extra (``pip install pypit[otel]``).
"""

from pypit.telemetry._otel import OpenTelemetryBridge as OpenTelemetryBridge
from pypit.telemetry._otel import configure_opentelemetry as configure_opentelemetry

__all__ = ["OpenTelemetryBridge", "configure_opentelemetry"]

OpenTelemetryBridge.__module__ = __name__

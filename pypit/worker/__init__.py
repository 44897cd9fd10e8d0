"""The worker side: the adapter a worker serves and its tools.

::

    from pypit.worker import Adapter, tool

    class Model(Adapter):
        def setup(self) -> None:
            self.weights = load()

        @tool(description="Perform inference")
        def predict(self, x: float) -> dict:
            return {"y": self.weights * x}

A tool reads the session of its call with :func:`get_session_id`.
"""

from pypit.worker import telemetry as telemetry
from pypit.worker._adapter import Adapter as Adapter
from pypit.worker._adapter import get_session_id as get_session_id
from pypit.worker._adapter import tool as tool

__all__ = ["Adapter", "get_session_id", "telemetry", "tool"]

Adapter.__module__ = __name__

"""The worker side: the adapter a worker serves and its tools.

::

    from pypit.worker import Adapter, tool

    class Model(Adapter):
        def setup(self) -> None:
            self.weights = load()

        @tool(description="Perform inference")
        def predict(self, x: float) -> dict:
            return {"y": self.weights * x}
"""

from pypit.worker import telemetry as telemetry
from pypit.worker._adapter import Adapter as Adapter
from pypit.worker._adapter import tool as tool

__all__ = ["Adapter", "telemetry", "tool"]

Adapter.__module__ = __name__

"""The adapter and plain functions the pool benchmarks run."""

from __future__ import annotations

from typing import Any

from pypit.worker import Adapter, tool


def identity(value: Any) -> Any:
    """The trivial task, for the peers (module level so that they can pickle it)."""
    return value


class Bench(Adapter):
    @tool(description="Return the argument")
    def identity(self, value: Any = None) -> Any:
        return value


class Emitter(Adapter):
    @tool(description="Emit n tool.execution.stop events as fast as possible")
    def emit(self, n: int) -> int:
        from pypit.worker import telemetry

        for i in range(n):
            telemetry.emit("tool.execution.stop", {"duration": i, "bytes": 5000}, {"tool": "t"})
        return n

    @tool(description="Emit `rate` events per second for `seconds`, in small bursts")
    def emit_paced(self, rate: int, seconds: float) -> int:
        import time

        from pypit.worker import telemetry

        burst = max(1, rate // 100)
        sent = 0
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            for i in range(burst):
                telemetry.emit("tool.execution.stop", {"duration": i, "bytes": 5000}, {"tool": "t"})
            sent += burst
            ahead = sent / rate - elapsed
            if ahead > 0:
                time.sleep(ahead)
        return sent

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

"""The demo's adapter: pure-Python work of every kind a real adapter has."""

from __future__ import annotations

import time
from collections.abc import Iterator

from pypit.worker import Adapter, tool


class DemoModel(Adapter):
    """Pretends to be a model: loads once, then answers fast, slow and streaming calls."""

    def setup(self) -> None:
        self.weights = [i % 7 for i in range(10_000)]

    @tool(description="A fast prediction")
    def predict(self, x: float) -> dict[str, float]:
        return {"y": x * 2 + self.weights[int(x) % len(self.weights)]}

    @tool(description="A slow batch job")
    def batch(self, milliseconds: int) -> int:
        time.sleep(milliseconds / 1000)
        return milliseconds

    @tool(description="CPU-bound work")
    def crunch(self, n: int) -> int:
        return sum(i * i for i in range(n))

    @tool(description="Stream tokens one by one")
    def generate(self, prompt: str, tokens: int = 8) -> Iterator[str]:
        for i in range(tokens):
            time.sleep(0.02)
            yield f"{prompt}-{i}"

    @tool(description="Always fails")
    def flaky(self) -> None:
        raise RuntimeError("the flaky tool failed, as it always does")

"""Dispatch cost of the bus against a hand-written floor and blinker, in one run.

The floor is the least a dispatcher can do: ``dict.get`` of the event, a loop,
a call. ``execute`` adds the handler-failure containment and the metadata
default; the targets say how close it must stay.
"""

from __future__ import annotations

from typing import Any

import blinker
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pypit import telemetry

EVENT = ("bench", "event", "stop")
MEASUREMENTS = {"duration": 1234}
METADATA = {"command": "predict"}


def noop(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
    return None


_floor_table: dict[tuple[str, ...], tuple[tuple[Any, Any], ...]] = {}


def floor(event: tuple[str, ...], measurements: Any, metadata: Any) -> None:
    for function, config in _floor_table.get(event, ()):
        function(event, measurements, metadata, config)


@pytest.mark.parametrize("handlers", [0, 1, 5])
def test_floor(benchmark: BenchmarkFixture, handlers: int) -> None:
    _floor_table.clear()
    if handlers:
        _floor_table[EVENT] = tuple((noop, None) for _ in range(handlers))
    benchmark.group = f"dispatch-{handlers}"
    benchmark(floor, EVENT, MEASUREMENTS, METADATA)
    _floor_table.clear()


@pytest.mark.parametrize("handlers", [0, 1, 5])
def test_execute(benchmark: BenchmarkFixture, handlers: int) -> None:
    for n in range(handlers):
        telemetry.attach(f"bench-{n}", EVENT, noop)
    benchmark.group = f"dispatch-{handlers}"
    benchmark(telemetry.execute, EVENT, MEASUREMENTS, METADATA)


def test_blinker_send(benchmark: BenchmarkFixture) -> None:
    signal = blinker.Signal()

    def receiver(sender: Any, **kwargs: Any) -> None:
        return None

    signal.connect(receiver)
    benchmark.group = "dispatch-1"
    benchmark(signal.send, None, measurements=MEASUREMENTS, metadata=METADATA)


def test_span(benchmark: BenchmarkFixture) -> None:
    telemetry.attach_many(
        "bench-span", [("bench", "span", "start"), ("bench", "span", "stop")], noop
    )

    def one_span() -> None:
        with telemetry.span(("bench", "span"), METADATA):
            pass

    benchmark.group = "span"
    benchmark(one_span)

"""Pool tests start real worker processes; each test proves it left none behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from pypit import telemetry
from pypit.telemetry import CapturedEvent


def _live_children() -> list[psutil.Process]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail the test if any process it started is still alive shortly after it ends."""
    before = {p.pid for p in _live_children()}
    yield
    deadline = time.monotonic() + 3.0
    left = [p for p in _live_children() if p.pid not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in _live_children() if p.pid not in before]
    for process in left:
        process.kill()
    assert not left, f"processes left behind: {[p.pid for p in left]}"


def assert_catalog_shape(event: CapturedEvent) -> None:
    """Exactly the catalog's keys, numeric measurements, None only where the catalog allows."""
    spec = telemetry.catalog_event(event.event)
    assert set(event.measurements) == spec.measurement_keys, event.event
    assert set(event.metadata) == spec.metadata_keys, event.event
    for key, value in event.measurements.items():
        assert isinstance(value, int | float), (event.event, key)
        assert not isinstance(value, bool), (event.event, key)
    for key, value in event.metadata.items():
        if key not in spec.nullable:
            assert value is not None, (event.event, key)


def adapter(name: str = "Echo") -> str:
    return f"tests.adapters:{name}"


def options(**overrides: Any) -> dict[str, Any]:
    """Small, quick pools for tests."""
    base: dict[str, Any] = {"size": 1, "status_interval": 0, "stop_grace": 1.0}
    base.update(overrides)
    return base

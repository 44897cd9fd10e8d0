"""Helpers for the tests that run pools (the no-leftover check is in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

from pypit import telemetry
from pypit.telemetry import CapturedEvent


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

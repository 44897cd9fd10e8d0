"""Benchmarks leave the registry as they found it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pypit import telemetry


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    before = {h.id for h in telemetry.list_handlers()}
    yield
    for handler_id in {h.id for h in telemetry.list_handlers()} - before:
        telemetry.detach(handler_id)

"""Shared fixtures: both async backends, and a registry left as each test found it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pypit import telemetry


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    """Detach whatever a test attached, so one test's handlers never see another's events."""
    before = {h.id for h in telemetry.list_handlers()}
    yield
    for handler_id in {h.id for h in telemetry.list_handlers()} - before:
        telemetry.detach(handler_id)

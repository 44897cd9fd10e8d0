"""Shared fixtures: both async backends, a registry left as each test found it, and no
process left behind by any test."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any

import anyio
import psutil
import pytest

from pypit import telemetry

ASYNC_TEST_LIMIT = 60.0
"""Seconds an async test may take (``@pytest.mark.limit(seconds)`` sets another): past it,
it fails with TimeoutError, alone. pytest-timeout, set higher in pyproject.toml, is the
backstop for the rest: it ends the whole run."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests on Ray last, in their order: the session's Ray (``ray_session``),
    started by the first of them, then lives only while they run, and its processes load
    no other test's machine."""
    items.sort(key=lambda item: "ray_session" in getattr(item, "fixturenames", ()))


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, None, None]:
    """Run each async test under ``anyio.fail_after``: a lost wake-up fails that test, on
    either backend, and the next test runs on a sound event loop (a signal raised into a
    running loop would leave it broken)."""
    test = pyfuncitem.obj
    if inspect.iscoroutinefunction(test) and not hasattr(test, "hypothesis"):
        marker = pyfuncitem.get_closest_marker("limit")
        limit = float(marker.args[0]) if marker is not None else ASYNC_TEST_LIMIT
        pyfuncitem.obj = _bounded(test, limit)
    yield


def _bounded(
    test: Callable[..., Coroutine[Any, Any, None]], limit: float
) -> Callable[..., Coroutine[Any, Any, None]]:
    @functools.wraps(test)
    async def bounded(**kwargs: Any) -> None:
        with anyio.fail_after(limit):
            await test(**kwargs)

    return bounded


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


def _live_children() -> list[psutil.Process]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            # Ray keeps idle worker processes of its own for the next actor: they belong
            # to the test session's Ray, whose end is checked for leftovers (ray_session).
            if child.status() != psutil.STATUS_ZOMBIE and child.name() != "ray::IDLE":
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

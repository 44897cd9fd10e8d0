"""Running a function inside a fresh context manager on every call (the spans' decorators)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def within(
    make: Callable[[], AbstractContextManager[Any]], function: Callable[P, R]
) -> Callable[P, R]:
    """Wrap ``function`` (plain or coroutine) so that each call runs inside ``make()``."""
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            with make():
                return await function(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with make():
            return function(*args, **kwargs)

    return wrapper


def publish(namespace: dict[str, Any], names: list[str], module: str) -> None:
    """Give each public class of a facade its public module path (as trio does)."""
    for name in names:
        value = namespace[name]
        if isinstance(value, type):
            value.__module__ = module

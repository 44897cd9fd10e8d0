"""Progress bars for maps: a callable ``(done, total)``, or tqdm's or rich's bar, neither a
dependency (each is imported only when asked for)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Literal

Progress = Callable[[int, int | None], object] | Literal["tqdm", "rich"] | None
"""What ``progress`` takes: a callable ``(done, total)``, ``"tqdm"``, ``"rich"`` or None."""


def import_display(kind: str) -> Any:
    """The module a display needs, imported only when asked for: neither is a dependency."""
    try:
        return importlib.import_module("tqdm" if kind == "tqdm" else "rich.progress")
    except ImportError:
        raise ImportError(
            f"progress={kind!r} needs the {kind} package, which is not installed "
            f"(pip install {kind}); or pass a callable (done, total)"
        ) from None


class Display:
    """A tqdm or rich progress bar for one map, updated from the consumer's task."""

    __slots__ = ("_bar", "_kind", "_shown", "_task")

    def __init__(self, kind: str, total: int | None, command: str) -> None:
        self._kind = kind
        self._shown = 0
        module = import_display(kind)
        if kind == "tqdm":
            self._bar = module.tqdm(total=total, desc=command, unit="input")
            self._task = None
        else:
            self._bar = module.Progress()
            self._bar.start()
            self._task = self._bar.add_task(command, total=total)

    def update(self, done: int) -> None:
        if self._kind == "tqdm":
            self._bar.update(done - self._shown)
        else:
            self._bar.update(self._task, completed=done)
        self._shown = done

    def close(self) -> None:
        if self._kind == "tqdm":
            self._bar.close()
        else:
            self._bar.stop()

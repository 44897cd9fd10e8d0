"""The public faces: sorted ``__all__``, one import path per name, public ``__module__``."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import pypit

FACADES = [
    "pypit",
    "pypit.telemetry",
    "pypit.telemetry.metrics",
    "pypit.telemetry.otel",
    "pypit.pool",
    "pypit.worker",
    "pypit.worker.telemetry",
]


@pytest.mark.parametrize("name", FACADES)
def test_all_is_sorted_and_resolvable(name: str) -> None:
    """Every name in __all__ exists, and __all__ is sorted."""
    module = importlib.import_module(name)
    assert sorted(module.__all__) == module.__all__
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.{attr}"


def test_each_public_name_has_one_import_path() -> None:
    """No object is exported by two facades."""
    seen: dict[int, str] = {}
    for name in FACADES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            value = getattr(module, attr)
            if isinstance(value, str) or (not callable(value) and not isinstance(value, type)):
                continue
            assert id(value) not in seen, f"{name}.{attr} is also {seen.get(id(value))}"
            seen[id(value)] = f"{name}.{attr}"


@pytest.mark.parametrize("name", FACADES)
def test_public_classes_name_their_public_module(name: str) -> None:
    """A public class reports the facade it is imported from."""
    module = importlib.import_module(name)
    for attr in module.__all__:
        value = getattr(module, attr)
        if isinstance(value, type):
            assert name == value.__module__, f"{name}.{attr}"


def test_importing_pypit_is_light() -> None:
    """``import pypit`` loads neither the pool, the worker, anyio nor msgspec."""
    code = (
        "import sys, pypit; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'anyio', 'msgspec', 'psutil', 'trio'} or m.startswith(('pypit.pool', 'pypit.worker'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_is_a_string() -> None:
    """__version__ is the package version."""
    assert isinstance(pypit.__version__, str)
    assert pypit.__version__[0].isdigit()

"""The catalog in code matches the documentation page generated from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pypit import telemetry
from pypit.telemetry._catalog import render_markdown

DOCS = Path(__file__).parents[2] / "docs" / "events.md"


def test_events_page_is_generated_from_the_catalog() -> None:
    """docs/events.md is exactly what the catalog renders: run `make docs` after a change."""
    assert render_markdown() == DOCS.read_text(encoding="utf-8")


def test_the_documented_command_prints_the_events_page() -> None:
    """`python -m pypit.telemetry` writes the page, and nothing on stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "pypit.telemetry"], capture_output=True, text=True, check=True
    )
    assert (done.stdout, done.stderr) == (DOCS.read_text(encoding="utf-8"), "")


def test_every_event_is_on_the_page() -> None:
    """Each catalog entry appears on the page with each of its keys."""
    page = DOCS.read_text(encoding="utf-8")
    for spec in telemetry.CATALOG:
        row = next(
            line
            for line in page.splitlines()
            if line.startswith(f"| `({spec.name[0]!r}".replace("'", '"'))
            and all(f'"{s}"' in line for s in spec.name)
        )
        for key in spec.metadata_keys | spec.measurement_keys:
            assert f"`{key}`" in row, (spec.name, key)


def test_names_are_unique_and_valid() -> None:
    """No event is listed twice, and every name is a tuple of non-empty str."""
    names = [spec.name for spec in telemetry.CATALOG]
    assert len(names) == len(set(names))
    assert all(isinstance(s, str) and s for name in names for s in name)


def test_catalog_covers_the_contract() -> None:
    """The catalog has every event of the contract: 12 pool, 9 rpc, 8 python, 2 bus; and
    the two of a slot whose starts fail."""
    prefixes = [spec.name[:2] for spec in telemetry.CATALOG]
    assert prefixes.count(("pypit", "pool")) == 14
    slot_states = {("pypit", "pool", "worker", state) for state in ("degraded", "recovered")}
    assert slot_states <= {spec.name for spec in telemetry.CATALOG}
    assert prefixes.count(("pypit", "rpc")) == 9
    assert prefixes.count(("pypit", "python")) == 8
    assert {("telemetry", "handler", "failure"), ("pypit", "telemetry", "dropped")} <= {
        spec.name for spec in telemetry.CATALOG
    }


def test_nullable_keys_are_metadata_keys() -> None:
    """Every key marked nullable is a metadata key of its event."""
    for spec in telemetry.CATALOG:
        assert spec.nullable <= spec.metadata_keys, spec.name


def test_catalog_event_lookup() -> None:
    """catalog_event finds an entry by name and raises KeyError for others."""
    spec = telemetry.catalog_event(("pypit", "pool", "status"))
    assert {"queue_depth", "available_workers", "busy_workers", "total_workers", "in_flight"} == (
        spec.measurement_keys
    )
    with pytest.raises(KeyError):
        telemetry.catalog_event(("pypit", "nope"))

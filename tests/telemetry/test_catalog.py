"""The catalog in code matches the documentation page generated from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pypit import telemetry
from pypit.telemetry._catalog import SPAN_KEYS, render_markdown

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


TYPES = {"str", "int", "bool", "Any", "BaseException", "Exception", "TracebackType"}
TYPES |= {"tuple[str, ...]"}


def test_every_metadata_key_has_a_type() -> None:
    """Each metadata key of each event says the type of its value, from a short list."""
    for spec in telemetry.CATALOG:
        for key in spec.metadata:
            assert key.type in TYPES, (spec.name, key.name, key.type)
        assert set(spec.metadata_types) == spec.metadata_keys


def test_reason_is_a_str_except_where_telemetry_makes_it_the_exception() -> None:
    """`reason` is the exception object in rpc.call.exception and handler failures, as
    :telemetry has it, and a str in every other event."""
    reasons = {
        spec.name: spec.metadata_types["reason"]
        for spec in telemetry.CATALOG
        if "reason" in spec.metadata_keys
    }
    exceptions = {name: kind for name, kind in reasons.items() if kind != "str"}

    assert exceptions == {
        ("pypit", "rpc", "call", "exception"): "BaseException",
        ("telemetry", "handler", "failure"): "Exception",
    }
    assert len(reasons) > len(exceptions) + 5


def test_the_page_shows_each_metadata_key_with_its_type() -> None:
    """Every row names each metadata key with its type ('or None' where it may be None),
    and the page states the rule for `reason`."""
    page = DOCS.read_text(encoding="utf-8")
    rows = {line.split(" | ")[0]: line for line in page.splitlines() if line.startswith("| `(")}
    for spec in telemetry.CATALOG:
        row = rows["| `(" + ", ".join(f'"{s}"' for s in spec.name) + ")`"]
        for key in spec.metadata:
            shown = f"{key.type} or None" if key.nullable and key.type != "Any" else key.type
            assert f"`{key.name}` ({shown})" in row, (spec.name, key.name)
    exception_row = rows['| `("pypit", "rpc", "call", "exception")`']
    assert "`reason` (BaseException)" in exception_row
    assert "`error_message` (str)" in exception_row
    assert "`session_id` (str or None)" in exception_row
    assert "`reason` (str)" in rows['| `("pypit", "rpc", "stream", "closed")`']
    assert "`reason` is a `str` in every event but two" in page
    assert "is the exception object itself" in page


def test_the_page_lists_the_keys_both_spans_carry() -> None:
    """The Spans section has one row per key spans add, with its type in each process."""
    page = DOCS.read_text(encoding="utf-8")
    spans = page[page.index("## Spans") :]
    for key in SPAN_KEYS:
        row = next(line for line in spans.splitlines() if line.startswith(f"| `{key.name}` |"))
        assert f"| {key.parent or 'absent'} | {key.worker or 'absent'} |" in row, key.name
    shared = {key.name for key in SPAN_KEYS if key.parent and key.worker}
    assert shared == {"telemetry_span_context", "kind", "error_type", "error_message"}

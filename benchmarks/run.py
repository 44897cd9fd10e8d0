"""Run the benchmarks and print each target of PERFORMANCE.md with its ratio and verdict.

Every target is a ratio of two medians measured in the same run (or, where the
target is absolute, a median beside its floor), because absolute times move
by a third between runs on a shared machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import attrs


@attrs.frozen
class Target:
    label: str
    numerator: str
    denominator: str | None
    compare: Callable[[float], bool]
    goal: str
    scale: float = 1.0


def le(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


def ge(limit: float) -> Callable[[float], bool]:
    return lambda value: value >= limit


TARGETS = [
    Target("execute, 1 handler / floor", "test_execute[1]", "test_floor[1]", le(1.25), "<= 1.25"),
    Target(
        "execute, 0 handlers / floor miss", "test_execute[0]", "test_floor[0]", le(1.25), "<= 1.25"
    ),
    Target("execute, 5 handlers / floor", "test_execute[5]", "test_floor[5]", le(1.25), "<= 1.25"),
    Target(
        "blinker send / execute, 1 handler", "test_blinker_send", "test_execute[1]", ge(8), ">= 8"
    ),
    Target("span with start+stop handlers (ns)", "test_span", None, le(1000), "<= 1000 ns", 1e9),
]


def main() -> int:
    here = Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "bench.json"
        command = [
            sys.executable,
            "-m",
            "pytest",
            str(here),
            "-q",
            "-p",
            "no:cacheprovider",
            "--no-cov",
            "--benchmark-only",
            f"--benchmark-json={report}",
            "--benchmark-columns=median,iqr,rounds",
            "--benchmark-sort=name",
            "-o",
            "testpaths=benchmarks",
            *sys.argv[1:],
        ]
        status = subprocess.run(command, check=False).returncode
        if not report.exists():
            return status or 1
        data = json.loads(report.read_text())
    medians = {b["name"]: b["stats"]["median"] for b in data["benchmarks"]}
    extra = {b["name"]: b.get("extra_info", {}) for b in data["benchmarks"]}
    rows = []
    failed = False
    for target in TARGETS:
        if target.numerator not in medians or (
            target.denominator is not None and target.denominator not in medians
        ):
            rows.append((target.label, "-", target.goal, "NOT RUN"))
            continue
        value = medians[target.numerator] * target.scale
        if target.denominator is not None:
            value /= medians[target.denominator] * target.scale
        ok = target.compare(value)
        failed |= not ok
        rows.append((target.label, f"{value:,.2f}", target.goal, "PASS" if ok else "FAIL"))
    for name, info in sorted(extra.items()):
        for key, value in info.items():
            rows.append((f"{name} {key}", f"{value}", "", "info"))
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'target'.ljust(width)}  {'measured':>12}  {'goal':>12}  verdict")
    for label, value, goal, verdict in rows:
        print(f"{label.ljust(width)}  {value:>12}  {goal:>12}  {verdict}")
    if "test_floor[1]" in medians:
        print(f"\nfloor, 1 handler: {medians['test_floor[1]'] * 1e9:.0f} ns (median)")
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())

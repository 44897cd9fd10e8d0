"""Run the benchmarks and print each target of docs/performance.md with its ratio and verdict.

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
    """``numerator / denominator`` of one metric (the median time, or an extra_info key)."""

    label: str
    numerator: str
    denominator: str | None
    compare: Callable[[float], bool]
    goal: str
    scale: float = 1.0
    metric: str = "median"


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
    Target(
        "round trip p50 / ProcessPoolExecutor(1)",
        "test_round_trip_pypit",
        "test_round_trip_ppe",
        le(0.5),
        "<= 0.5",
        metric="p50_us",
    ),
    Target(
        "round trip p50 / raw asyncio ping-pong",
        "test_round_trip_pypit",
        "test_round_trip_floor",
        le(2.0),
        "<= 2.0",
        metric="p50_us",
    ),
    Target(
        "throughput, 64 callers / PPE(2)",
        "test_throughput_pypit",
        "test_throughput_ppe",
        ge(4.0),
        ">= 4.0",
        metric="tasks_per_s",
    ),
    Target(
        "throughput, 64 callers / mp.Pool(2)",
        "test_throughput_pypit",
        "test_throughput_mp_pool",
        ge(1.2),
        ">= 1.2",
        metric="tasks_per_s",
    ),
    Target(
        "throughput with handlers / without",
        "test_throughput_handlers",
        None,
        ge(0.9),
        ">= 0.9",
        metric="ratio",
    ),
    Target(
        "throughput with a dashboard page open / no dashboard",
        "test_throughput_dashboard",
        None,
        ge(0.9),
        ">= 0.9",
        metric="ratio",
    ),
    Target(
        "crashed worker to replacement ready, p50 (ms)",
        "test_crash_to_replacement",
        None,
        le(100),
        "<= 100 ms",
        1e-3,
        metric="p50_us",
    ),
    Target(
        "chaos: back to full size after the last kill (ms)",
        "test_chaos",
        None,
        le(1000),
        "<= 1000 ms",
        metric="recovery_ms",
    ),
    Target(
        "chaos: calls refused as PoolDegradedError",
        "test_chaos",
        None,
        le(0),
        "0",
        metric="degraded",
    ),
    Target(
        "worker telemetry.emit (ns)",
        "test_emit_in_worker",
        None,
        le(1000),
        "<= 1000 ns",
        metric="ns_per_emit",
    ),
    Target(
        "worker events delivered, 2 workers (/s)",
        "test_events_delivered_at_100k_per_second",
        None,
        ge(100_000),
        ">= 100000",
        metric="events_per_s",
    ),
    Target(
        "events dropped at that rate",
        "test_events_delivered_at_100k_per_second",
        None,
        le(0),
        "0",
        metric="dropped",
    ),
    Target(
        "map, 100k inputs / mp.Pool(2).map, same chunksize",
        "test_map_against_peers",
        None,
        ge(1.0),
        ">= 1.0",
        metric="ratio_mp_pool",
    ),
    Target(
        "map, 100k inputs / PPE(2).map, its best chunksize",
        "test_map_against_peers",
        None,
        ge(3.0),
        ">= 3.0",
        metric="ratio_ppe",
    ),
    Target(
        "parent RSS growth mapping 10M inputs (MB)",
        "test_map_memory_is_flat",
        None,
        le(10),
        "<= 10 MB",
        metric="growth_mb",
    ),
    Target(
        "open_pool(size=4) to first result (ms)",
        "test_open_to_first_result[4]",
        None,
        le(150),
        "<= 150 ms",
        1e-3,
        metric="p50_us",
    ),
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

    def metric(name: str, key: str) -> float | None:
        if key == "median":
            return medians.get(name)
        value = extra.get(name, {}).get(key)
        return None if value is None else float(value)

    rows = []
    failed = False
    for target in TARGETS:
        numerator = metric(target.numerator, target.metric)
        denominator = (
            None if target.denominator is None else metric(target.denominator, target.metric)
        )
        if numerator is None or (target.denominator is not None and denominator is None):
            rows.append((target.label, "-", target.goal, "NOT RUN"))
            continue
        value = numerator * target.scale
        if denominator is not None:
            value /= denominator * target.scale
        ok = target.compare(value)
        failed |= not ok
        rows.append((target.label, f"{value:,.2f}", target.goal, "PASS" if ok else "FAIL"))
    for name, info in sorted(extra.items()):
        for key, figure in info.items():
            rows.append((f"{name} {key}", f"{figure:,.1f}", "", "info"))
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'target'.ljust(width)}  {'measured':>12}  {'goal':>12}  verdict")
    for label, shown, goal, verdict in rows:
        print(f"{label.ljust(width)}  {shown:>12}  {goal:>12}  {verdict}")
    if "test_floor[1]" in medians:
        print(f"\nfloor, 1 handler: {medians['test_floor[1]'] * 1e9:.0f} ns (median)")
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())

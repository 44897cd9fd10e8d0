"""The bus demo: handlers attached, spans run, events printed.

Run with ``make demo``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from pypit import telemetry

PREFIX = ("demo", "job")


def print_event(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
    name = ".".join(event)
    if "duration" in measurements:
        detail = f"{measurements['duration'] / 1_000_000:7.2f} ms"
    else:
        detail = " " * 10
    job = metadata.get("job", "")
    print(f"  {name:<22} {detail}  {job}")


def flaky(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
    raise RuntimeError("this handler has a bug")


def main() -> None:
    tally: Counter[str] = Counter()

    def count(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        tally[".".join(event)] += 1

    events = [(*PREFIX, "start"), (*PREFIX, "stop"), (*PREFIX, "exception")]
    telemetry.attach_many("demo-print", events, print_event)
    telemetry.attach_many("demo-count", [*events, ("telemetry", "handler", "failure")], count)
    telemetry.attach("demo-flaky", (*PREFIX, "stop"), flaky)
    print("handlers:", ", ".join(sorted({h.id for h in telemetry.list_handlers()})))

    for n in range(6):
        job = f"job-{n}"
        try:
            with telemetry.span(PREFIX, {"job": job}):
                time.sleep(random.uniform(0.005, 0.03))
                if n == 4:
                    raise ValueError("bad input")
        except ValueError:
            pass

    print("handlers now:", ", ".join(sorted({h.id for h in telemetry.list_handlers()})))
    print("tally:")
    for name, seen in sorted(tally.items()):
        print(f"  {name:<26} {seen}")
    telemetry.detach("demo-print")
    telemetry.detach("demo-count")


if __name__ == "__main__":
    main()

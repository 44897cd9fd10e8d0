"""The worker's memory and CPU, sampled for python.memory.sampled and python.cpu.sampled."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Final

from pypit.worker._telemetry import WorkerTelemetry


def sample(
    telemetry: WorkerTelemetry,
    interval: Callable[[], float],
    wake: threading.Event,
    stopping: threading.Event,
) -> None:
    """Emit python.memory.sampled and python.cpu.sampled every ``interval()`` seconds
    (none while it is 0), until ``stopping``; ``wake`` says the interval changed."""
    cpu_times = _cpu_times()
    while not stopping.is_set():
        period = interval()
        woken = wake.wait(period if period > 0 else None)
        wake.clear()
        if woken or stopping.is_set():
            continue  # the interval changed, or the worker stops
        rss, vms = _memory()
        telemetry.ship("memory.sampled", {"rss_bytes": rss, "vms_bytes": vms}, {})
        (cpu, wall), cpu_times = cpu_times, _cpu_times()
        busy = 100.0 * (cpu_times[0] - cpu) / max(cpu_times[1] - wall, 1e-9)
        telemetry.ship("cpu.sampled", {"cpu_percent": busy}, {})


def _cpu_times() -> tuple[float, float]:
    """The CPU time this process used (user and system, every thread), and the time."""
    return time.process_time(), time.monotonic()


def _memory() -> tuple[int, int]:
    """This process's resident and virtual memory, in bytes: from ``/proc`` where there is
    one (psutil, which reads the same file, costs a worker 20-50 ms of start-up), else
    from psutil."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            size, resident = statm.read().split()[:2]
        return int(resident) * _PAGE_SIZE, int(size) * _PAGE_SIZE
    except OSError:
        import psutil

        memory = psutil.Process().memory_info()
        return memory.rss, memory.vms


_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")

"""Shared timing and machine-description helpers for ``bench``, ``tune`` and ``bench/``.

This module does not import TensorFlow.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

__all__ = ["median_latency_us", "cpu_name", "machine_info"]


def median_latency_us(run, x, rounds: int = 3, reps: int = 30, warmup: int = 5) -> float:
    """Median over ``rounds`` of the median wall time of ``reps`` calls of ``run(x)``, in us."""
    for _ in range(warmup):
        run(x)
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t0)
        medians.append(statistics.median(times) * 1e6)
    return statistics.median(medians)


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """CPU, core count and platform, for results files and profiles."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}

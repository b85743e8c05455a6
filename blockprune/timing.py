"""Shared timing and machine-description helpers for ``bench``, ``tune`` and ``bench/``.

This module does not import TensorFlow.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from pathlib import Path

__all__ = ["median_latency_us", "interleaved_latencies", "cpu_name", "machine_info"]


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


def interleaved_latencies(runners: dict, x, rounds: int = 5, reps: int = 50, warmup: int = 10,
                          min_round_s: float = 0.02) -> dict:
    """Times several runners on the same input, their rounds interleaved so drifts in machine load
    hit all alike.

    Each runner's round lasts at least ``min_round_s``: a file of a few microseconds gets more
    than ``reps`` calls (its warm-up calls estimate how many), so one scheduler hiccup does not
    decide its median.

    Returns:
        ``{key: (median_us, p10_us, p90_us)}`` over all timed calls.
    """
    import numpy as np

    xs = x if isinstance(x, (list, tuple)) else [x]
    calls = {}
    for key, run in runners.items():
        warm = []
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            run(*xs)
            warm.append(time.perf_counter() - t0)
        calls[key] = max(reps, math.ceil(min_round_s / max(statistics.median(warm), 1e-7)))
    times = {key: [] for key in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            for _ in range(calls[key]):
                t0 = time.perf_counter()
                run(*xs)
                times[key].append((time.perf_counter() - t0) * 1e6)
    return {key: (float(np.median(v)), float(np.percentile(v, 10)), float(np.percentile(v, 90)))
            for key, v in times.items()}


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

"""Shared timing and machine-description helpers for ``bench``, ``tune`` and ``bench/``.

This module does not import TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["MIN_ROUND_S", "median_latency_us", "interleaved_latencies", "latencies_in_fresh_process", "cpu_name", "machine_info"]


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


#: the least time each file gets per round when a whole file is timed (export's check, ``bench``)
MIN_ROUND_S = 0.02


def interleaved_latencies(runners: dict, x, rounds: int = 5, reps: int = 50, warmup: int = 10,
                          min_round_s: float = 0.0) -> dict:
    """Times several runners on the same input, their rounds interleaved so drifts in machine load
    hit all alike.

    With ``min_round_s`` (e.g. ``MIN_ROUND_S``), each runner's round lasts at least that long: a
    file of a few microseconds gets more than ``reps`` calls (its warm-up calls estimate how
    many), so one scheduler hiccup does not decide its median.

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


def latencies_in_fresh_process(files: dict, runtime_name: str, threads: int, inputs: list, rounds: int = 5,
                               reps: int = 50, warmup: int = 10) -> dict:
    """``interleaved_latencies`` of files ``{key: (bytes, run options)}`` in one runtime, timed
    in a new Python process.

    A process's state skews its timings for as long as it lives: the same pair of files read
    1.15x twice in one process and 0.86-0.92x in three new ones (docs/DESIGN.md section 4), so
    export's check and the reports time files in a process that loads only the runtime.

    Returns:
        ``{key: (median_us, p10_us, p90_us)}``.

    Raises:
        RuntimeError: the timing process failed (its last error line is in the message).
    """
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="blockprune-timing-") as tmp:
        folder = Path(tmp)
        keys = list(files)
        for i, key in enumerate(keys):
            data, options = files[key]
            (folder / f"{i}.bin").write_bytes(data)
            (folder / f"{i}.json").write_text(json.dumps(options))
        np.savez(folder / "inputs.npz", *inputs)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        # this file run as a script, not ``-m blockprune.timing``: the package's import loads Keras
        # and TensorFlow, seconds of start-up and a process no longer like a deployment's; through
        # runpy from the temporary folder, so that blockprune's own modules (select.py) do not
        # shadow the standard library's
        child = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
        done = subprocess.run([sys.executable, "-c", child, str(Path(__file__).resolve()), str(folder), runtime_name,
                               str(threads), str(len(keys)), str(rounds), str(reps), str(warmup)], capture_output=True, text=True,
                              env=env, cwd=folder)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"timing {runtime_name} files in a new process failed: {last}")
        timed = json.loads(done.stdout.strip().splitlines()[-1])
    return {key: tuple(timed[str(i)]) for i, key in enumerate(keys)}


def _time_folder(folder: str, runtime_name: str, threads: str, count: str, rounds: str, reps: str,
                 warmup: str) -> None:
    """The new process of ``latencies_in_fresh_process``: prints the timings as one JSON line."""
    import importlib.util

    import numpy as np

    # blockprune.runtimes, read from its file beside this one without the package's imports
    spec = importlib.util.spec_from_file_location("_blockprune_runtimes", Path(__file__).with_name("runtimes.py"))
    runtimes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtimes)
    root = Path(folder)
    rt = runtimes.runtime(runtime_name)
    runners = {str(i): rt.runner((root / f"{i}.bin").read_bytes(), json.loads((root / f"{i}.json").read_text()),
                                 int(threads)) for i in range(int(count))}
    with np.load(root / "inputs.npz") as saved:
        inputs = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    timed = interleaved_latencies(runners, inputs, int(rounds), int(reps), int(warmup), min_round_s=MIN_ROUND_S)
    print(json.dumps({key: list(v) for key, v in timed.items()}))


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


if __name__ == "__main__":
    _time_folder(*sys.argv[1:])

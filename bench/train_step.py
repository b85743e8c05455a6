"""Training step time of a pruned model vs the same model unwrapped (issue 3's goal: <= 1.15x).

Measures, in one run, the median wall time of one `fit` step (the `UpdatePruningStep`
callback and its scheduled mask updates included) for:

- a 3-layer MLP of width 1024 (1024 -> 1024 -> 1024 -> 10), target simd-4x1, block (4, 1);
- MobileNetV2 (weights=None, 224x224), target dsp-1x8, its 1x1 convolutions in blocks (1, 8);

and, when a tfmot environment is given (bench/setup_tfmot_env.sh), tfmot 0.8.1's ratio on the
same models in that environment.

Usage:
    python bench/train_step.py [--quick] [--tfmot-python PATH] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from _timing import results_dir, synthetic, time_fit  # noqa: E402
from blockprune._atomic import write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent

# model name -> (target, batch size, steps per round)
CASES = {
    "mlp1024": ("simd-4x1", 64, 120),
    "mobilenetv2": ("dsp-1x8", 8, 12),
}


def build(name):
    keras.utils.set_random_seed(0)
    if name == "mlp1024":
        inputs = keras.Input((1024,))
        x = keras.layers.Dense(1024, activation="relu", name="hidden_1")(inputs)
        x = keras.layers.Dense(1024, activation="relu", name="hidden_2")(x)
        return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="mlp1024")
    return keras.applications.MobileNetV2(weights=None, classes=10, classifier_activation=None)


def measure(name, rounds):
    import blockprune

    target, batch, steps = CASES[name]
    x, y = synthetic(name, batch, steps)
    dense_model = build(name)
    plan = blockprune.plan(dense_model, target, sparsity=0.9)
    schedule = blockprune.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000, frequency=100)
    dense_medians, pruned_medians, dense_means, pruned_means = [], [], [], []
    for _ in range(rounds):  # alternate, so drifts in machine load hit both alike
        dense_times = time_fit(keras, build(name), x, y, batch, [])
        dense_medians.append(statistics.median(dense_times))
        dense_means.append(statistics.mean(dense_times))
        pruned = blockprune.prune(build(name), plan, schedule)
        pruned_times = time_fit(keras, pruned, x, y, batch, [blockprune.UpdatePruningStep()])
        pruned_medians.append(statistics.median(pruned_times))
        pruned_means.append(statistics.mean(pruned_times))
    # One scheduled mask update of every wrapper (it runs every `frequency` = 100 steps).
    from blockprune.pruning.callbacks import collect_wrappers

    t0 = time.perf_counter()
    for wrapper in collect_wrappers(pruned):
        wrapper.update_masks(100)
    update_ms = (time.perf_counter() - t0) * 1e3
    dense, sparse = statistics.median(dense_medians), statistics.median(pruned_medians)
    return {
        "model": name, "target": target, "batch": batch, "steps_per_round": steps, "rounds": rounds,
        "pruned_weights": len(plan.pruned_layers),
        "dense_step_ms": dense * 1e3, "pruned_step_ms": sparse * 1e3, "ratio": sparse / dense,
        "mean_ratio": statistics.median(pruned_means) / statistics.median(dense_means),
        "mask_update_ms": update_ms,
        "ratio_with_updates": (sparse + update_ms / 1e3 / schedule.frequency) / dense,
        "dense_round_medians_ms": [t * 1e3 for t in dense_medians],
        "pruned_round_medians_ms": [t * 1e3 for t in pruned_medians],
    }


def run_tfmot(python, quick):
    script = HERE / "tfmot_train_step.py"
    cmd = [python, str(script), "--json"] + (["--quick"] if quick else [])
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine():
    import tensorflow as tf

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "tensorflow": tf.__version__, "keras": keras.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--tfmot-python", help="python of a tfmot environment (bench/setup_tfmot_env.sh)")
    parser.add_argument("--out", help="results folder (default: bench/results; with --quick, a temporary folder)")
    parser.add_argument("--report-only", action="store_true", help="re-render train_step.md from train_step.json")
    args = parser.parse_args(argv)
    args.out = results_dir(args.out, args.quick and not args.report_only, HERE / "results")
    if args.report_only:
        write_report(json.loads((Path(args.out) / "train_step.json").read_text()), Path(args.out))
        return
    rounds = 1 if args.quick else 3
    results = {"machine": machine(), "blockprune": [], "tfmot": None}
    for name in CASES:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results["blockprune"].append(measure(name, rounds))
    if args.tfmot_python:
        print("measuring tfmot ...", file=sys.stderr, flush=True)
        results["tfmot"] = run_tfmot(args.tfmot_python, args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "train_step.json", json.dumps(results, indent=2) + "\n")
    write_report(results, out)


def write_report(results, out: Path) -> None:
    lines = ["# Training step time: pruned vs unwrapped", "",
             f"Machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs, "
             f"TensorFlow {results['machine']['tensorflow']}, Keras {results['machine']['keras']}.",
             "Median over rounds of the median (and mean) time of one `fit` step, the pruning callback "
             "included, 3 warm-up steps dropped; a scheduled mask update (every 100 steps) is timed "
             "separately and amortized in the last column. Goal: ratio <= 1.15.", "",
             "| tool | model | target / blocks | batch | dense ms/step | pruned ms/step | ratio (median) "
             "| ratio (mean) | mask update ms | ratio, updates amortized |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["blockprune"]:
        lines.append(f"| blockprune | {r['model']} | {r['target']} | {r['batch']} | {r['dense_step_ms']:.2f} | "
                     f"{r['pruned_step_ms']:.2f} | {r['ratio']:.3f} | {r['mean_ratio']:.3f} | "
                     f"{r['mask_update_ms']:.1f} | {r['ratio_with_updates']:.3f} |")
    tf_res = results["tfmot"]
    if tf_res and "error" not in tf_res:
        for r in tf_res["results"]:
            lines.append(f"| tfmot {tf_res['version']} | {r['model']} | {r['blocks']} | {r['batch']} | "
                         f"{r['dense_step_ms']:.2f} | {r['pruned_step_ms']:.2f} | {r['ratio']:.3f} | {r['mean_ratio']:.3f} | - | - |")
    elif tf_res:
        lines.append(f"\ntfmot could not be measured: {tf_res['error']}")
    write_text_atomic(out / "train_step.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Training step time of a pruned model vs the same model unwrapped, on every Keras backend.

Issue goals: the wrapper's step overhead (pruned / unwrapped) <= 1.10x on each backend, and
the fastest backend's pruned step at or below tfmot's on the digits MLP.

Measures, in one run, per backend (TensorFlow, JAX, PyTorch: each installed one, each in its own
interpreter since Keras fixes its backend at import), the mean step time of `fit` epochs after
a warm-up epoch (`UpdatePruningStep` and its scheduled mask updates, every 100 steps, included),
epochs of the unwrapped and the pruned model alternating (ABBA); the ratio is the median over
pairs of pruned / unwrapped, so that the machine's load, which drifts on a shared machine, is
nearly the same on both sides of each ratio. Cases:

- digits: the digits MLP 64-512-512-10 at batch 32, target simd-4x1, blocks (4, 1);
- mlp1024: 1024 -> 1024 -> 1024 -> 10 at batch 64, target simd-4x1, blocks (4, 1);
- mobilenetv2 (weights=None, 224x224) at batch 8, target dsp-1x8, its 1x1 convolutions in (1, 8);

and, when a tfmot environment is given (bench/setup_tfmot_env.sh), tfmot 0.8.1 on the same
models, timed the same way (bench/tfmot_train_step.py).

Usage:
    python bench/train_step.py [--quick] [--backends tensorflow,jax,torch] [--tfmot-python PATH] [--merge] [--out DIR]

With --merge, the backends measured now (and tfmot, when measured) replace theirs in the saved
train_step.json and the others are kept; the report names what was rerun. A backend that fails
keeps its saved rows, and the script exits with an error naming it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BACKENDS = ("tensorflow", "jax", "torch")

# model name -> (target, batch size, steps per epoch); the MLPs' epochs hold one mask update each
CASES = {
    "digits": ("simd-4x1", 32, 100),
    "mlp1024": ("simd-4x1", 64, 100),
    "mobilenetv2": ("dsp-1x8", 8, 12),
}
# model name -> pairs of timed epochs (unwrapped, pruned) of a full run; --quick: 2
PAIRS = {"digits": 60, "mlp1024": 40, "mobilenetv2": 8}


def build(keras, name):
    keras.utils.set_random_seed(0)
    if name in ("digits", "mlp1024"):
        n_in, width = (64, 512) if name == "digits" else (1024, 1024)
        inputs = keras.Input((n_in,))
        x = keras.layers.Dense(width, activation="relu", name="hidden_1")(inputs)
        x = keras.layers.Dense(width, activation="relu", name="hidden_2")(x)
        return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)
    return keras.applications.MobileNetV2(weights=None, classes=10, classifier_activation=None)


def measure(name, pairs):
    """One case on this process's backend."""
    import keras

    import blockprune
    from _timing import paired_ratios, synthetic, time_pairs
    from blockprune.pruning.callbacks import collect_wrappers

    target, batch, steps = CASES[name]
    x, y = synthetic(name, batch, steps)
    plan = blockprune.plan(build(keras, name), target, sparsity=0.9)
    schedule = blockprune.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100 * steps, frequency=100)
    pruned = blockprune.prune(build(keras, name), plan, schedule)
    dense, sparse = time_pairs(keras, build(keras, name), pruned, x, y, batch, [blockprune.UpdatePruningStep()],
                               pairs)
    # One scheduled mask update of every wrapper, timed alone (it is inside the epochs above too).
    t0 = time.perf_counter()
    for wrapper in collect_wrappers(pruned):
        wrapper.update_masks(100, pruned.optimizer)
    update_ms = (time.perf_counter() - t0) * 1e3
    return {
        "model": name, "target": target, "batch": batch, "steps_per_epoch": steps, "pairs": pairs,
        "pruned_weights": len(plan.pruned_layers),
        "dense_step_ms": statistics.median(dense) * 1e3, "pruned_step_ms": statistics.median(sparse) * 1e3,
        **paired_ratios(dense, sparse), "mask_update_ms": update_ms,
        "dense_epoch_ms": [t * 1e3 for t in dense], "pruned_epoch_ms": [t * 1e3 for t in sparse],
    }


def worker(args) -> None:
    """Runs every case on this interpreter's backend and prints one JSON line."""
    import keras

    results = []
    for name in CASES:
        print(f"  {keras.backend.backend()}: {name} ...", file=sys.stderr, flush=True)
        results.append(measure(name, 2 if args.quick else PAIRS[name]))
    print(json.dumps({"backend": keras.backend.backend(), "version": _version(keras.backend.backend()),
                      "results": results}))


def _version(backend):
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    return __import__(module).__version__


def _run(cmd, env) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_backend(backend, quick) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return _run([sys.executable, __file__, "--worker"] + (["--quick"] if quick else []), env)


def run_tfmot(python, quick) -> dict:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    return _run([python, str(HERE / "tfmot_train_step.py"), "--json"] + (["--quick"] if quick else []), env)


def machine():
    import keras

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "keras": keras.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two pairs of timed epochs per model")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated Keras backends (default: every one installed)")
    parser.add_argument("--tfmot-python", help="python of a tfmot environment (bench/setup_tfmot_env.sh)")
    parser.add_argument("--out", help="results folder (default: bench/results; with --quick, a temporary folder)")
    parser.add_argument("--report-only", action="store_true", help="re-render train_step.md from train_step.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the saved results of the backends (and tfmot) not measured now")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    if args.worker:
        worker(args)
        return
    from _timing import results_dir

    from blockprune._atomic import write_text_atomic

    args.out = results_dir(args.out, args.quick and not args.report_only, HERE / "results")
    if args.report_only:
        write_report(json.loads((Path(args.out) / "train_step.json").read_text()), Path(args.out))
        return
    results = {"machine": machine(), "backends": [], "tfmot": None}
    for backend in args.backends.split(","):
        if importlib.util.find_spec(backend) is None:
            print(f"skipping {backend}: not installed", file=sys.stderr)
            continue
        print(f"measuring on {backend} ...", file=sys.stderr, flush=True)
        results["backends"].append({"backend": backend, **run_backend(backend, args.quick)})
    if args.tfmot_python:
        print("measuring tfmot ...", file=sys.stderr, flush=True)
        results["tfmot"] = run_tfmot(args.tfmot_python, args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    measured = results["backends"]
    if args.merge and (out / "train_step.json").is_file():
        results = _merged(json.loads((out / "train_step.json").read_text()), results)
    failed = [b["backend"] for b in measured if "error" in b]
    write_text_atomic(out / "train_step.json", json.dumps(results, indent=2) + "\n")
    write_report(results, out)
    if failed:
        sys.exit(f"failed on {', '.join(failed)} (see the report)")


def _merged(old: dict, new: dict) -> dict:
    """``old`` with the backends (and tfmot) that ``new`` measured replaced, in ``old``'s order;
    a backend that failed now keeps its saved rows (the failure is printed)."""
    saved = {b["backend"] for b in old["backends"] if "error" not in b}
    for b in new["backends"]:
        if "error" in b and b["backend"] in saved:
            print(f"{b['backend']} failed ({b['error']}); its saved rows are kept", file=sys.stderr)
    new = {**new, "backends": [b for b in new["backends"] if "error" not in b or b["backend"] not in saved]}
    fresh = {b["backend"]: b for b in new["backends"]}
    backends = [fresh.pop(b["backend"], b) for b in old["backends"]] + list(fresh.values())
    rerun = list(dict.fromkeys(old.get("rerun", []) + [b["backend"] for b in new["backends"]]
                               + (["tfmot"] if new["tfmot"] else [])))
    return {**old, "machine": new["machine"], "backends": backends, "tfmot": new["tfmot"] or old["tfmot"],
            "rerun": rerun}


def write_report(results, out: Path) -> None:
    from blockprune._atomic import write_text_atomic

    m = results["machine"]
    lines = ["# Training step time: pruned vs unwrapped, per Keras backend, beside tfmot", "",
             f"Machine: {m['platform']}, {m['cpus']} CPUs, Keras {m['keras']}."
             + (f" Rerun and merged afterwards: {', '.join(results['rerun'])} (each backend's ratios come from "
                "one run)." if results.get("rerun") else ""),
             "Mean step time of `fit` epochs after a warm-up epoch (the pruning callback and its mask "
             "updates, every 100 steps, included), epochs of the unwrapped and the pruned model alternating "
             "(ABBA); step times are medians over epochs, the ratio is the median over pairs of pruned / "
             "unwrapped. "
             "Goals: ratio <= 1.10 on every backend; the fastest backend's pruned digits step at or below "
             "tfmot's.", "",
             "| tool | backend | model | target | batch | unwrapped ms/step | pruned ms/step | ratio "
             "| ratio's quartiles | one mask update, ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    pruned_digits = {}
    for b in results["backends"]:
        if "error" in b:
            lines.append(f"| blockprune | {b['backend']} | failed: {b['error']} | | | | | | | |")
            continue
        for r in b["results"]:
            lines.append(f"| blockprune | {b['backend']} {b['version']} | {r['model']} | {r['target']} | "
                         f"{r['batch']} | {r['dense_step_ms']:.3f} | {r['pruned_step_ms']:.3f} | "
                         f"{r['ratio']:.3f} | {r['ratio_q1']:.3f}-{r['ratio_q3']:.3f} | {r['mask_update_ms']:.1f} |")
            if r["model"] == "digits":
                pruned_digits[b["backend"]] = r["pruned_step_ms"]
    tf_res = results["tfmot"]
    tfmot_digits = None
    if tf_res and "error" not in tf_res:
        for r in tf_res["results"]:
            lines.append(f"| tfmot {tf_res['version']} | tf_keras | {r['model']} | {r['blocks']} | {r['batch']} | "
                         f"{r['dense_step_ms']:.3f} | {r['pruned_step_ms']:.3f} | {r['ratio']:.3f} | "
                         f"{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f} | - |")
            if r["model"] == "digits":
                tfmot_digits = r["pruned_step_ms"]
    elif tf_res:
        lines.append(f"\ntfmot could not be measured: {tf_res['error']}")
    ratios = [r["ratio"] for b in results["backends"] if "error" not in b for r in b["results"]]
    if ratios:
        lines += ["", f"Wrapper overhead: best {min(ratios):.3f}x, worst {max(ratios):.3f}x over every backend "
                      "and model."]
    if pruned_digits:
        fastest = min(pruned_digits, key=pruned_digits.get)
        line = f"Fastest backend for the pruned digits MLP: {fastest}, {pruned_digits[fastest]:.3f} ms per step"
        if tfmot_digits:
            line += f"; tfmot {tfmot_digits:.3f} ms ({pruned_digits[fastest] / tfmot_digits:.2f}x tfmot's time)"
        lines.append(line + ".")
    write_text_atomic(out / "train_step.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

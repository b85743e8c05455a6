"""Accuracy of pruning on each Keras backend (issue goal: on the digits MLP at 90%, (4, 1) and
cpu-wide within 0.5 points across backends).

Trains the digits MLP 64-512-512-10 densely once (on TensorFlow, 30 epochs), then, on every
installed backend (TensorFlow, JAX, PyTorch, each in its own interpreter), prunes that same
model to 90% with `blockprune.pruning.finetune` (the pipeline of `blockprune prune`: channel
permutation where it helps, 30 epochs of cubic pruning and fine-tuning), over 16 seeds, and
reports the test accuracy of the stripped model, for four plans, each made once (on
TensorFlow) and used by every backend:

- simd-4x1: every weight in (4, 1) blocks at 90%;
- cpu-wide: the plan `blockprune plan --target cpu-wide --sparsity 0.9` makes: both hidden
  weights in (1, 128) blocks at 90% (the logits are too small for the target and stay dense);
- cpu-wide as run plans it: the same, with the 64-input first layer capped at 50%, as
  `blockprune run` plans it (`blockprune.run.narrow_overrides`);
- cpu-wide, sensitivity-aware: the plan `blockprune plan --overall-sparsity 0.9
  --sensitivity-data` makes (90% of the prunable weights zero, each weight at most 95%, spent
  where the held-out loss rises least per microsecond saved; sensitivity measured on the last
  1,000 training samples), the logits dense, as bench/accuracy.py's best cpu-wide variant.

Twice: with the training set in one order for every epoch (seed s draws it with NumPy's
generator of seed s) and shuffled every epoch by `finetune` (`finetune.epoch_order`: NumPy's, from
the seed that `keras.utils.set_random_seed(s)` gives). Either way every backend sees the same
orders for one seed, so within a seed only the backend (float rounding) differs. The masks are
compared with TensorFlow's for the same seed and order. Beside each backend's median, the range
over its seeds shows how far one backend's runs scatter on their own, and the median over seeds
of its difference from TensorFlow's run with the same seed measures the backend's own effect
with that scatter paired away.

Usage:
    python bench/backends.py [--quick] [--backends tensorflow,jax,torch] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: the plans compared, each saved as <name>.json beside the dense model
PLANS = ("simd-4x1", "cpu-wide", "cpu-wide as run plans it", "cpu-wide sensitivity-aware")
ORDERS = ("one order every epoch", "shuffled every epoch")


def make_plans(dense, data, work: Path) -> None:
    """Saves every plan of PLANS for the dense model in ``work``."""
    import blockprune
    from blockprune.data import Dataset
    from blockprune.run import narrow_overrides
    from blockprune.sensitivity import measure_sensitivity

    blockprune.plan(dense, "simd-4x1", sparsity=0.9).save(work / "simd-4x1.json")
    plain = blockprune.plan(dense, "cpu-wide", sparsity=0.9)
    plain.save(work / "cpu-wide.json")
    blockprune.plan(dense, "cpu-wide", sparsity=0.9, overrides=narrow_overrides(plain, 0.9)).save(
        work / "cpu-wide as run plans it.json")
    held_out = Dataset(data.x_train[:-1000], data.y_train[:-1000], data.x_train[-1000:], data.y_train[-1000:],
                       name="digits (last 1000 training samples)")
    ceiling = blockprune.plan(dense, "cpu-wide", sparsity=0.95, overrides={"logits": "skip"})
    allocated = blockprune.plan(dense, "cpu-wide", sparsity=0.95, overrides={"logits": "skip"}, overall_sparsity=0.9,
                                sensitivity=measure_sensitivity(dense, ceiling, held_out))
    allocated.save(work / "cpu-wide sensitivity-aware.json")


def worker(work: str, out: str, epochs: int, seeds: int) -> None:
    import keras
    import numpy as np

    from blockprune.data import load_data
    from blockprune.plan import SparsityPlan
    from blockprune.pruning.finetune import finetune

    data = load_data("digits")
    results = []
    for order in ORDERS:
        for target in PLANS:
            for seed in range(seeds):
                model = keras.models.load_model(Path(work) / "init.keras")
                plan = SparsityPlan.load(Path(work) / f"{target}.json")
                keras.utils.set_random_seed(seed)
                shuffled = order == ORDERS[1]
                result = finetune(model, plan, data if shuffled else _ordered(data, seed), epochs=epochs, verbose=0,
                                  shuffle=shuffled)
                kernels = {f"{lp.layer}/{lp.weight}": keras.ops.convert_to_numpy(
                    result.model.get_layer(lp.layer).kernel) != 0 for lp in plan.pruned_layers}
                np.savez(Path(out) / _mask_file(order, target, seed), **kernels)
                results.append({"order": order, "target": target, "seed": seed,
                                "accuracy": result.sparse_metrics["accuracy"], "exact": result.verification.ok})
    print(json.dumps({"backend": keras.backend.backend(), "results": results}))


def _ordered(data, seed: int):
    """``data`` with its training samples in the order NumPy's generator of ``seed`` draws
    (the same on every backend)."""
    import numpy as np

    from blockprune.data import Dataset

    order = np.random.default_rng(seed).permutation(len(data.x_train))
    return Dataset(data.x_train[order], data.y_train[order], data.x_test, data.y_test, name=f"{data.name} (order {seed})")


def _mask_file(order: str, target: str, seed: int) -> str:
    return f"{ORDERS.index(order)}-{target}-{seed}.npz"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, 5 epochs")
    parser.add_argument("--seeds", type=int, default=16, help="seeds per plan, data order and backend")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--out", help="results folder (default: bench/results; with --quick, a temporary folder)")
    parser.add_argument("--worker", nargs=2, metavar=("WORK", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    epochs, seeds = (5, 1) if args.quick else (30, args.seeds)
    if args.worker:
        worker(args.worker[0], args.worker[1], epochs, seeds)
        return
    sys.path.insert(0, str(HERE))
    import numpy as np
    from _timing import results_dir

    from blockprune._atomic import write_text_atomic
    from blockprune.data import load_data
    from blockprune.examples import example_model, train_dense

    out = results_dir(args.out, args.quick, HERE / "results")
    work = Path(tempfile.mkdtemp(prefix="backends-"))
    data = load_data("digits")
    dense = train_dense(example_model("mlp"), data, epochs=30)
    dense.save(work / "init.keras")
    make_plans(dense, data, work)
    logits = np.asarray(dense.predict(data.x_test, verbose=0))
    dense_accuracy = float(np.mean(logits.argmax(1) == data.y_test))
    runs = {}
    for backend in args.backends.split(","):
        if importlib.util.find_spec(backend) is None:
            print(f"skipping {backend}: not installed", file=sys.stderr)
            continue
        print(f"pruning on {backend} ...", file=sys.stderr, flush=True)
        (work / backend).mkdir()
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run([sys.executable, __file__, "--worker", str(work), str(work / backend)]
                              + (["--quick"] if args.quick else []), env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{backend} failed: {done.stderr.strip().splitlines()[-1]}")
        runs[backend] = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    rows = []
    for order in ORDERS:
        for target in PLANS:
            medians = {}
            for backend, results in runs.items():
                mine = [r for r in results if r["order"] == order and r["target"] == target]
                agree = []
                if backend != "tensorflow" and "tensorflow" in runs:
                    for r in mine:
                        name = _mask_file(order, target, r["seed"])
                        a, b = np.load(work / backend / name), np.load(work / "tensorflow" / name)
                        agree.append(min(float(np.mean(a[k] == b[k])) for k in a.files))
                medians[backend] = statistics.median(r["accuracy"] for r in mine)
                paired = None
                if backend != "tensorflow" and "tensorflow" in runs:
                    theirs = {r["seed"]: r["accuracy"] for r in runs["tensorflow"]
                              if r["order"] == order and r["target"] == target}
                    paired = statistics.median(r["accuracy"] - theirs[r["seed"]] for r in mine)
                rows.append({"order": order, "target": target, "backend": backend,
                             "accuracies": [r["accuracy"] for r in mine], "median": medians[backend],
                             "seed_range": max(r["accuracy"] for r in mine) - min(r["accuracy"] for r in mine),
                             "exact": all(r["exact"] for r in mine),
                             "median_difference_from_tensorflow": paired,
                             "mask_agreement_with_tensorflow": min(agree) if agree else None})
            rows.append({"order": order, "target": target, "backend": "spread",
                         "median": max(medians.values()) - min(medians.values())})
    report = {"dense_accuracy": dense_accuracy, "epochs": epochs, "seeds": seeds, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "backends.json", json.dumps(report, indent=2) + "\n")
    lines = ["# Pruning accuracy per Keras backend: digits MLP 64-512-512-10 at 90%", "",
             f"One dense model (test accuracy {dense_accuracy:.2%}), pruned on each backend with "
             f"`finetune` ({epochs} epochs, channel permutation on), {seeds} seed(s); median test accuracy. "
             "Goal: within 0.5 points across backends.", "",
             "| data order | plan | backend | accuracy per seed | median | range over seeds "
             "| median difference from TensorFlow, same seed | exact blocks | masks equal to TensorFlow's |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["backend"] == "spread":
            lines.append(f"| {r['order']} | {r['target']} | **spread** | | **{r['median'] * 100:.2f} points** | | | | |")
            continue
        agree = "-" if r["mask_agreement_with_tensorflow"] is None else f"{r['mask_agreement_with_tensorflow']:.2%}"
        paired = r["median_difference_from_tensorflow"]
        paired = "-" if paired is None else f"{paired * 100:+.2f} points"
        lines.append(f"| {r['order']} | {r['target']} | {r['backend']} | "
                     f"{', '.join(f'{a:.2%}' for a in r['accuracies'])} | {r['median']:.2%} | "
                     f"{r['seed_range'] * 100:.2f} points | {paired} | {'yes' if r['exact'] else 'NO'} | {agree} |")
    lines += ["", "Mask agreement: the least, over pruned weights and seeds, of the fraction of weights "
              "whose kept/pruned state matches TensorFlow's run with the same seed and data order. Both "
              "ways, every backend sees the same data orders for one seed (drawn by NumPy), so only float "
              "rounding differs between backends."]
    write_text_atomic(out / "backends.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

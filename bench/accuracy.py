"""What block shapes cost in accuracy, and what channel permutation, a sensitivity-aware allocation
and distillation win back.

For each dataset (scikit-learn's digits; the 28x28 animal-shapes images), one MLP is trained
densely, then pruned from that dense model by gradual magnitude pruning (cubic schedule to the
sparsity over 75% of the steps, then fine-tuning) for every shipped target and for unstructured
(1, 1) blocks, at 80, 90 and 95%: plain; with channel permutation (where a target's blocks are
wide, `(1, c)`); with permutation and a sensitivity-aware allocation (the same overall sparsity,
each weight at most halfway from it to 100%, spent where it costs the least held-out loss per
microsecond; the sensitivity measured on the last 1,000 training samples); and with all three,
distillation from the dense model added. Both hidden kernels are pruned; the small
head stays dense. With `--tfmot-python`, tfmot 0.8.1 prunes the same MLP on the same data at
(1, 1) and (4, 1) (bench/tfmot_accuracy.py in its own environment, bench/setup_tfmot_env.sh).

The dense models (and tfmot's) train with a learning rate decaying on a cosine to zero
(``train_dense``); results from before that change say "constant" in their dense line.

Writes accuracy.json, accuracy.md and accuracy.png (atomically) into bench/results, or into a
temporary folder with --quick (fewer epochs, 90% only; never over the committed results). With
--merge, the rows of the datasets and sparsities run replace theirs in the committed accuracy.json
and the others stay (the dense model must train to the same accuracy as the rows kept; TensorFlow's
ops run deterministically so that it does).

Usage:
    pip install --no-deps animal-mnist==0.4      # the animal-shapes images (blockprune.data)
    python bench/accuracy.py [--tfmot-python bench/.venv-tfmot/bin/python] [--quick] [--out DIR]
                             [--datasets animal-shapes] [--sparsities 0.9] [--merge]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import blockprune  # noqa: E402
from _timing import results_dir  # noqa: E402
from blockprune._atomic import atomic_path, write_text_atomic  # noqa: E402
from blockprune.data import BUILTIN_DATA, Dataset, save_npz  # noqa: E402
from blockprune.examples import example_model, train_dense  # noqa: E402
from blockprune.kerasgraph import copy_model  # noqa: E402
from blockprune.pruning.finetune import Distillation, finetune  # noqa: E402
from blockprune.sensitivity import measure_sensitivity  # noqa: E402
from blockprune.targets import load_target, shipped_target_names  # noqa: E402

HERE = Path(__file__).resolve().parent
#: dataset -> (built-in model, hidden width, dense epochs, pruning epochs, batch size)
DATASETS = {"digits": ("mlp", 512, 30, 30, 32), "animal-shapes": ("animal1024", 1024, 30, 30, 64)}
#: variant -> (channel permutation, sensitivity-aware allocation, distillation)
VARIANTS = {"plain": (False, False, False), "permute": (True, False, False),
            "permute+sensitivity": (True, True, False), "all three": (True, True, True)}
#: With sensitivity, a weight may go this share of the way from the overall sparsity to 100%
#: (90% overall: each weight at most 95%).
HEADROOM = 0.5


def configs() -> list[tuple[str, object, dict]]:
    """``(label, target, overrides)`` for every shipped target and unstructured (1, 1) (simd-4x1's
    descriptor with one block shape, (1, 1))."""
    unstructured = dataclasses.replace(load_target("simd-4x1"), name="unstructured", block_shapes=((1, 1),))
    out = [(name, name, {"logits": "skip"}) for name in shipped_target_names()]
    return out + [("unstructured (1, 1)", unstructured, {"logits": "skip"})]


def epochs_of(dataset: str, quick: bool) -> tuple[int, int]:
    """``(dense epochs, pruning epochs)`` of one of ``DATASETS`` (a fifth, at least 2, with ``quick``)."""
    _, _, dense_epochs, epochs, _ = DATASETS[dataset]
    return (max(2, dense_epochs // 5), max(2, epochs // 5)) if quick else (dense_epochs, epochs)


def deterministic() -> None:
    """Makes TensorFlow's ops deterministic, so that the dense model trains to the same weights
    in every run: ``--merge`` keeps only rows whose dense model scored what this run's does
    (animal-shapes without it: 92.45% and 92.55% in two runs; with it: 92.50% twice, no slower)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def trained_dense(dataset: str, quick: bool) -> tuple:
    """``(data, dense model trained on it, pruning epochs, batch size)`` of one of ``DATASETS``
    (fewer epochs with ``quick``)."""
    data = BUILTIN_DATA[dataset]()
    model_name, _, _, _, batch = DATASETS[dataset]
    dense_epochs, epochs = epochs_of(dataset, quick)
    dense = example_model(model_name, seed=0)
    train_dense(dense, data, epochs=dense_epochs, batch_size=batch, seed=0)
    return data, dense, epochs, batch


def blockprune_rows(dataset: str, sparsities, quick: bool, expect_dense=()) -> tuple[float, list[dict]]:
    """Every config and variant on ``dataset``; ``expect_dense``: the dense accuracies of rows
    this run is merged with (the dense model must train to them)."""
    data, dense, epochs, batch = trained_dense(dataset, quick)
    dense_acc = float(np.mean(np.argmax(dense.predict(data.x_test, verbose=0), -1) == data.y_test))
    if any(abs(a - dense_acc) > 1e-9 for a in expect_dense):
        raise SystemExit(f"{dataset}: the dense model trained to {dense_acc:.2%}, not to the {sorted(expect_dense)} of "
                         "the rows kept from the results; rerun every sparsity of it instead of merging")
    print(f"{dataset}: dense {dense_acc:.4f}", flush=True)
    # The sensitivity is measured on held-out training samples, never on the test split.
    held_out = Dataset(data.x_train[:-1000], data.y_train[:-1000], data.x_train[-1000:], data.y_train[-1000:],
                       name=f"{dataset} (last 1000 training samples)")
    rows = []
    for label, target, overrides in configs():
        for s in sparsities:
            plan = blockprune.plan(dense, target, sparsity=s, overrides=overrides)
            wide = any(lp.block_shape[0] == 1 and lp.block_shape[1] > 1 for lp in plan.pruned_layers)
            ceiling = round(s + (1 - s) * HEADROOM, 3)
            sens = measure_sensitivity(dense, blockprune.plan(dense, target, sparsity=ceiling, overrides=overrides),
                                       held_out)
            allocated = blockprune.plan(dense, target, sparsity=ceiling, overrides=overrides, overall_sparsity=s,
                                        sensitivity=sens)
            for variant, (permute, sensitive, distill) in VARIANTS.items():
                if permute and not wide and variant == "permute":
                    continue  # nothing to regroup: the same run as plain
                started = time.time()
                result = prune_once(dense, allocated if sensitive else plan, data, epochs, batch, permute, distill)
                acc = result.sparse_metrics["accuracy"]
                used = allocated if sensitive else plan
                rows.append({"dataset": dataset, "config": label, "target": getattr(target, "name", target),
                             "sparsity": s, "variant": variant,
                             "blocks": sorted({str(tuple(lp.block_shape)) for lp in plan.pruned_layers}),
                             "layer_sparsity": {lp.name: lp.sparsity for lp in used.pruned_layers},
                             "accuracy": acc, "dense_accuracy": dense_acc, "exact": result.verification.ok,
                             "permuted": [p.layer for p in result.permutations], "seconds": time.time() - started})
                print(f"  {label:22s} {s:.0%} {variant:16s} {acc:.4f}", flush=True)
    return dense_acc, rows


def prune_once(dense, plan, data, epochs: int, batch: int, permute: bool, distill: bool, seed: int = 1,
               block_score: str = "AVG", lr_decay: bool = False):
    """``finetune`` of a copy of ``dense`` to ``plan`` after ``keras.utils.set_random_seed(seed)``."""
    keras.utils.set_random_seed(seed)
    return finetune(copy_model(dense), plan, data, epochs=epochs, batch_size=batch, verbose=0, permute=permute,
                    distill=Distillation() if distill else None, block_pooling_type=block_score, lr_decay=lr_decay)


def tfmot_once(python: str, data_path: Path, dataset: str, block: str, sparsity: float, quick: bool,
               seed: int | None = None) -> dict:
    """One run of bench/tfmot_accuracy.py (its dense model from seed 0, pruned after reseeding
    with ``seed`` if given): its JSON line."""
    _, width, _, _, batch = DATASETS[dataset]
    dense_epochs, epochs = epochs_of(dataset, quick)
    out = subprocess.run([python, str(HERE / "tfmot_accuracy.py"), "--data", str(data_path), "--width", str(width),
                          "--dense-epochs", str(dense_epochs), "--epochs", str(epochs), "--batch-size", str(batch),
                          "--block", block, "--sparsity", str(sparsity), "--decay"]
                         + ([] if seed is None else ["--seed", str(seed)]),
                         capture_output=True, text=True, check=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def tfmot_rows(python: str, dataset: str, sparsities, quick: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = save_npz(BUILTIN_DATA[dataset](), Path(tmp) / "data.npz")
        for block in ("1x1", "4x1"):
            for s in sparsities:
                got = tfmot_once(python, path, dataset, block, s, quick)
                label = f"tfmot {got['version']} ({block.replace('x', ', ')})"
                rows.append({"dataset": dataset, "config": label, "target": "tfmot", "sparsity": s, "variant": "tfmot",
                             "blocks": [f"({block.replace('x', ', ')})"], "accuracy": got["sparse_accuracy"],
                             "dense_accuracy": got["dense_accuracy"], "kernel_sparsity": got["kernel_sparsity"]})
                print(f"  {label:22s} {s:.0%} {got['sparse_accuracy']:.4f} (its dense {got['dense_accuracy']:.4f})",
                      flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = ["# Accuracy of block shapes, with and without channel permutation, sensitivity and distillation", "",
             "Produced by `python bench/accuracy.py`; do not edit by hand. Test accuracy (%) after gradual magnitude "
             "pruning of both hidden kernels from one dense model per dataset: plain / with channel permutation "
             "(only where the blocks are wide; it regroups a layer where that keeps more weight) / with permutation "
             "and a sensitivity-aware allocation of the same overall sparsity (each weight at most halfway from it "
             "to 100%; sensitivity on the last 1,000 training samples) / all three, with distillation from the dense "
             "model (T=4, alpha=0.7). "
             "tfmot trains its own dense model of the same shape (its dense accuracy in brackets).", ""]
    for dataset, dense_acc in result["dense"].items():
        rows = [r for r in result["rows"] if r["dataset"] == dataset]
        sparsities = sorted({r["sparsity"] for r in rows})
        width, epochs = DATASETS[dataset][1], result["epochs"][dataset]
        lines += [f"## {dataset}: MLP -> {width} -> {width} -> 10, dense {dense_acc:.2%} "
                  f"({epochs['dense']} dense epochs at a {epochs.get('dense_rate', 'constant')} learning rate, "
                  f"{epochs['pruning']} pruning epochs)", "",
                  "| config | blocks | " + " | ".join(f"{s:.0%} {v}" for s in sparsities for v in VARIANTS) + " |",
                  "|---|---|" + "---|" * len(VARIANTS) * len(sparsities)]
        for label in dict.fromkeys(r["config"] for r in rows):
            mine = [r for r in rows if r["config"] == label]
            cells = []
            for s in sparsities:
                at = {r["variant"]: r for r in mine if r["sparsity"] == s}
                if "tfmot" in at:
                    cells += [f"{at['tfmot']['accuracy']:.2%} ({at['tfmot']['dense_accuracy']:.2%})"]
                    cells += ["-"] * (len(VARIANTS) - 1)
                else:
                    cells += [f"{at[v]['accuracy']:.2%}" if v in at else "-" for v in VARIANTS]
            lines.append(f"| {label} | {', '.join(mine[0]['blocks'])} | " + " | ".join(cells) + " |")
        ours = [r for r in rows if r["target"] != "tfmot"]
        for s in sparsities:
            at = [r for r in ours if r["sparsity"] == s]
            fine = max((r for r in at if r["config"] in ("unstructured (1, 1)", "simd-4x1")), key=lambda r: r["accuracy"])
            wide = max((r for r in at if r["config"] == "cpu-wide"), key=lambda r: r["accuracy"])
            lines.append(f"\nAt {s:.0%}: cpu-wide's best {wide['accuracy']:.2%} ({wide['variant']}) against the best "
                         f"fine-grained block {fine['accuracy']:.2%} ({fine['config']}, {fine['variant']}): "
                         f"{(wide['accuracy'] - fine['accuracy']) * 100:+.2f} points; against dense "
                         f"{(wide['accuracy'] - dense_acc) * 100:+.2f}.")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(result["dense"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in result["rows"] if r["dataset"] == dataset]
        for i, label in enumerate(dict.fromkeys(r["config"] for r in rows)):
            for variant, style in (("plain", "--"), ("permute", "-."), ("permute+sensitivity", ":"),
                                   ("all three", "-"), ("tfmot", (0, (1, 3)))):
                pts = sorted((r["sparsity"], r["accuracy"]) for r in rows if r["config"] == label and r["variant"] == variant)
                if pts:
                    ax.plot([p[0] * 100 for p in pts], [p[1] * 100 for p in pts], linestyle=style, marker="o",
                            color=f"C{i}",
                            label=f"{label} ({variant})")
        ax.axhline(result["dense"][dataset] * 100, color="black", lw=0.8, label="dense")
        ax.set(title=f"{dataset}: test accuracy after pruning", xlabel="sparsity (%)", ylabel="test accuracy (%)")
    # One legend beside the plots (the configs are the same in each), so that no line hides behind it.
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: all)")
    parser.add_argument("--tfmot-python", help="python of the tfmot environment (bench/setup_tfmot_env.sh)")
    parser.add_argument("--quick", action="store_true", help="fewer epochs, 90%% only, into a temporary folder")
    parser.add_argument("--sparsities", help="comma-separated (default: 0.8,0.9,0.95)")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the datasets and sparsities run in the results folder's accuracy.json")
    parser.add_argument("--out", help="results folder (default: bench/results)")
    args = parser.parse_args(argv)
    deterministic()
    out = results_dir(args.out, args.quick, HERE / "results")
    sparsities = (0.9,) if args.quick else (0.8, 0.9, 0.95)
    if args.sparsities:
        sparsities = tuple(float(v) for v in args.sparsities.split(","))
    result = {"dense": {}, "rows": [], "epochs": {}, "quick": args.quick}
    if args.merge and (out / "accuracy.json").is_file():  # the rows of the datasets and sparsities run are replaced
        result = json.loads((out / "accuracy.json").read_text())
        result["rows"] = [r for r in result["rows"]
                          if not (r["dataset"] in args.datasets.split(",") and r["sparsity"] in sparsities)]
    for dataset in args.datasets.split(","):
        kept = {r["dense_accuracy"] for r in result["rows"] if r["dataset"] == dataset and r["target"] != "tfmot"}
        dense_acc, rows = blockprune_rows(dataset, sparsities, args.quick, expect_dense=kept)
        result["dense"][dataset] = dense_acc
        result["rows"] += rows
        dense_epochs, epochs = epochs_of(dataset, args.quick)
        result["epochs"][dataset] = {"dense": dense_epochs, "pruning": epochs, "dense_rate": "cosine-decayed"}
        if args.tfmot_python:
            result["rows"] += tfmot_rows(args.tfmot_python, dataset, sparsities, args.quick)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "accuracy.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "accuracy.md", markdown(result))
    plot(result, out / "accuracy.png")
    print(f"Wrote {out / 'accuracy.md'}")


if __name__ == "__main__":
    sys.exit(main())

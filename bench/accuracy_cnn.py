"""What channel blocks cost a small CNN of 3x3 convolutions in accuracy, and what channel
permutation and a sensitivity-aware allocation win back.

The 28x28 animal-shapes images (blockprune.data.animal_shapes), a VGG-style CNN
(conv 32 -> conv 64 -> pool -> conv 128 -> conv 128 -> pool -> conv 128 -> global average ->
dense 10, ReLU after each convolution), trained densely, then pruned from that
dense model (cubic schedule, then fine-tuning) at 90% under the targets that prune KxK
convolutions: cpu-wide (channel blocks: one input channel, all 9 taps, by 64/32/16 outputs) and
tensor-core-2x2 ((2, 2) blocks), plain / with channel permutation / with permutation and a
sensitivity-aware allocation of the same overall sparsity.

Writes accuracy_cnn.json and accuracy_cnn.md (atomically) into bench/results, or into a
temporary folder with --quick.

Usage:
    pip install --no-deps animal-mnist==0.4
    python bench/accuracy_cnn.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import blockprune  # noqa: E402
from _timing import results_dir  # noqa: E402
from accuracy import HEADROOM  # noqa: E402
from blockprune._atomic import write_text_atomic  # noqa: E402
from blockprune.data import Dataset, animal_shapes  # noqa: E402
from blockprune.kerasgraph import copy_model  # noqa: E402
from blockprune.pruning.finetune import finetune  # noqa: E402
from blockprune.sensitivity import measure_sensitivity  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGETS = ("cpu-wide", "tensor-core-2x2")
VARIANTS = {"plain": (False, False), "permute": (True, False), "permute+sensitivity": (True, True)}


def cnn() -> keras.Model:
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((28, 28, 1), name="image")
    x = inputs
    for i, (width, pool) in enumerate(((32, False), (64, True), (128, False), (128, True), (128, False))):
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        if pool:
            x = layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="animal_cnn")


def accuracy(model, data) -> float:
    return float(np.mean(np.argmax(model.predict(data.x_test, batch_size=256, verbose=0), -1) == data.y_test))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer epochs, into a temporary folder")
    parser.add_argument("--out", help="results folder (default: bench/results)")
    args = parser.parse_args(argv)
    out = results_dir(args.out, args.quick, HERE / "results")
    dense_epochs, epochs, batch, s = (2, 2, 64, 0.9) if args.quick else (12, 8, 64, 0.9)
    data = animal_shapes(flat=False)
    dense = cnn()
    dense.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dense.fit(data.x_train, data.y_train, epochs=dense_epochs, batch_size=batch, verbose=0)
    dense_acc = accuracy(dense, data)
    print(f"dense {dense_acc:.4f}", flush=True)
    held_out = Dataset(data.x_train[:-1000], data.y_train[:-1000], data.x_train[-1000:], data.y_train[-1000:],
                       name="animal-shapes (last 1000 training samples)")
    rows = []
    for target in TARGETS:
        plan = blockprune.plan(dense, target, sparsity=s, overrides={"logits": "skip"})
        ceiling = round(s + (1 - s) * HEADROOM, 3)
        sens = measure_sensitivity(dense, blockprune.plan(dense, target, sparsity=ceiling,
                                                          overrides={"logits": "skip"}), held_out)
        allocated = blockprune.plan(dense, target, sparsity=ceiling, overrides={"logits": "skip"},
                                    overall_sparsity=s, sensitivity=sens)
        for variant, (permute, sensitive) in VARIANTS.items():
            keras.utils.set_random_seed(1)
            used = allocated if sensitive else plan
            started = time.time()
            result = finetune(copy_model(dense), used, data, epochs=epochs, batch_size=batch, verbose=0,
                              permute=permute)
            acc = result.sparse_metrics["accuracy"]
            rows.append({"target": target, "variant": variant, "sparsity": s, "accuracy": acc,
                         "blocks": {lp.name: list(lp.block_shape) for lp in used.pruned_layers},
                         "layer_sparsity": {lp.name: lp.sparsity for lp in used.pruned_layers},
                         "permuted": [p.layer for p in result.permutations], "exact": result.verification.ok,
                         "seconds": time.time() - started})
            print(f"  {target:16s} {variant:20s} {acc:.4f} permuted {[p.layer for p in result.permutations]}",
                  flush=True)
    result = {"dense_accuracy": dense_acc, "dense_epochs": dense_epochs, "pruning_epochs": epochs, "rows": rows,
              "quick": args.quick}
    lines = ["# A 3x3 CNN under channel blocks: accuracy", "",
             "Produced by `python bench/accuracy_cnn.py`; do not edit by hand. Animal-shapes (28x28, 8,000 "
             f"training images), VGG-style CNN of five 3x3 convolutions with ReLU; dense "
             f"{dense_acc:.2%} after {dense_epochs} epochs; each row {epochs} epochs of pruning and fine-tuning at "
             f"{s:.0%} of the planned convolutions' weights.", "",
             "| target | blocks | " + " | ".join(VARIANTS) + " | best vs dense |", "|---|---|" + "---|" * (len(VARIANTS) + 1)]
    for target in TARGETS:
        mine = {r["variant"]: r for r in rows if r["target"] == target}
        blocks = sorted({tuple(b) for b in mine["plain"]["blocks"].values()})
        best = max(mine.values(), key=lambda r: r["accuracy"])
        lines.append(f"| {target} | {', '.join(map(str, blocks))} | "
                     + " | ".join(f"{mine[v]['accuracy']:.2%}" for v in VARIANTS)
                     + f" | {(best['accuracy'] - dense_acc) * 100:+.2f} points ({best['variant']}) |")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "accuracy_cnn.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "accuracy_cnn.md", "\n".join(lines) + "\n")
    print(f"Wrote {out / 'accuracy_cnn.md'}")


if __name__ == "__main__":
    sys.exit(main())

"""What channel blocks cost a small CNN of 3x3 convolutions in accuracy, and what channel
permutation, a sensitivity-aware allocation and `blockprune run`'s narrow-input cap win back.

The 28x28 animal-shapes images (blockprune.data.animal_shapes), a VGG-style CNN
(conv 32 -> conv 64 -> pool -> conv 128 -> conv 128 -> pool -> conv 128 -> global average ->
dense 10, ReLU after each convolution), trained densely (Adam, the rate decaying to zero on a
cosine, as `blockprune.examples.train_dense` does), then pruned from that dense model (cubic
schedule, then fine-tuning) at each sparsity under the targets that prune KxK convolutions:
cpu-wide (channel blocks: one input channel, all 9 taps, by 64/32/16 outputs) and
tensor-core-2x2 ((2, 2) blocks). Variants: plain; with channel permutation (where the blocks
have one input row per block-row, so regrouping outputs changes what they keep); with
permutation and a sensitivity-aware allocation of the same overall sparsity; with permutation
and the cap `blockprune run` puts on narrow-input weights (`blockprune.run.narrow_overrides`:
convolutions in channel blocks reading fewer than 128 input channels at 50%), where it caps any.

Each cell is the median over ``--seeds`` (the seed fixes the fine-tuning's data order; the dense
model is the same), with the range when there are several; ``--targets`` and ``--variants`` run
a part of the table, the rest reading "not run".

Writes accuracy_cnn.json and accuracy_cnn.md (atomically) into bench/results (accuracy_cnn_l2.*
with --block-score L2, accuracy_cnn_dense30_16epochs.* with --dense-epochs 30 --pruning-epochs 16,
accuracy_cnn_lrdecay.* with --lr-decay, and so on), or into a temporary folder with --quick.

Usage:
    pip install --no-deps animal-mnist==0.4
    python bench/accuracy_cnn.py [--quick] [--sparsities 0.9,0.7] [--out DIR] [--block-score AVG|MAX|L2]
                                 [--seeds 1,2,3] [--targets cpu-wide] [--variants "permute+run's cap"]
                                 [--dense-epochs 12] [--pruning-epochs 8] [--lr-decay]
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
from accuracy import HEADROOM, deterministic  # noqa: E402
from blockprune._atomic import write_text_atomic  # noqa: E402
from blockprune.data import Dataset, animal_shapes  # noqa: E402
from blockprune.examples import train_dense  # noqa: E402
from blockprune.kerasgraph import copy_model  # noqa: E402
from blockprune.masks import POOLING_TYPES  # noqa: E402
from blockprune.pruning.finetune import finetune  # noqa: E402
from blockprune.run import narrow_overrides  # noqa: E402
from blockprune.sensitivity import measure_sensitivity  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGETS = ("cpu-wide", "tensor-core-2x2")
VARIANTS = ("plain", "permute", "permute+sensitivity", "permute+run's cap")
SKIP = {"logits": "skip"}


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


def planned_weights(model) -> dict:
    """``{weight: values}`` of the weights the targets prune (the same for both targets)."""
    return {lp.name: lp.n_weights for lp in blockprune.plan(model, TARGETS[0], overrides=SKIP).pruned_layers}


def overall_sparsity(layer_sparsity: dict, weights: dict) -> float:
    """The fraction of all of ``weights``' values that are zero (a weight an allocation kept
    dense is missing from ``layer_sparsity`` and counts as dense)."""
    return sum(n * layer_sparsity.get(name, 0.0) for name, n in weights.items()) / sum(weights.values())


def render(path: Path) -> None:
    """Recomputes each row's overall sparsity from its layer sparsities and writes the markdown
    beside ``path`` (the JSON of an earlier run), e.g. after a change to how it is counted."""
    result = json.loads(path.read_text())
    weights = planned_weights(cnn())
    for r in result["rows"]:
        r["overall_sparsity"] = overall_sparsity(r["layer_sparsity"], weights)
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    write_text_atomic(path.with_suffix(".md"), markdown(result))
    print(f"Wrote {path.with_suffix('.md')}")


def plans(dense, target, s, held_out, variants=VARIANTS) -> dict:
    """``{variant: (plan, permute)}`` for those of ``variants`` that apply to ``target`` at ``s``
    (the sensitivity is measured only when the sensitivity-aware variant is asked for)."""
    plain = blockprune.plan(dense, target, sparsity=s, overrides=SKIP)
    out = {"plain": (plain, False)}
    if any(lp.block_shape[0] == lp.view.taps for lp in plain.pruned_layers):  # one input row (channel) per block-row
        out["permute"] = (plain, True)
    if "permute+sensitivity" in variants:
        ceiling = round(s + (1 - s) * HEADROOM, 3)
        sens = measure_sensitivity(dense, blockprune.plan(dense, target, sparsity=ceiling, overrides=SKIP), held_out)
        out["permute+sensitivity"] = (blockprune.plan(dense, target, sparsity=ceiling, overrides=SKIP,
                                                      overall_sparsity=s, sensitivity=sens), "permute" in out)
    capped = narrow_overrides(plain, s)
    if capped:
        out["permute+run's cap"] = (blockprune.plan(dense, target, sparsity=s, overrides={**SKIP, **capped}),
                                    "permute" in out)
    return {variant: out[variant] for variant in VARIANTS if variant in variants and variant in out}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer epochs, into a temporary folder")
    parser.add_argument("--sparsities", default="0.9,0.7", help="comma-separated sparsities (default 0.9,0.7)")
    parser.add_argument("--out", help="results folder (default: bench/results)")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the markdown of this accuracy_cnn.json")
    parser.add_argument("--block-score", choices=POOLING_TYPES, default="AVG",
                        help="the block score masks rank blocks by (finetune's block_pooling_type; default: AVG)")
    parser.add_argument("--dense-epochs", type=int, default=12, help="epochs of dense training (default 12)")
    parser.add_argument("--pruning-epochs", type=int, default=8, help="epochs of pruning and fine-tuning (default 8)")
    parser.add_argument("--lr-decay", action="store_true",
                        help="hold the fine-tuning rate until the final sparsity, then decay it (finetune's lr_decay)")
    parser.add_argument("--seeds", default="1", help="comma-separated fine-tuning seeds; cells give the median")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated (default: both)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: all)")
    args = parser.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    targets, variants = args.targets.split(","), args.variants.split(",")
    for name, known, given in (("--targets", TARGETS, targets), ("--variants", VARIANTS, variants)):
        unknown = [v for v in given if v not in known]
        if unknown:
            parser.error(f"{name}: unknown {unknown[0]!r}; known: {', '.join(known)}")
    for name, value in (("--dense-epochs", args.dense_epochs), ("--pruning-epochs", args.pruning_epochs)):
        if value < 1:
            parser.error(f"{name} {value}: must be at least 1")
    try:
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    deterministic()
    out = results_dir(args.out, args.quick, HERE / "results")
    sparsities = [float(v) for v in args.sparsities.split(",")]
    dense_epochs, epochs, batch = (2, 2, 64) if args.quick else (args.dense_epochs, args.pruning_epochs, 64)
    data = animal_shapes(flat=False)
    dense = train_dense(cnn(), data, epochs=dense_epochs, batch_size=batch)
    dense_acc = accuracy(dense, data)
    print(f"dense {dense_acc:.4f}", flush=True)
    held_out = Dataset(data.x_train[:-1000], data.y_train[:-1000], data.x_train[-1000:], data.y_train[-1000:],
                       name="animal-shapes (last 1000 training samples)")
    weights = planned_weights(dense)
    rows = []
    for s in sparsities:
        for target in targets:
            for variant, (used, permute) in plans(dense, target, s, held_out, variants).items():
                started = time.time()
                accuracies = []
                for seed in seeds:
                    keras.utils.set_random_seed(seed)
                    result = finetune(copy_model(dense), used, data, epochs=epochs, batch_size=batch, verbose=0,
                                      permute=permute, block_pooling_type=args.block_score,
                                      lr_decay=args.lr_decay)
                    accuracies.append(result.sparse_metrics["accuracy"])
                acc = float(np.median(accuracies))
                layer_sparsity = {lp.name: lp.sparsity for lp in used.pruned_layers}
                rows.append({"target": target, "variant": variant, "sparsity": s, "accuracy": acc,
                             "accuracies": accuracies,
                             "overall_sparsity": overall_sparsity(layer_sparsity, weights),
                             "blocks": {lp.name: list(lp.block_shape) for lp in used.pruned_layers},
                             "layer_sparsity": layer_sparsity,
                             "permuted": [p.layer for p in result.permutations], "exact": result.verification.ok,
                             "seconds": time.time() - started})
                print(f"  {s:.0%} {target:16s} {variant:20s} {acc:.4f} {accuracies} overall "
                      f"{rows[-1]['overall_sparsity']:.1%} permuted {[p.layer for p in result.permutations]}",
                      flush=True)
    result = {"dense_accuracy": dense_acc, "dense_epochs": dense_epochs, "pruning_epochs": epochs,
              "sparsities": sparsities, "rows": rows, "quick": args.quick, "block_score": args.block_score,
              "lr_decay": args.lr_decay, "seeds": seeds, "variants": variants}
    out.mkdir(parents=True, exist_ok=True)
    suffixes = [args.block_score.lower()] if args.block_score != parser.get_default("block_score") else []
    suffixes += ["lrdecay"] if args.lr_decay else []
    if not args.quick:  # a quick run writes into a temporary folder anyway
        suffixes += [f"dense{dense_epochs}"] if dense_epochs != parser.get_default("dense_epochs") else []
        suffixes += [f"{epochs}epochs"] if epochs != parser.get_default("pruning_epochs") else []
    stem = "_".join(["accuracy_cnn", *suffixes])
    write_text_atomic(out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / f"{stem}.md", markdown(result))
    print(f"Wrote {out / f'{stem}.md'}")


def _score_and_seeds(result) -> list[str]:
    """The lines saying what blocks were ranked by and over which seeds (none for the first runs,
    which used mean scores and seed 1)."""
    if "seeds" not in result:
        return []
    seeds = result["seeds"]
    over = (f"the median over fine-tuning seeds {', '.join(map(str, seeds))} (range in brackets)" if len(seeds) > 1
            else f"fine-tuning seed {seeds[0]}")
    return [f"Blocks ranked by the {result['block_score']} of their weights' magnitudes (`--block-score`); each "
            f"cell {over}.", ""]


def markdown(result) -> str:
    dense_acc, rows = result["dense_accuracy"], result["rows"]
    lines = ["# A 3x3 CNN under channel blocks: accuracy", "",
             "Produced by `python bench/accuracy_cnn.py`; do not edit by hand. Animal-shapes (28x28, 8,000 "
             f"training images), VGG-style CNN of five 3x3 convolutions with ReLU; dense {dense_acc:.2%} after "
             f"{result['dense_epochs']} epochs (the rate decaying to zero on a cosine); each cell "
             f"{result['pruning_epochs']} epochs of pruning and fine-tuning of conv2-conv5 (conv1 is too small to "
             "prune) to the sparsity of its row" + (
                 ", the rate held until the final sparsity, then decaying to zero on a cosine (`--lr-decay`)"
                 if result.get("lr_decay") else "") + "; run's cap prunes narrow-input convolutions less, so its "
             "cell gives the overall sparsity it reached. \"-\": the variant does not apply (permutation regroups "
             "channel blocks, not (2, 2) blocks; the cap applies to convolutions in channel blocks).",
             "", *_score_and_seeds(result),
             "| sparsity | target | blocks | " + " | ".join(VARIANTS) + " | best vs dense |",
             "|---|---|---|" + "---|" * (len(VARIANTS) + 1)]
    for s in result["sparsities"]:
        for target in TARGETS:
            mine = {r["variant"]: r for r in rows if r["target"] == target and r["sparsity"] == s}
            if not mine:
                continue
            blocks = sorted({tuple(b) for b in next(iter(mine.values()))["blocks"].values()})
            best = max(mine.values(), key=lambda r: r["accuracy"])

            def cell(v):
                r = mine.get(v)
                if r is None:
                    return "-" if v in result.get("variants", VARIANTS) else "not run"
                seen = r.get("accuracies", [r["accuracy"]])
                notes = [f"{min(seen):.2%}-{max(seen):.2%}"] if len(seen) > 1 else []
                if abs(r["overall_sparsity"] - s) >= 0.005:
                    notes.append(f"{r['overall_sparsity']:.1%} overall")
                return f"{r['accuracy']:.2%}" + (f" ({'; '.join(notes)})" if notes else "")

            lines.append(f"| {s:.0%} | {target} | {', '.join(map(str, blocks))} | "
                         + " | ".join(cell(v) for v in VARIANTS)
                         + f" | {(best['accuracy'] - dense_acc) * 100:+.2f} points ({best['variant']}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

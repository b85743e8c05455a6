"""What quantizing a block-sparse model costs in accuracy, and what quantization-aware
fine-tuning wins back.

For each dataset (scikit-learn's digits; the 28x28 animal-shapes images), one MLP is trained
densely and pruned for cpu-wide at 90% (both hidden kernels; the small head stays dense) by
`blockprune.pruning.finetune`, twice from the same dense model and seed: plain (float) and
quantization-aware (`quantize_aware=True`: fake-quant int8 weights and outputs while
fine-tuning). Each stripped model is exported for LiteRT and ONNX Runtime as float32, dynamic
(int8 weights) and full int8 (calibrated on 256 training samples), and every sparse file is run
on the test split. Reported: the test accuracy of each file, and its difference from the float
sparse Keras model of the plain fine-tune (the issue's goal: within 0.5 points).

Writes quantized_accuracy.json and .md (atomically) into bench/results, or into a temporary
folder with --quick (fewer epochs; never over the committed results).

Usage:
    pip install --no-deps animal-mnist==0.4      # the animal-shapes images (blockprune.data)
    python bench/quantized_accuracy.py [--quick] [--datasets digits,animal-shapes] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import blockprune  # noqa: E402
from _timing import results_dir  # noqa: E402
from accuracy import trained_dense  # noqa: E402
from blockprune._atomic import write_text_atomic  # noqa: E402
from blockprune.export import export  # noqa: E402
from blockprune.pruning.finetune import finetune  # noqa: E402
from blockprune.quantize import CALIBRATION_SAMPLES, Quantization  # noqa: E402
from blockprune.runtimes import evaluate_file  # noqa: E402
from blockprune.timing import machine_info  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET = "cpu-wide"
SPARSITY = 0.9
MODES = ("none", "dynamic", "int8")
GOAL_POINTS = 0.5


def rows_for(dataset: str, quick: bool) -> list[dict]:
    data, dense, epochs, batch = trained_dense(dataset, quick)
    plan = blockprune.plan(dense, TARGET, sparsity=SPARSITY, overrides={"logits": "skip"})
    calibration = (data.x_train[:CALIBRATION_SAMPLES].astype(np.float32),)
    rows, float_sparse = [], None
    for training in ("plain", "quantization-aware"):
        keras.utils.set_random_seed(0)
        result = finetune(dense, plan, data, epochs=epochs, batch_size=batch, verbose=0,
                          quantize_aware=training == "quantization-aware")
        keras_acc = result.sparse_metrics["accuracy"]
        if float_sparse is None:
            float_sparse = keras_acc
        print(f"{dataset} / {training}: dense {result.dense_metrics['accuracy']:.4f}, "
              f"sparse Keras {keras_acc:.4f}", flush=True)
        for mode in MODES:
            with tempfile.TemporaryDirectory() as tmp:
                records = export(result.model, TARGET, tmp, formats=("tflite", "onnx"), plan=plan,
                                 quantize=Quantization(mode, calibration))
                for r in records:
                    if r.variant == "dense":
                        continue
                    acc = evaluate_file(r.path, data.x_test, data.y_test, data.n_classes)["accuracy"]
                    rows.append({"dataset": dataset, "training": training, "precision": mode,
                                 "runtime": r.runtime_options["runtime"], "dense_accuracy": result.dense_metrics["accuracy"],
                                 "float_sparse_accuracy": float_sparse, "keras_accuracy": keras_acc,
                                 "file_accuracy": acc, "points": (acc - float_sparse) * 100})
                    print(f"  {mode:8s} {rows[-1]['runtime']:12s} {acc:.4f} ({rows[-1]['points']:+.2f} points)", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--datasets", default="digits,animal-shapes", help="comma-separated: digits, animal-shapes")
    parser.add_argument("--out", help="results folder (default: bench/results; with --quick, a temporary folder)")
    parser.add_argument("--report-only", action="store_true", help="re-render the .md from the .json")
    args = parser.parse_args(argv)
    out = results_dir(args.out, args.quick and not args.report_only, HERE / "results")
    if args.report_only:
        data = json.loads((out / "quantized_accuracy.json").read_text())
        write_text_atomic(out / "quantized_accuracy.md", report(data) + "\n")
        return
    started = time.time()
    rows = [row for name in args.datasets.split(",") for row in rows_for(name, args.quick)]
    data = {"machine": machine_info(), "target": TARGET, "sparsity": SPARSITY, "quick": args.quick, "rows": rows,
            "elapsed_s": time.time() - started}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "quantized_accuracy.json", json.dumps(data, indent=2) + "\n")
    write_text_atomic(out / "quantized_accuracy.md", report(data) + "\n")
    print(report(data))


def report(data) -> str:
    lines = ["# Accuracy of quantized block-sparse files", "",
             "Produced by `python bench/quantized_accuracy.py`; do not edit by hand. Target cpu-wide, 90% of the "
             "hidden kernels zero, each model fine-tuned plain (float) and quantization-aware from the same dense "
             "model and seed; each sparse file run on the test split. 'vs plain float' is the file's accuracy minus "
             "the float sparse Keras model of the plain fine-tune; 'quantization cost' minus the float32 file of the "
             "same fine-tune and runtime.", "",
             "| dataset | fine-tuning | weights | runtime | dense | sparse Keras | file | vs plain float (points) "
             "| quantization cost (points) |",
             "|---|---|---|---|---|---|---|---|---|"]
    own_float = {(r["dataset"], r["training"], r["runtime"]): r["file_accuracy"] for r in data["rows"]
                 if r["precision"] == "none"}
    for r in data["rows"]:
        r["cost"] = (r["file_accuracy"] - own_float[r["dataset"], r["training"], r["runtime"]]) * 100
        lines.append(f"| {r['dataset']} | {r['training']} | {r['precision']} | {r['runtime']} | "
                     f"{r['dense_accuracy']:.2%} | {r['keras_accuracy']:.2%} | {r['file_accuracy']:.2%} | "
                     f"{r['points']:+.2f} | {r['cost']:+.2f} |")
    lines += ["", f"Goal: every quantized file within {GOAL_POINTS} points of the float sparse model "
                  "(the plain fine-tune: quantizing it after training, the default).", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in data["rows"]):
        for training in ("plain", "quantization-aware"):
            quantized = [r for r in data["rows"] if r["dataset"] == dataset and r["training"] == training
                         and r["precision"] != "none"]
            if not quantized:
                continue
            worst = min(quantized, key=lambda r: r["points"])
            costliest = min(quantized, key=lambda r: r["cost"])
            met = "met" if worst["points"] >= -GOAL_POINTS else "NOT met"
            lines.append(f"- {dataset}, {training} fine-tuning: worst quantized file {worst['points']:+.2f} points "
                         f"against the plain float model ({worst['precision']}, {worst['runtime']})"
                         + (f": {met}" if training == "plain" else "")
                         + f"; largest quantization cost {costliest['cost']:+.2f} points ({costliest['precision']}, "
                           f"{costliest['runtime']}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

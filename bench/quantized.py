"""Sparse and quantized together: exported files against int8 dense, not only float dense.

For each model (MLP 2048, the transformer block, the ResNet-style 3x3 CNN), pruned to 90% for
cpu-wide (one shot, from random weights: latency does not depend on the values), and each
quantization (`none` = float32, `dynamic`, `int8`), `blockprune.export` writes the sparse file
and its dense baseline quantized alike, chosen and checked for the deployment point (batch 1 /
8, 1 / 2 threads), for LiteRT and ONNX Runtime. `blockprune.bench` times each pair at its point
(dense and sparse interleaved, medians over rounds). Reported per file: the speedup over its
own-precision dense file, over the int8 dense file of its runtime, and over the fastest dense
file of any runtime and precision measured at that point.

Issue goals: quantized sparse vs int8 dense at batch 1, 1 thread >= 2x on the MLP 2048 and the
transformer, >= 1.5x on the CNN; never below 1x at batch 8 or 2 threads.

With `--target tflite-int8-16x1 --models mlp2048 --modes dynamic,int8` it measures the int8
target (TFLite's builtin 1x16 sparse kernel) in (16, 1) blocks instead, into
quantized-tflite-int8-16x1.{md,json}; its goal: never slower than int8 dense.

Usage:
    python bench/quantized.py [--quick] [--models mlp2048,transformer,resnet] [--target T] [--modes M,..] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import blockprune  # noqa: E402
from _timing import results_dir  # noqa: E402
from blockprune._atomic import write_text_atomic  # noqa: E402
from blockprune.bench import bench, compare_across  # noqa: E402
from blockprune.export import export  # noqa: E402
from blockprune.pruning import prune_once  # noqa: E402
from blockprune.quantize import Quantization  # noqa: E402
from blockprune.runtimes import sample_inputs  # noqa: E402
from blockprune.timing import machine_info  # noqa: E402
from suite import build  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = ("mlp2048", "transformer", "resnet")
MODES = ("none", "dynamic", "int8")
POINTS = ((1, 1), (8, 1), (1, 2))
TARGET = "cpu-wide"
GOALS = {"mlp2048": 2.0, "transformer": 2.0, "resnet": 1.5}
SAME_BYTES = "same bytes as the dense file"  # bench's layout note for a file kept dense


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 1, 1 thread, fewer repetitions")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--out", help="results folder (default: bench/results; with --quick, a temporary folder)")
    parser.add_argument("--target", default=TARGET, help=f"the target (default: {TARGET})")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated quantizations (default: "
                                                                  + ",".join(MODES) + ")")
    parser.add_argument("--report-only", action="store_true", help="re-render the .md from the .json")
    args = parser.parse_args(argv)
    out = results_dir(args.out, args.quick and not args.report_only, HERE / "results")
    stem = "quantized" if args.target == TARGET else f"quantized-{args.target}"
    if args.report_only:
        write_text_atomic(out / f"{stem}.md", report(json.loads((out / f"{stem}.json").read_text())) + "\n")
        return
    points = POINTS[:1] if args.quick else POINTS
    rounds, reps = (2, 10) if args.quick else (5, 30)
    rows, notes = [], []
    started = time.time()
    for name in args.models.split(","):
        dense = build(name)
        plan = blockprune.plan(dense, args.target, sparsity=0.9)
        sparse = prune_once(dense, plan)
        calibration = tuple(sample_inputs(sparse, 128, seed=4))
        for batch, threads in points:
            results = []
            with tempfile.TemporaryDirectory() as tmp:
                for mode in args.modes.split(","):
                    folder = Path(tmp) / mode
                    try:
                        export(sparse, args.target, folder, formats=("tflite", "onnx"), plan=plan, allow_dense=True,
                               batch=batch, threads=threads, quantize=Quantization(mode, calibration))
                    except ValueError as e:  # one failed export must not lose the run
                        notes.append(f"{name} / {mode} / b{batch} t{threads}: export failed: {e}")
                        print(notes[-1], flush=True)
                        continue
                    results.append(bench(folder, batches=(batch,), threads=(threads,), rounds=rounds, reps=reps,
                                         warmup=3, progress=False))
            compare_across(results)
            configs = [c for r in results for c in r.configs]
            int8_dense = {c.runtime: c.dense_median_us for c in configs if c.precision == "int8"}
            for c in configs:
                rows.append({"model": name, "batch": batch, "threads": threads, "runtime": c.runtime,
                             "precision": c.precision, "dense_us": c.dense_median_us, "sparse_us": c.sparse_median_us,
                             "speedup": c.speedup, "vs_int8_dense": (int8_dense[c.runtime] / c.sparse_median_us
                                                                     if c.runtime in int8_dense else None),
                             "vs_fastest_dense": c.vs_fastest_dense, "fastest_dense": c.fastest_dense,
                             "layers": c.lowering})
                print(f"{name} b{batch} t{threads} {c.runtime} {c.precision}: {c.speedup:.2f}x own dense, "
                      f"{rows[-1]['vs_int8_dense'] or 0:.2f}x int8 dense, {c.vs_fastest_dense:.2f}x fastest dense "
                      f"({c.fastest_dense})  [{time.time() - started:.0f} s]", flush=True)
    data = {"machine": machine_info(), "target": args.target, "sparsity": 0.9, "rows": rows, "notes": notes,
            "elapsed_s": time.time() - started}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{stem}.json", json.dumps(data, indent=2) + "\n")
    write_text_atomic(out / f"{stem}.md", report(data) + "\n")
    print(report(data))


def report(data) -> str:
    lines = ["# Sparse and quantized: exported files against int8 dense", "",
             f"Produced by `python bench/quantized.py`; do not edit by hand. Target {data['target']}, 90% of the prunable "
             "weights zero; each file exported (chosen and checked) for the point it is timed at, its dense baseline "
             "quantized alike. Medians over rounds of interleaved calls, microseconds.", "",
             "| model | batch | threads | runtime | weights | dense us | sparse us | vs own dense | vs int8 dense "
             "| vs fastest dense here | layers |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        vs_int8 = "-" if r["vs_int8_dense"] is None else f"{r['vs_int8_dense']:.2f}x"
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['runtime']} | {r['precision']} | "
                     f"{r['dense_us']:.0f} | {r['sparse_us']:.0f} | {r['speedup']:.2f}x | {vs_int8} | "
                     f"{r['vs_fastest_dense']:.2f}x ({r['fastest_dense']}) | {r['layers']} |")
    lines += ["", "Goals (quantized sparse vs int8 dense, batch 1, 1 thread; the best quantized file per model):", ""]
    goals = GOALS if data["target"] == TARGET else {}
    at_b1t1 = {model: [r for r in data["rows"] if r["model"] == model and (r["batch"], r["threads"]) == (1, 1)]
               for model in dict.fromkeys(r["model"] for r in data["rows"])}
    for model, goal in goals.items():
        best = [r for r in at_b1t1[model] if r["precision"] != "float32" and r["vs_int8_dense"] is not None]
        if best:
            top = max(best, key=lambda r: r["vs_int8_dense"])
            lines.append(f"- {model}: {top['vs_int8_dense']:.2f}x ({top['runtime']} {top['precision']}; goal "
                         f">= {goal}x): {'met' if top['vs_int8_dense'] >= goal else 'NOT met'}")
    for model, rows in at_b1t1.items():
        if rows:
            top = max(rows, key=lambda r: r["vs_fastest_dense"])
            lines.append(f"- {model} against the fastest dense file of any runtime and precision here: "
                         f"{top['vs_fastest_dense']:.2f}x ({top['runtime']} {top['precision']} vs {top['fastest_dense']})")
    quantized = [r for r in data["rows"] if r["precision"] != "float32"]
    lowered = [r for r in quantized if SAME_BYTES not in r["layers"]]
    if lowered:
        w = min(lowered, key=lambda r: r["speedup"])
        lines.append(f"- worst quantized file that is not its dense baseline, against that baseline: {w['speedup']:.2f}x "
                     f"({w['model']}, {w['runtime']} {w['precision']}, batch {w['batch']}, {w['threads']} thread(s))")
    against_int8 = [r for r in quantized if r["vs_int8_dense"] is not None]
    if against_int8:
        w = min(against_int8, key=lambda r: r["vs_int8_dense"])
        lines.append(f"- worst quantized file against the int8 dense file of its runtime: {w['vs_int8_dense']:.2f}x "
                     f"({w['model']}, {w['runtime']} {w['precision']}, batch {w['batch']}, {w['threads']} thread(s))")
    same = [r["speedup"] for r in quantized if SAME_BYTES in r["layers"]]
    if same:
        lines.append(f"- {len(same)} quantized files were kept dense (the same bytes as their baseline): timed against "
                     f"themselves they read {min(same):.2f}-{max(same):.2f}x, this machine's timing noise")
    lines += [f"- note: {n}" for n in data["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

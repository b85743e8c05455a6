"""The benchmark suite: reproduces blockprune's headline numbers on this class of machine.

Models: MLPs of width 1024 and 2048 (3 Dense layers), MobileNetV2 (weights=None, its 1x1
convolutions pruned), and a transformer encoder block (MultiHeadAttention + feed-forward).
Sparsity 0.5 / 0.8 / 0.9 / 0.95, every shipped target whose lowering runs here (emulated
targets run their gather-matmul files on this CPU and also get the cost-model estimate),
batch 1 and 8, 1 and 2 threads, LiteRT and ONNX Runtime.

Weights are pruned one-shot to each plan (magnitude of random initial weights; the suite
measures speed and size, the digits runs in README measure accuracy). Every file is exported
by blockprune, checked against Keras, then timed with `blockprune.bench`.

Usage:
    python bench/suite.py [--quick] [--out bench/results/suite]
Writes bench/RESULTS.md (with --out left as is) plus JSON and plots. About 20 minutes on
2 cores (`--quick`: one sparsity and fewer repetitions, a few minutes).
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

import blockprune  # noqa: E402
from blockprune.checks import SPARSITY_LADDER  # noqa: E402
from blockprune.bench import bench, plot_speedup_vs_sparsity  # noqa: E402
from blockprune.examples import example_model  # noqa: E402
from blockprune.export import export  # noqa: E402
from blockprune.pruning import prune_once  # noqa: E402
from blockprune.timing import machine_info  # noqa: E402

HERE = Path(__file__).resolve().parent
# model -> (targets measured, timing rounds, calls per round)
MODELS = {
    "mlp1024": (("cpu-wide", "simd-4x1", "tflite-int8-16x1", "dsp-1x8", "tensor-core-2x2"), 3, 40),
    "mlp2048": (("cpu-wide", "simd-4x1", "tflite-int8-16x1", "dsp-1x8", "tensor-core-2x2"), 3, 30),
    "mobilenetv2": (("cpu-wide", "dsp-1x8"), 2, 5),
    "transformer": (("cpu-wide", "simd-4x1", "dsp-1x8"), 3, 10),
}


def build(name):
    if name == "mlp1024":
        keras.utils.set_random_seed(0)
        inputs = keras.Input((1024,), name="features")
        x = keras.layers.Dense(1024, activation="relu", name="hidden_1")(inputs)
        x = keras.layers.Dense(1024, activation="relu", name="hidden_2")(x)
        return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="mlp1024")
    return example_model(name)


def machine() -> dict:
    from importlib.metadata import version

    import onnxruntime
    import tensorflow as tf

    return {**machine_info(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "onnxruntime": onnxruntime.__version__, "ai_edge_litert": version("ai-edge-litert"),
            "blockprune": blockprune.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sparsity 0.9 only and fewer repetitions")
    parser.add_argument("--out", default=str(HERE / "results" / "suite"), help="folder for JSON and plots")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--sparsities", default=",".join(map(str, SPARSITY_LADDER)), help="comma-separated sparsities")
    args = parser.parse_args(argv)
    sparsities = (0.9,) if args.quick else tuple(float(v) for v in args.sparsities.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows, estimates, notes = [], [], []
    for model_name in args.models.split(","):
        targets, rounds, reps = MODELS[model_name]
        if args.quick:
            rounds, reps = 1, max(3, reps // 4)
        dense = build(model_name)
        for target in targets:
            results = []
            for s in sparsities:
                t0 = time.time()
                p = blockprune.plan(dense, target, sparsity=s)
                if not p.pruned_layers:
                    notes.append(f"{model_name} / {target}: nothing to prune ({p.notes[-1] if p.notes else ''})")
                    break
                sparse = prune_once(dense, p)
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        records = export(sparse, target, Path(tmp) / "export", plan=p, allow_dense=True)
                    except ValueError as e:  # one failed export must not lose the whole run
                        notes.append(f"{model_name} / {target} / sparsity {s}: export failed: {e}")
                        print(notes[-1], flush=True)
                        continue
                    for r in records:
                        for w in r.warnings:
                            note = f"{model_name} / {target}: {w}"
                            if note not in notes:
                                notes.append(note)
                    result = bench(Path(tmp) / "export", batches=(1, 8), threads=(1, 2), rounds=rounds, reps=reps,
                                   warmup=3, progress=False)
                results.append(result)
                for c in result.configs:
                    rows.append({"model": model_name, "target": target, "sparsity": s,
                                 "overall_sparsity": result.sparsity, "runtime": c.runtime, "batch": c.batch,
                                 "threads": c.threads, "dense_median_us": c.dense_median_us,
                                 "sparse_median_us": c.sparse_median_us, "speedup": c.speedup,
                                 "sizes": result.sizes})
                if result.estimate:
                    estimates.append({"model": model_name, "target": target, "sparsity": s, **result.estimate})
                print(f"{model_name:12s} {target:17s} s={s:.2f}: " + ", ".join(
                    f"{c.runtime[:4]} b{c.batch} t{c.threads} {c.speedup:.2f}x" for c in result.configs) +
                    f"  ({time.time() - t0:.0f} s, total {time.time() - started:.0f} s)", flush=True)
            if len(results) > 1:
                plot_speedup_vs_sparsity(results, out / f"{model_name}_{target}.png")
    elapsed = time.time() - started
    data = {"machine": machine(), "elapsed_s": elapsed, "rows": rows, "estimates": estimates, "notes": notes}
    (out / "suite.json").write_text(json.dumps(data, indent=2) + "\n")
    write_results(data, out, HERE / "RESULTS.md" if not args.quick else out / "RESULTS.md")


def write_results(data, out: Path, path: Path) -> None:
    m = data["machine"]
    rel = os.path.relpath(out, path.parent)
    lines = ["# blockprune benchmark results", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, TensorFlow "
             f"{m['tensorflow']}, Keras {m['keras']}, ai-edge-litert {m['ai_edge_litert']}, ONNX Runtime "
             f"{m['onnxruntime']}. Suite run time {data['elapsed_s'] / 60:.1f} min (`python bench/suite.py`).", "",
             "Speedup = dense file median latency / sparse file median latency, same runtime, batch and threads, "
             "measured in one run (medians over rounds of repeated calls). Sparsity is the plan's; the overall "
             "fraction of zero matmul weights is lower where layers stay dense (too small, not eligible).", ""]
    models = sorted({r["model"] for r in data["rows"]}, key=list(MODELS).index)
    for model in models:
        lines += [f"## {model}", "", "| target | sparsity (overall) | runtime | b1 t1 | b1 t2 | b8 t1 | b8 t2 |",
                  "|---|---|---|---|---|---|---|"]
        keys = sorted({(r["target"], r["sparsity"], r["runtime"]) for r in data["rows"] if r["model"] == model},
                      key=lambda k: (k[0], k[1], k[2]))
        for target, s, runtime in keys:
            cells = []
            overall = None
            for b, t in ((1, 1), (1, 2), (8, 1), (8, 2)):
                hit = [r for r in data["rows"] if (r["model"], r["target"], r["sparsity"], r["runtime"], r["batch"],
                                                   r["threads"]) == (model, target, s, runtime, b, t)]
                overall = hit[0]["overall_sparsity"] if hit else overall
                cells.append(f"{hit[0]['speedup']:.2f}x" if hit else "-")
            lines.append(f"| {target} | {s:.2f} ({overall:.2f}) | {runtime} | " + " | ".join(cells) + " |")
        plots = sorted(p.name for p in out.glob(f"{model}_*.png"))
        lines += [""] + [f"![{p}]({rel}/{p})" for p in plots] + [""]
    if data["estimates"]:
        lines += ["## Cost-model estimates for hardware that is not here", "",
                  "| model | target | sparsity | estimated speedup (batch 1) | hardware |", "|---|---|---|---|---|"]
        for e in data["estimates"]:
            lines.append(f"| {e['model']} | {e['target']} | {e['sparsity']:.2f} | {e['speedup']:.2f}x (ESTIMATE) | "
                         f"{e['hardware']} |")
        lines.append("")
    if data["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in data["notes"]] + [""]
    path.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

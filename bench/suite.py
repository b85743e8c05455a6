"""The benchmark suite: reproduces blockprune's headline numbers on this class of machine.

Models: MLPs of width 1024 and 2048 (3 Dense layers), MobileNetV2 (weights=None), a
transformer encoder block (MultiHeadAttention, all four projections pruned, + feed-forward) and
a ResNet-style CNN of 3x3 convolutions. Every shipped target whose blocks fit the model.

Each file is exported for the deployment point it is measured at: for every batch (1, 8) and
thread count (1, 2) the model is exported again (each layer's lowering chosen by measurement
at that point, the whole file checked against its dense baseline there) and timed at that point
in LiteRT, ONNX Runtime and OpenVINO. Sparsity 0.9 at every point; cpu-wide also at 0.5, 0.8
and 0.95 at batch 1, 1 thread (the speedup-vs-sparsity plots).

Weights are pruned one-shot to each plan (magnitude of random initial weights; the suite
measures speed and size, the digits runs in README measure accuracy). Every file is exported
by blockprune, checked against Keras, then timed with `blockprune.bench`, dense and sparse
interleaved, in a new process that runs nothing else (as a deployment does; this process's own
state after training and converting skewed its timings). Besides the speedup over the same
runtime's dense file, every row shows the speedup over the fastest dense file of any runtime at
the same point.

Usage:
    python bench/suite.py [--quick] [--models mlp2048,transformer] [--targets cpu-wide] [--merge] [--out DIR]
Writes bench/RESULTS.md and bench/results/suite/ (JSON and plots); with --quick (0.9 at batch 1,
1 thread only, fewer repetitions) or --out it writes into DIR (default: a temporary folder) and
never touches the committed results. About 70 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import blockprune  # noqa: E402
from blockprune._atomic import write_text_atomic  # noqa: E402
from blockprune.bench import bench, estimate_export, plot_speedup_vs_sparsity  # noqa: E402
from blockprune.checks import SPARSITY_LADDER  # noqa: E402
from blockprune.examples import example_model  # noqa: E402
from blockprune.export import export  # noqa: E402
from blockprune.pruning import prune_once  # noqa: E402
from blockprune.timing import machine_info  # noqa: E402

HERE = Path(__file__).resolve().parent
ALL_TARGETS = ("cpu-wide", "simd-4x1", "tflite-int8-16x1", "dsp-1x8", "tensor-core-2x2")
# model -> (targets measured, timing rounds, calls per round)
MODELS = {
    "mlp1024": (ALL_TARGETS, 3, 40),
    "mlp2048": (ALL_TARGETS, 3, 30),
    "transformer": (("cpu-wide", "simd-4x1", "dsp-1x8"), 3, 15),
    "resnet": (("cpu-wide",), 3, 8),
    "mobilenetv2": (("cpu-wide", "dsp-1x8"), 2, 5),
}
POINTS = ((1, 1), (1, 2), (8, 1), (8, 2))
#: Goals of the issue this suite proves (model, target, runtime, batch, threads, minimum speedup).
GOALS = [("transformer", "LiteRT", 1, 1, 3.0), ("transformer", "ONNX Runtime", 1, 1, 3.0),
         ("resnet", "LiteRT", 1, 1, 3.0), ("resnet", "ONNX Runtime", 1, 1, 2.5),
         ("mobilenetv2", "LiteRT", 1, 1, 1.5), ("mlp2048", "LiteRT", 1, 1, 9.0),
         ("mlp2048", "ONNX Runtime", 1, 1, 8.0)] + [
    ("mlp2048", rt, b, t, 5.0) for rt in ("LiteRT", "ONNX Runtime", "OpenVINO") for b, t in ((8, 1), (1, 2), (8, 2))]


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
    import openvino
    import tensorflow as tf

    return {**machine_info(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__.split("-")[0],
            "ai_edge_litert": version("ai-edge-litert"), "blockprune": blockprune.__version__}


def jobs(model_name, target, quick):
    """(sparsity, batch, threads) to export and measure."""
    if quick:
        return [(0.9, 1, 1)]
    out = [(0.9, b, t) for b, t in POINTS]
    if target == "cpu-wide":
        out += [(s, 1, 1) for s in SPARSITY_LADDER if s != 0.9]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sparsity 0.9 at batch 1, 1 thread, fewer repetitions")
    parser.add_argument("--out", help="folder for RESULTS.md, JSON and plots (default: the committed bench/ results, "
                                      "or a temporary folder with --quick)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--targets", help="comma-separated subset of each model's targets (default: all of them)")
    parser.add_argument("--merge", action="store_true",
                        help="replace only these models' (and targets') rows in the existing suite.json (and "
                             "RESULTS.md)")
    parser.add_argument("--estimates", action="store_true",
                        help="recompute only the cost-model estimates of the emulated targets (seconds) into the "
                             "committed results")
    args = parser.parse_args(argv)
    if args.estimates:
        return refresh_estimates(HERE / "results" / "suite")
    committed = not args.quick and not args.out
    out = HERE / "results" / "suite" if committed else Path(args.out or tempfile.mkdtemp(prefix="suite-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows, estimates, notes, layouts = [], [], [], []
    for model_name in args.models.split(","):
        targets, rounds, reps = MODELS[model_name]
        if args.targets:
            targets = [t for t in targets if t in args.targets.split(",")]
        if args.quick:
            rounds, reps = 1, max(3, reps // 4)
        dense = build(model_name)
        for target in targets:
            curve = []
            for s, batch, threads in jobs(model_name, target, args.quick):
                t0 = time.time()
                p = blockprune.plan(dense, target, sparsity=s)
                if not p.pruned_layers:
                    notes.append(f"{model_name} / {target}: nothing to prune ({p.notes[-1] if p.notes else ''})")
                    break
                sparse = prune_once(dense, p)
                with tempfile.TemporaryDirectory() as tmp:
                    folder = Path(tmp) / "export"
                    try:
                        records = export(sparse, target, folder, plan=p, allow_dense=True, batch=batch,
                                         threads=threads)
                    except ValueError as e:  # one failed export must not lose the whole run
                        notes.append(f"{model_name} / {target} / sparsity {s}: export failed: {e}")
                        print(notes[-1], flush=True)
                        continue
                    result = bench(folder, batches=(batch,), threads=(threads,), rounds=rounds, reps=reps, warmup=3,
                                   progress=False, fresh_process=True)
                for r in records:
                    if r.variant != "sparse":
                        continue
                    if (s, batch, threads) == (0.9, 1, 1):
                        layouts.append({"model": model_name, "target": target, "file": r.format,
                                        "layers": [(lay["name"], lay["format"], lay.get("why", "")) for lay in r.layers]})
                    for w in r.warnings:
                        note = f"{model_name} / {target} / {s} / b{batch} t{threads}: {w}"
                        notes.append(note)
                if (batch, threads) == (1, 1):
                    curve.append(result)
                for c in result.configs:
                    rows.append({"model": model_name, "target": target, "sparsity": s,
                                 "overall_sparsity": result.sparsity, "runtime": c.runtime, "batch": c.batch,
                                 "threads": c.threads, "dense_median_us": c.dense_median_us,
                                 "sparse_median_us": c.sparse_median_us, "speedup": c.speedup,
                                 "vs_fastest_dense": c.vs_fastest_dense, "fastest_dense": c.fastest_dense,
                                 "layers": c.lowering, "sizes": result.sizes})
                if result.estimate and (batch, threads) == (1, 1):
                    estimates.append({"model": model_name, "target": target, "sparsity": s, **result.estimate})
                print(f"{model_name:12s} {target:17s} s={s:.2f} b{batch} t{threads}: " + ", ".join(
                    f"{c.runtime} {c.speedup:.2f}x ({c.vs_fastest_dense:.2f}x vs fastest dense)" for c in result.configs)
                    + f"  ({time.time() - t0:.0f} s, total {time.time() - started:.0f} s)", flush=True)
            if len(curve) > 1:
                plot_speedup_vs_sparsity(curve, out / f"{model_name}_{target}.png")
    elapsed = time.time() - started
    data = {"machine": machine(), "elapsed_s": elapsed, "rows": rows, "estimates": estimates, "notes": notes,
            "layouts": layouts}
    if args.merge and (out / "suite.json").is_file():
        data = _merged(json.loads((out / "suite.json").read_text()), data, set(args.models.split(",")),
                       set(args.targets.split(",")) if args.targets else None)
    write_text_atomic(out / "suite.json", json.dumps(data, indent=2) + "\n")
    write_results(data, out, HERE / "RESULTS.md" if committed else out / "RESULTS.md")


def estimates_of(model_name: str, dense) -> list[dict]:
    """Cost-model estimates (0.9, batch 1) of ``model_name`` on every emulated target it runs on."""
    out = []
    for target in MODELS[model_name][0]:
        if blockprune.load_target(target).native:
            continue
        p = blockprune.plan(dense, target, sparsity=0.9)
        if not p.pruned_layers:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            export(prune_once(dense, p), target, Path(tmp) / "e", plan=p, allow_dense=True, formats=("tflite",),
                   select="target", check=False)
            e = estimate_export(Path(tmp) / "e")
        if e:
            out.append({"model": model_name, "target": target, "sparsity": 0.9, **e})
    return out


def refresh_estimates(out: Path) -> None:
    """Replaces the committed results' estimates with freshly computed ones and rewrites RESULTS.md."""
    data = json.loads((out / "suite.json").read_text())
    models = sorted({r["model"] for r in data["rows"]}, key=list(MODELS).index)
    data["estimates"] = [e for m in models for e in estimates_of(m, build(m))]
    write_text_atomic(out / "suite.json", json.dumps(data, indent=2) + "\n")
    write_results(data, out, HERE / "RESULTS.md")


def _merged(old: dict, new: dict, models: set[str], targets: set[str] | None = None) -> dict:
    """``old`` with the rows, estimates, layouts and notes of ``models`` (on ``targets``, default
    all) replaced by ``new``'s."""
    def rerun(model, target):
        return model in models and (targets is None or target in targets)

    def keep(items):
        return [x for x in items if not rerun(x["model"], x["target"])]

    def of_note(note):  # "model / target: ..." or "model / target / sparsity ..."
        model, _, rest = note.partition(" / ")
        return model, re.split(r"[ :/]", rest, maxsplit=1)[0]

    names = models if targets is None else {f"{m} ({t})" for m in models for t in sorted(targets)}
    return {"machine": new["machine"], "elapsed_s": old["elapsed_s"] + new["elapsed_s"],
            "rerun": sorted(set(old.get("rerun", [])) | names),
            "rows": keep(old["rows"]) + new["rows"], "estimates": keep(old["estimates"]) + new["estimates"],
            "layouts": keep(old.get("layouts", [])) + new["layouts"],
            "notes": [n for n in old["notes"] if not rerun(*of_note(n))] + new["notes"]}


def _goal_lines(rows) -> list[str]:
    lines = ["## Goals (90% sparsity, cpu-wide, each file exported for the point it is measured at)", "",
             "| model | runtime | batch | threads | goal | measured | met |", "|---|---|---|---|---|---|---|"]
    for model, runtime, b, t, goal in GOALS:
        hit = [r for r in rows if (r["model"], r["target"], r["sparsity"], r["runtime"], r["batch"], r["threads"])
               == (model, "cpu-wide", 0.9, runtime, b, t)]
        if hit:
            got = hit[0]["speedup"]
            lines.append(f"| {model} | {runtime} | {b} | {t} | >= {goal:g}x | {got:.2f}x | "
                         f"{'yes' if got >= goal else 'NO'} |")
    def listed(rs):
        return "." if not rs else ": " + "; ".join(
            f"{r['model']} {r['target']} {r['sparsity']} {r['runtime']} b{r['batch']} t{r['threads']} "
            f"{r['speedup']:.2f}x" for r in rs) + "."

    slower = [r for r in rows if r["speedup"] < 0.95]
    # a file kept dense, or whose every layer was measured faster dense, is its dense baseline:
    # its "speedup" is the timing noise between two copies of one model
    copies = [r for r in slower if r["layers"].startswith("kept dense") or "same bytes" in r["layers"]
              or re.fullmatch(r"dense x\d+", r["layers"])]
    lowered = [r for r in slower if r not in copies]
    lines += ["", f"Files with lowered layers slower than 0.95x their dense baseline at the point they were exported for: "
                  f"{len(lowered)} of {len(rows)}" + listed(lowered),
              "", f"Files that run every layer dense (the same model as the baseline) and timed below 0.95x of it, which is the "
                  f"noise of timing two copies of one model here: {len(copies)}" + listed(copies), ""]
    return lines


def write_results(data, out: Path, path: Path) -> None:
    m = data["machine"]
    rel = os.path.relpath(out, path.parent)
    rows = data["rows"]
    lines = ["# blockprune benchmark results", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, TensorFlow "
             f"{m['tensorflow']}, Keras {m['keras']}, ai-edge-litert {m['ai_edge_litert']}, ONNX Runtime "
             f"{m['onnxruntime']}, OpenVINO {m['openvino']}. Suite run time {data['elapsed_s'] / 60:.1f} min "
             "(`python bench/suite.py`)" + (f"; rerun and merged afterwards: {', '.join(data['rerun'])}"
                                           if data.get("rerun") else "") + ".", "",
             "Every file was exported for the batch and thread count it is measured at (each layer's lowering chosen "
             "by measurement there; a file slower than its dense baseline there is replaced by the dense file, "
             "'kept dense'). Speedup = dense file median latency / sparse file median latency, same runtime, batch "
             "and threads, in one run (medians over rounds of repeated calls, dense and sparse interleaved). "
             "'vs fastest dense' divides the fastest dense file of any runtime at that point by the sparse file. "
             "Sparsity is the plan's; the overall fraction of zero matmul weights (in parentheses) is lower where "
             "layers stay dense (too small, not eligible).", ""]
    lines += _goal_lines(rows)
    models = sorted({r["model"] for r in rows}, key=list(MODELS).index)
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        best = max(mine, key=lambda r: r["speedup"])
        worst = min(mine, key=lambda r: r["vs_fastest_dense"])
        lines += [f"## {model}", "",
                  f"Best {best['speedup']:.2f}x ({best['target']}, {best['sparsity']}, {best['runtime']}, "
                  f"b{best['batch']} t{best['threads']}); worst against the fastest dense file here "
                  f"{worst['vs_fastest_dense']:.2f}x ({worst['target']}, {worst['sparsity']}, {worst['runtime']}, "
                  f"b{worst['batch']} t{worst['threads']}, fastest dense: {worst['fastest_dense']}).", "",
                  "| target | sparsity (overall) | batch | threads | runtime | dense us | sparse us | speedup "
                  "| vs fastest dense | layers run as |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(mine, key=lambda r: (r["target"], r["sparsity"], r["batch"], r["threads"], r["runtime"])):
            lines.append(f"| {r['target']} | {r['sparsity']:.2f} ({r['overall_sparsity']:.2f}) | {r['batch']} | "
                         f"{r['threads']} | {r['runtime']} | {r['dense_median_us']:.0f} | {r['sparse_median_us']:.0f} "
                         f"| {r['speedup']:.2f}x | {r['vs_fastest_dense']:.2f}x ({r['fastest_dense']}) | "
                         f"{r['layers']} |")
        plots = sorted(p.name for p in out.glob(f"{model}_*.png"))
        lines += [""] + [f"![{p}]({rel}/{p})" for p in plots] + [""]
        for lay in (x for x in data["layouts"] if x["model"] == model and x["target"] == "cpu-wide"):
            lines += [f"Per layer, cpu-wide at 0.9, batch 1, 1 thread, {lay['file']} file:", "",
                      "| weight | runs as | why |", "|---|---|---|"]
            lines += [f"| {name} | {fmt} | {why} |" for name, fmt, why in lay["layers"]] + [""]
    if data["estimates"]:
        lines += ["## Cost-model estimates for hardware that is not here", "",
                  "Roofline estimates at batch 1 from the target's cost model, not measurements: the whole model "
                  "(every op of its dense .tflite, each pruned matmul at its block-sparse estimate) and its matmuls "
                  "alone.", "",
                  "| model | target | sparsity | whole model dense -> sparse us | whole model speedup "
                  "| matmuls alone | hardware |", "|---|---|---|---|---|---|---|"]
        for e in data["estimates"]:
            whole = "whole model" in e["kind"]
            lines.append(f"| {e['model']} | {e['target']} | {e['sparsity']:.2f} | "
                         + (f"{e['dense_us']:.0f} -> {e['sparse_us']:.0f} | {e['speedup']:.2f}x | " if whole
                            else "not estimated | - | ")
                         + f"{e.get('matmul_speedup', e['speedup']):.2f}x | {e['hardware']} |")
        lines.append("")
    if data["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(data["notes"])] + [""]
    write_text_atomic(path, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

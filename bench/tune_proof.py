"""Proof that measuring pays: tuned plans vs the best single block, and a latency budget.

1. MobileNetV2 (weights=None) and the transformer block, target cpu-wide, LiteRT, batch 1,
   1 thread, at the same overall sparsity (90% of the weights cpu-wide can prune):
   `blockprune tune` measures every allowed block per layer shape at 50/80/90/95% and the
   whole model; the tuned plan (`--overall-sparsity 0.9 --sparsity 0.95`: per-layer block and
   sparsity for the lowest predicted latency) is exported and timed against plans that use one
   block shape and one sparsity for the whole model, that sparsity chosen so the model has the
   same number of zero weights. Shown too: tuned blocks at a uniform 90% (block choice alone).
   Goal: >= 1.2x faster than the best single block on one model, and never slower.
2. The width-2048 MLP with `--speedup 3`: the plan's allocation is exported and its measured
   speedup over dense compared with the requested 3x. Goal: within 15%.
3. The cost model's prediction error against the measurements of the profiles.

Files are timed in alternation (a round of each in turn), medians over rounds, so drift on a
shared machine falls on all of them alike.

Usage:
    python bench/tune_proof.py [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import blockprune  # noqa: E402
from _timing import results_dir  # noqa: E402
from blockprune._atomic import write_text_atomic  # noqa: E402
from blockprune.checks import SPARSITY_LADDER  # noqa: E402
from blockprune.cost import calibrate, prediction_error  # noqa: E402
from blockprune.examples import example_model  # noqa: E402
from blockprune.export import export_tflite  # noqa: E402
from blockprune.runtimes import make_runner  # noqa: E402
from blockprune.pruning import prune_once  # noqa: E402
from blockprune.targets import load_target  # noqa: E402
from blockprune.timing import median_latency_us  # noqa: E402
from blockprune.tune import tune  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET = "cpu-wide"
OVERALL, CEILING = 0.9, 0.95


def export_plan(model, plan, tmp: Path, tag: str) -> Path:
    """The model pruned one-shot to ``plan`` (None: dense), exported for LiteRT."""
    if plan is None:
        return export_tflite(model, TARGET, tmp / f"{tag}.tflite", dense=True).path
    return export_tflite(prune_once(model, plan), TARGET, tmp / f"{tag}.tflite", plan=plan, allow_dense=True).path


def time_files(model, paths: dict, rounds: int, reps: int) -> dict:
    """Median latency (us) of each file, LiteRT, batch 1, 1 thread: rounds in alternation."""
    shape = [1] + [v or 1 for v in model.inputs[0].shape[1:]]
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    runners = {k: make_runner(p, num_threads=1) for k, p in paths.items()}
    samples = {k: [] for k in paths}
    for _ in range(rounds):
        for k, run in runners.items():
            samples[k].append(median_latency_us(run, x, 1, reps))
    return {k: statistics.median(v) for k, v in samples.items()}


def zeros(plan) -> float:
    return sum(lp.n_weights * lp.sparsity for lp in plan.pruned_layers)


def fixed_block_target(block, tmp: Path) -> Path:
    from importlib import resources

    text = (resources.files("blockprune._targets") / f"{TARGET}.toml").read_text()
    text = text.replace(f'name = "{TARGET}"', f'name = "{TARGET}-only-{block[0]}x{block[1]}"')
    text = text.replace("block_shapes = [[1, 64], [1, 32], [1, 16]]", f"block_shapes = [[{block[0]}, {block[1]}]]")
    path = tmp / f"fixed-{block[0]}x{block[1]}.toml"
    path.write_text(text)
    return path


def cost_model_error(profile, target) -> dict:
    """Prediction error of the shipped cost model, and of one calibrated on this profile."""
    fitted = calibrate(profile.measurements, target)
    return {"shipped": prediction_error(profile.measurements, target),
            "calibrated": prediction_error(profile.measurements, fitted),
            "calibrated_peak_gflops": fitted.cost_model.peak_gflops,
            "calibrated_memory_gbps": fitted.cost_model.memory_gbps}


def compare(name: str, target, tmp: Path, out: Path, rounds: int, reps: int) -> dict:
    model = example_model(name)
    t0 = time.time()
    profile = tune(model, TARGET, sparsities=SPARSITY_LADDER, rounds=3, reps=20, time_budget_s=1800, progress=False)
    profile.save(out / f"profile_{name}.json")
    tune_s = time.time() - t0
    plans = {"tuned": blockprune.plan(model, TARGET, sparsity=CEILING, overall_sparsity=OVERALL, profile=profile),
             "tuned blocks, uniform": blockprune.plan(model, TARGET, sparsity=OVERALL, profile=profile)}
    goal = zeros(plans["tuned"])
    unreachable = {}
    for block in target.block_shapes:
        fixed_target = fixed_block_target(block, tmp)
        pool = sum(lp.n_weights for lp in blockprune.plan(model, fixed_target, sparsity=OVERALL).pruned_layers)
        uniform = goal / pool if pool else 1.0
        if uniform > CEILING:  # this block divides too few weights to reach the same number of zeros
            unreachable[str(block)] = uniform
            continue
        plans[f"single {block}"] = blockprune.plan(model, fixed_target, sparsity=math.ceil(uniform * 1e4) / 1e4)
    paths = {"dense": export_plan(model, None, tmp, f"{name}-dense")}
    paths.update({k: export_plan(model, p, tmp, f"{name}-{i}") for i, (k, p) in enumerate(plans.items())})
    times = time_files(model, paths, rounds, reps)
    singles = {k: times[k] for k in plans if k.startswith("single")}
    best = min(singles, key=singles.get)
    row = {"model": name, "tune_s": tune_s, "dense_us": times["dense"], "unreachable_singles": unreachable,
           "plans": {k: {"us": times[k], "overall_sparsity": p.overall_sparsity, "zeros": zeros(p),
                         "blocks": sorted({str(lp.block_shape) for lp in p.pruned_layers}),
                         "sparsities": sorted({round(lp.sparsity, 2) for lp in p.pruned_layers}),
                         "predicted_model_us": p.model_us} for k, p in plans.items()},
           "best_single": best, "tuned_vs_best_single": times[best] / times["tuned"],
           "tuned_vs_every_single": {k: v / times["tuned"] for k, v in singles.items()},
           "cost_model": cost_model_error(profile, target)}
    print(json.dumps(row), flush=True)
    return row


def budget(tmp: Path, out: Path, rounds: int, reps: int) -> dict:
    mlp = example_model("mlp2048")
    profile = tune(mlp, TARGET, sparsities=SPARSITY_LADDER, rounds=3, reps=20, progress=False)
    profile.save(out / "profile_mlp2048.json")
    plan = blockprune.plan(mlp, TARGET, sparsity=CEILING, profile=profile, speedup=3)
    paths = {"dense": export_plan(mlp, None, tmp, "mlp-dense"), "budget": export_plan(mlp, plan, tmp, "mlp-budget")}
    times = time_files(mlp, paths, rounds, reps)
    matmul_dense, matmul_sparse, _ = plan.predicted_us
    return {"requested": 3.0, "predicted": plan.model_us[0] / plan.model_us[1],
            "predicted_matmuls_only": matmul_dense / matmul_sparse, "predicted_model_us": plan.model_us,
            "measured": times["dense"] / times["budget"], "dense_us": times["dense"], "sparse_us": times["budget"],
            "sparsities": {lp.name: lp.sparsity for lp in plan.layers if lp.view_shape},
            "cost_model": cost_model_error(profile, load_target(TARGET))}


def report(results: dict) -> str:
    lines = ["# Tuned plans and latency budgets (cpu-wide, LiteRT, batch 1, 1 thread)", "",
             f"Same overall sparsity: every plan has the zeros of {OVERALL:.0%} of the weights cpu-wide can prune. "
             f"*tuned* = `plan --profile P --overall-sparsity {OVERALL} --sparsity {CEILING}` (per-layer block and "
             "sparsity for the lowest predicted latency); *tuned blocks, uniform* = the fastest measured block per "
             f"layer at a uniform {OVERALL:.0%} (block choice alone); *single B* = block B everywhere at the one "
             "sparsity that gives the same number of zeros. Latency: median of alternating rounds.", ""]
    for r in results["tuned_vs_fixed"]:
        lines += [f"## {r['model']} (dense {r['dense_us']:.0f} us; tuning took {r['tune_s']:.0f} s)", "",
                  "| plan | us | vs dense | tuned is faster by | blocks | per-layer sparsities | overall (all matrix weights) |",
                  "|---|---|---|---|---|---|---|"]
        tuned = r["plans"]["tuned"]["us"]
        for k, v in r["plans"].items():
            sp = v["sparsities"]
            spread = f"{sp[0]:.2f}" if len(sp) == 1 else f"{sp[0]:.2f}-{sp[-1]:.2f}"
            lines.append(f"| {k} | {v['us']:.0f} | {r['dense_us'] / v['us']:.2f}x | {v['us'] / tuned:.2f}x | "
                         f"{' '.join(v['blocks'])} | {spread} | {v['overall_sparsity']:.1%} |")
        for b, u in r["unreachable_singles"].items():
            lines.append(f"| single {b} | - | - | - | cannot reach the same zeros: would need {u:.0%} on the "
                         "weights it divides | | |")
        lines += ["", f"Tuned vs the best single block ({r['best_single']}): **{r['tuned_vs_best_single']:.2f}x**.", ""]
    b = results["budget"]
    lines += ["## MLP 2048 with `--speedup 3`", "",
              f"Predicted {b['predicted']:.2f}x for the whole model (the matmuls alone: {b['predicted_matmuls_only']:.2f}x); "
              f"measured **{b['measured']:.2f}x** ({b['dense_us']:.0f} -> {b['sparse_us']:.0f} us), "
              f"{(b['measured'] / b['requested'] - 1) * 100:+.0f}% of the request; sparsities "
              + ", ".join(f"{k}={v:.2f}" for k, v in b["sparsities"].items()) + ".", "",
              "## Cost-model prediction error", "",
              "Per-layer latency against the measured profiles (relative; shipped parameters, then calibrated on "
              "that profile):", ""]
    errors = {r["model"]: r["cost_model"] for r in results["tuned_vs_fixed"]}
    errors["mlp2048"] = b["cost_model"]
    for name, e in errors.items():
        sh, ca = e["shipped"], e["calibrated"]
        if sh["n"]:
            lines.append(f"- {name}: shipped median {sh['median']:.0%} (p90 {sh['p90']:.0%}); calibrated median "
                         f"{ca['median']:.0%} (p90 {ca['p90']:.0%}) with peak {e['calibrated_peak_gflops']:.0f} GFLOP/s, "
                         f"memory {e['calibrated_memory_gbps']:.0f} GB/s; {sh['n']} measurements")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="results folder (default: bench/results; with --quick, a temporary folder)")
    args = parser.parse_args(argv)
    rounds, reps = (3, 10) if args.quick else (15, 30)
    target = load_target(TARGET)
    out = results_dir(args.out, args.quick, HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    results = {"tuned_vs_fixed": [], "budget": None}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("transformer", "mobilenetv2"):
            results["tuned_vs_fixed"].append(compare(name, target, tmp, out, rounds, reps))
        results["budget"] = budget(tmp, out, rounds, reps)
    write_text_atomic(out / "tune_proof.json", json.dumps(results, indent=2) + "\n")
    text = report(results)
    write_text_atomic(out / "tune_proof.md", text)
    print(text)


if __name__ == "__main__":
    main()

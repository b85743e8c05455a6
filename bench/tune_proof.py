"""Proof that measuring pays: tuned block shapes vs the best single block, and a latency budget.

1. MobileNetV2 (weights=None) and the transformer block, target cpu-wide, sparsity 0.9, LiteRT,
   batch 1, 1 thread: `blockprune tune` measures every allowed block per layer shape; the plan
   from that profile is exported and timed against plans that use one block shape for the whole
   model (every block the target allows). Goal: >= 1.2x faster than the best single block on
   one model, and never slower.
2. The width-2048 MLP with `--speedup 3`: the plan's allocation is exported and its measured
   speedup over dense compared with the requested 3x. Goal: within 15%.
3. The cost model's prediction error against the measurements of the profiles.

Usage:
    python bench/tune_proof.py [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import blockprune  # noqa: E402
from blockprune.cost import calibrate, prediction_error  # noqa: E402
from blockprune.examples import example_model  # noqa: E402
from blockprune.export import export_tflite, make_runner  # noqa: E402
from blockprune.pruning import prune_once  # noqa: E402
from blockprune.timing import median_latency_us  # noqa: E402
from blockprune.targets import load_target  # noqa: E402
from blockprune.tune import tune  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET = "cpu-wide"


def measure(model, plan, tmp: Path, tag: str, rounds: int, reps: int) -> tuple[float, float]:
    """Median latency (us) of the exported sparse and dense files, LiteRT, batch 1, 1 thread."""
    sparse = prune_once(model, plan)
    s = export_tflite(sparse, TARGET, tmp / f"{tag}.tflite", plan=plan, allow_dense=True)
    d = export_tflite(sparse, TARGET, tmp / f"{tag}.dense.tflite", dense=True)
    shape = [1] + [v or 1 for v in model.inputs[0].shape[1:]]
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    out = [median_latency_us(make_runner(path, num_threads=1), x, rounds, reps) for path in (s.path, d.path)]
    return out[0], out[1]


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    rounds, reps = (2, 10) if args.quick else (3, 30)
    target = load_target(TARGET)
    results = {"tuned_vs_fixed": [], "budget": None, "cost_model": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("transformer", "mobilenetv2"):
            model = example_model(name)
            t0 = time.time()
            profile = tune(model, TARGET, sparsities=(0.9,), rounds=2, reps=10, time_budget_s=900, progress=False)
            profile.save(Path(args.out) / f"profile_{name}.json")
            tuned = blockprune.plan(model, TARGET, sparsity=0.9, profile=profile)
            row = {"model": name, "tune_s": time.time() - t0, "tuned": measure(model, tuned, tmp, f"{name}-tuned",
                                                                             rounds, reps),
                   "tuned_blocks": sorted({str(lp.block_shape) for lp in tuned.pruned_layers}),
                   "tuned_overall_sparsity": tuned.overall_sparsity, "fixed": {}}
            for block in target.block_shapes:
                fixed = blockprune.plan(model, fixed_block_target(block, tmp), sparsity=0.9)
                if not fixed.pruned_layers:
                    continue
                row["fixed"][str(block)] = {"latency": measure(model, fixed, tmp, f"{name}-{block[1]}", rounds, reps),
                                            "overall_sparsity": fixed.overall_sparsity}
            best = min(row["fixed"].items(), key=lambda kv: kv[1]["latency"][0])
            row["best_fixed"] = best[0]
            row["tuned_vs_best_fixed"] = best[1]["latency"][0] / row["tuned"][0]
            results["tuned_vs_fixed"].append(row)
            results["cost_model"][name] = cost_model_error(profile, target)
            print(json.dumps(row), flush=True)

        mlp = example_model("mlp2048")
        profile = tune(mlp, TARGET, sparsities=(0.5, 0.8, 0.9, 0.95), rounds=2, reps=10, progress=False)
        profile.save(Path(args.out) / "profile_mlp2048.json")
        budget_plan = blockprune.plan(mlp, TARGET, sparsity=0.95, profile=profile, speedup=3)
        sparse_us, dense_us = measure(mlp, budget_plan, tmp, "mlp-budget", rounds, reps)
        results["budget"] = {"requested": 3.0, "predicted": budget_plan.predicted_us[0] / budget_plan.predicted_us[1],
                             "measured": dense_us / sparse_us, "dense_us": dense_us, "sparse_us": sparse_us,
                             "sparsities": {lp.name: lp.sparsity for lp in budget_plan.layers if lp.view_shape}}
        results["cost_model"]["mlp2048"] = cost_model_error(profile, target)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune_proof.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Tuned block shapes and latency budgets (cpu-wide, LiteRT, batch 1, 1 thread)", "",
             "| model | tuned plan us | blocks chosen | best single block | its us | tuned vs best single | "
             "other single blocks us |", "|---|---|---|---|---|---|---|"]
    for r in results["tuned_vs_fixed"]:
        others = ", ".join(f"{b}: {v['latency'][0]:.0f}" for b, v in r["fixed"].items())
        lines.append(f"| {r['model']} | {r['tuned'][0]:.0f} | {' '.join(r['tuned_blocks'])} | {r['best_fixed']} | "
                     f"{r['fixed'][r['best_fixed']]['latency'][0]:.0f} | {r['tuned_vs_best_fixed']:.2f}x | {others} |")
    b = results["budget"]
    lines += ["", f"MLP 2048 with `--speedup 3`: predicted {b['predicted']:.2f}x, measured {b['measured']:.2f}x "
                  f"({(b['measured'] / b['requested'] - 1) * 100:+.0f}% of the request); sparsities "
                  + ", ".join(f"{k}={v:.2f}" for k, v in b["sparsities"].items()) + ".", "",
              "Cost-model prediction error of per-layer latency against the measured profiles "
             "(relative; shipped parameters, then calibrated on that profile):", ""]
    for name, e in results["cost_model"].items():
        sh, ca = e["shipped"], e["calibrated"]
        if sh["n"]:
            lines.append(f"- {name}: shipped median {sh['median']:.0%} (p90 {sh['p90']:.0%}); calibrated median "
                         f"{ca['median']:.0%} (p90 {ca['p90']:.0%}) with peak {e['calibrated_peak_gflops']:.0f} GFLOP/s, "
                         f"memory {e['calibrated_memory_gbps']:.0f} GB/s; {sh['n']} measurements")
    (out / "tune_proof.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

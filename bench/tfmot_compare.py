"""blockprune and tfmot side by side on the digits MLP at 90%, blocks (4, 1).

Same data (scikit-learn's digits, blockprune.data.digits()), same 64 -> 512 -> 512 -> 10 MLP,
30 dense epochs, then 30 epochs of gradual pruning (cubic PolynomialDecay to 90% over 75% of
the steps) of both hidden kernels in (4, 1) blocks, AVG pooling. tfmot runs in its own
environment (bench/setup_tfmot_env.sh) and exports with its documented TFLite path; both
.tflite files are timed here with the same LiteRT runner (1 thread, batch 1).

Usage:
    python bench/tfmot_compare.py --tfmot-python bench/.venv-tfmot/bin/python [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import blockprune  # noqa: E402
from _timing import step_timer  # noqa: E402
from blockprune._atomic import write_text_atomic  # noqa: E402
from blockprune.data import digits, save_npz  # noqa: E402
from blockprune.examples import example_model, train_dense  # noqa: E402
from blockprune.export import export_tflite  # noqa: E402
from blockprune.runtimes import RUNTIMES  # noqa: E402
from blockprune.pruning.finetune import finetune  # noqa: E402
from blockprune.timing import median_latency_us  # noqa: E402

HERE = Path(__file__).resolve().parent


def latency_us(path: Path, default_delegates: bool) -> float:
    run = RUNTIMES["litert"].runner(path.read_bytes(), {"default_delegates": default_delegates}, num_threads=1)
    x = np.random.default_rng(0).normal(size=(1, 64)).astype("float32")
    return median_latency_us(run, x, rounds=5, reps=300, warmup=50)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tfmot-python", required=True, help="python of the tfmot environment")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default=str(HERE / "results"), help="results folder")
    args = parser.parse_args(argv)
    data = digits()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_npz(data, tmp / "digits.npz")
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
        done = subprocess.run([args.tfmot_python, str(HERE / "tfmot_digits.py"), "--data", str(tmp / "digits.npz"),
                               "--out", str(tmp / "tfmot"), "--epochs", str(args.epochs)],
                              capture_output=True, text=True, env=env, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"tfmot run failed: {done.stderr.strip().splitlines()[-1]}")
        tfmot_res = json.loads(done.stdout.strip().splitlines()[-1])

        dense = train_dense(example_model("mlp"), data, epochs=args.epochs)
        plan = blockprune.plan(dense, "simd-4x1", sparsity=0.9)
        timer = step_timer(keras)
        result = finetune(dense, plan, data, epochs=args.epochs, verbose=0, callbacks=[timer])
        sparse = export_tflite(result.model, "simd-4x1", tmp / "bp.tflite")
        dense_file = export_tflite(result.model, "simd-4x1", tmp / "dense.tflite", dense=True)
        tfmot_path = Path(tfmot_res["tflite"])
        rows = {
            "dense (Keras 3, XNNPACK)": {"accuracy": result.dense_metrics["accuracy"], "step_ms": None,
                                         "bytes": dense_file.bytes,
                                         "latency_us": latency_us(Path(dense_file.path), True)},
            "blockprune": {"accuracy": result.sparse_metrics["accuracy"], "step_ms": statistics.median(timer.times[3:]) * 1e3,
                           "bytes": sparse.bytes, "latency_us": latency_us(Path(sparse.path), True),
                           "sparsity": [c.sparsity for c in result.verification.layers]},
            f"tfmot {tfmot_res['version']}": {"accuracy": tfmot_res["sparse_accuracy"], "step_ms": tfmot_res["step_ms"],
                                               "bytes": tfmot_path.stat().st_size,
                                               "latency_us": latency_us(tfmot_path, True),
                                               "sparsity": tfmot_res["kernel_sparsity"],
                                               "dense_accuracy": tfmot_res["dense_accuracy"]},
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "tfmot_compare.json", json.dumps(rows, indent=2) + "\n")
    lines = ["# blockprune vs tfmot: digits MLP 64-512-512-10, 90% in (4, 1) blocks", "",
             f"{args.epochs} dense epochs, then {args.epochs} epochs of cubic gradual pruning; TFLite latency at batch 1, "
             "1 thread (median of 5 rounds x 300 calls), both sparse files run by LiteRT with default delegates.", "",
             "| model | test accuracy | train step ms (batch 32) | .tflite bytes | TFLite latency us |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        step = f"{r['step_ms']:.2f}" if r["step_ms"] else "-"
        lines.append(f"| {name} | {r['accuracy']:.2%} | {step} | {r['bytes']:,} | {r['latency_us']:.1f} |")
    lines += ["", f"tfmot's own dense baseline (tf_keras): {tfmot_res['dense_accuracy']:.2%}."]
    write_text_atomic(out / "tfmot_compare.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

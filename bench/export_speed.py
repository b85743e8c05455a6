"""Exported-model latency and size, sparse vs dense, in one run (issue 4's goals).

Model: a 3-layer MLP of width 2048 (2048 -> 2048 -> 2048 -> 10) whose two hidden kernels are
90% block-sparse (magnitude masks of random weights). Each file is exported by blockprune
(verified against Keras), then timed through `blockprune.runtimes.make_runner` (the recorded
run options) at 1 thread: warm-up, then `rounds` rounds of `reps` calls, interleaving the
dense and the sparse file; the median per round, and the median over rounds, are reported.

Goals: gather-matmul .tflite >= 6x the dense .tflite at batch 1; builtin-sparse (4, 1)
.tflite >= 3.5x; gather-matmul .onnx >= 5x; at batch 8, gather-matmul >= 3x on both runtimes;
packed size at 90% within 10% of the bytes of the nonzero values.

Usage:
    python bench/export_speed.py [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from blockprune.export import export_onnx, export_tflite  # noqa: E402
from _timing import results_dir  # noqa: E402
from blockprune._atomic import write_text_atomic  # noqa: E402
from blockprune.runtimes import make_runner  # noqa: E402
from blockprune.masks import block_mask  # noqa: E402
from blockprune.packfile import pack_model  # noqa: E402

HERE = Path(__file__).resolve().parent
WIDTH = 2048
SPARSITY = 0.9
# (label, target, block, balanced masks, formats)
CASES = [
    ("gather-matmul (1, 64)", "cpu-wide", (1, 64), True, ("tflite", "onnx")),
    ("gather-matmul (1, 128)", "cpu-wide-128", (1, 128), True, ("tflite", "onnx")),
    ("builtin-sparse (4, 1)", "simd-4x1", (4, 1), False, ("tflite",)),
]


def mlp(block, balanced):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((WIDTH,))
    x = keras.layers.Dense(WIDTH, activation="relu", name="hidden_1")(inputs)
    x = keras.layers.Dense(WIDTH, activation="relu", name="hidden_2")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="mlp2048")
    for name in ("hidden_1", "hidden_2"):
        layer = model.get_layer(name)
        k = layer.kernel.numpy()
        layer.kernel.assign(k * block_mask(k, block, SPARSITY, balanced=balanced))
    return model


def wide_128_target(tmp: Path) -> Path:
    """cpu-wide with (1, 128) blocks first: the wider block docs/DESIGN.md section 4 says to measure."""
    from importlib import resources

    text = (resources.files("blockprune._targets") / "cpu-wide.toml").read_text()
    text = text.replace('name = "cpu-wide"', 'name = "cpu-wide-128"').replace(
        "block_shapes = [[1, 64], [1, 32], [1, 16]]", "block_shapes = [[1, 128]]")
    path = tmp / "cpu-wide-128.toml"
    path.write_text(text)
    return path


def time_pair(dense_path, sparse_path, batch, rounds, reps):
    x = np.random.default_rng(1).normal(size=(batch, WIDTH)).astype("float32")
    runners = {"dense": make_runner(dense_path, num_threads=1), "sparse": make_runner(sparse_path, num_threads=1)}
    for run in runners.values():
        for _ in range(20):
            run(x)
    medians = {"dense": [], "sparse": []}
    for _ in range(rounds):
        for key, run in runners.items():
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - t0)
            medians[key].append(statistics.median(times) * 1e6)
    dense, sparse = statistics.median(medians["dense"]), statistics.median(medians["sparse"])
    return {"dense_us": dense, "sparse_us": sparse, "speedup": dense / sparse,
            "dense_round_medians_us": medians["dense"], "sparse_round_medians_us": medians["sparse"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repetitions")
    parser.add_argument("--out", help="results folder (default: bench/results; with --quick, a temporary folder)")
    args = parser.parse_args(argv)
    rounds, reps = (3, 100) if args.quick else (5, 300)
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
               "model": f"MLP {WIDTH}x3, hidden kernels {SPARSITY:.0%} sparse", "threads": 1, "rows": [], "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        targets = {"cpu-wide-128": wide_128_target(tmp)}
        for label, target_name, block, balanced, formats in CASES:
            target = targets.get(target_name, target_name)
            model = mlp(block, balanced)
            packed = [p for p in pack_model(model, target) if p.format != "dense"]
            nonzero = sum(int((p.to_2d() != 0).sum()) * 4 for p in packed)
            size = sum(p.nbytes["values"] + p.nbytes["indices"] for p in packed)
            results["sizes"].append({"case": label, "nonzero_value_bytes": nonzero, "packed_bytes": size,
                                     "ratio": size / nonzero, "format": packed[0].format})
            for fmt in formats:
                writer = export_tflite if fmt == "tflite" else export_onnx
                sparse = writer(model, target, tmp / f"{block[0]}x{block[1]}.{fmt}")
                dense = writer(model, target, tmp / f"{block[0]}x{block[1]}.dense.{fmt}", dense=True)
                for batch in (1, 8):
                    print(f"timing {label} {fmt} batch {batch} ...", flush=True)
                    row = time_pair(dense.path, sparse.path, batch, rounds, reps)
                    results["rows"].append({"case": label, "format": fmt, "batch": batch, "sparse_bytes": sparse.bytes,
                                            "dense_bytes": dense.bytes, **row})
    out = results_dir(args.out, args.quick, HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "export_speed.json", json.dumps(results, indent=2) + "\n")
    lines = ["# Exported latency and size: MLP 2048 x 3, hidden kernels 90% sparse, 1 thread", "",
             f"Machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs. "
             f"Median over {rounds} rounds of the median of {reps} calls (dense and sparse interleaved).", "",
             "| lowering | runtime | batch | dense us | sparse us | speedup | sparse / dense file bytes |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['case']} | {'LiteRT' if r['format'] == 'tflite' else 'ONNX Runtime'} | {r['batch']} | "
                     f"{r['dense_us']:.0f} | {r['sparse_us']:.0f} | {r['speedup']:.2f}x | "
                     f"{r['sparse_bytes']:,} / {r['dense_bytes']:,} |")
    lines += ["", "| packed weights | format | nonzero value bytes | packed bytes | packed / nonzero |",
              "|---|---|---|---|---|"]
    for s in results["sizes"]:
        lines.append(f"| {s['case']} | {s['format']} | {s['nonzero_value_bytes']:,} | {s['packed_bytes']:,} | "
                     f"{s['ratio']:.3f} |")
    write_text_atomic(out / "export_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

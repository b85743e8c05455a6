"""tfmot 0.8.1's training step time, pruned vs unwrapped, on the models of train_step.py.

Runs only in the separate tfmot environment (bench/setup_tfmot_env.sh) with
TF_USE_LEGACY_KERAS=1: tfmot needs tf_keras (Keras 2) and rejects Keras 3 models. Prints one
JSON line for train_step.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from _timing import synthetic, time_fit  # noqa: E402

# Same shapes and steps as train_step.CASES; tfmot's block_size works on Dense kernels only,
# so MobileNetV2's convolutions are pruned unstructured.
CASES = {"mlp1024": ((4, 1), 64, 120), "mobilenetv2": ((1, 1), 8, 12)}


def build(name):
    keras.utils.set_random_seed(0)
    if name == "mlp1024":
        inputs = keras.Input((1024,))
        x = keras.layers.Dense(1024, activation="relu")(inputs)
        x = keras.layers.Dense(1024, activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(10)(x))
    return keras.applications.MobileNetV2(weights=None, classes=10, classifier_activation=None)


def measure(name, rounds):
    blocks, batch, steps = CASES[name]
    x, y = synthetic(name, batch, steps)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000, frequency=100)
    dense, pruned, dense_means, pruned_means = [], [], [], []
    for _ in range(rounds):
        dt = time_fit(keras, build(name), x, y, batch, [])
        dense.append(statistics.median(dt))
        dense_means.append(statistics.mean(dt))
        model = tfmot.sparsity.keras.prune_low_magnitude(build(name), pruning_schedule=schedule, block_size=blocks)
        pt = time_fit(keras, model, x, y, batch, [tfmot.sparsity.keras.UpdatePruningStep()])
        pruned.append(statistics.median(pt))
        pruned_means.append(statistics.mean(pt))
    d, p = statistics.median(dense), statistics.median(pruned)
    return {"model": name, "blocks": str(blocks), "batch": batch, "dense_step_ms": d * 1e3,
            "pruned_step_ms": p * 1e3, "ratio": p / d,
            "mean_ratio": statistics.median(pruned_means) / statistics.median(dense_means)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    results = [measure(name, rounds) for name in CASES]
    print(json.dumps({"version": tfmot.__version__, "results": results}))


if __name__ == "__main__":
    main()

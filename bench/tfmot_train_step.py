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
from _timing import paired_ratios, synthetic, time_pairs  # noqa: E402

# Same shapes and steps as train_step.CASES; tfmot's block_size works on Dense kernels only,
# so MobileNetV2's convolutions are pruned unstructured.
CASES = {"digits": ((4, 1), 32, 100), "mlp1024": ((4, 1), 64, 100), "mobilenetv2": ((1, 1), 8, 12)}


def build(name):
    keras.utils.set_random_seed(0)
    if name in ("digits", "mlp1024"):
        n_in, width = (64, 512) if name == "digits" else (1024, 1024)
        inputs = keras.Input((n_in,))
        x = keras.layers.Dense(width, activation="relu")(inputs)
        x = keras.layers.Dense(width, activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(10)(x))
    return keras.applications.MobileNetV2(weights=None, classes=10, classifier_activation=None)


def measure(name, pairs):
    blocks, batch, steps = CASES[name]
    x, y = synthetic(name, batch, steps)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100 * steps, frequency=100)
    model = tfmot.sparsity.keras.prune_low_magnitude(build(name), pruning_schedule=schedule, block_size=blocks)
    dense, pruned = time_pairs(keras, build(name), model, x, y, batch, [tfmot.sparsity.keras.UpdatePruningStep()],
                               pairs)
    return {"model": name, "blocks": str(blocks), "batch": batch, "pairs": pairs,
            "dense_step_ms": statistics.median(dense) * 1e3, "pruned_step_ms": statistics.median(pruned) * 1e3,
            **paired_ratios(dense, pruned)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pairs = {"digits": 60, "mlp1024": 40, "mobilenetv2": 8}  # as train_step.PAIRS
    results = [measure(name, 2 if args.quick else pairs[name]) for name in CASES]
    print(json.dumps({"version": tfmot.__version__, "results": results}))


if __name__ == "__main__":
    main()

"""tfmot 0.8.1's side of bench/tfmot_compare.py: the digits MLP pruned to 90% in (4, 1) blocks.

Runs only in the tfmot environment (bench/setup_tfmot_env.sh) with TF_USE_LEGACY_KERAS=1.
Trains the same 64 -> 512 -> 512 -> 10 MLP densely, prunes it with tfmot's
prune_low_magnitude (PolynomialDecay to 90% over 75% of the steps, block_size=(4, 1),
AVG pooling), strips it, converts it with tfmot's documented TFLite path
(optimizations=[EXPERIMENTAL_SPARSITY]) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import step_timer  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    d = np.load(args.data)
    x, y, xt, yt = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0)
    dense_acc = float(np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt))

    steps = args.epochs * int(np.ceil(len(x) / 32))
    end = int(steps * 0.75)
    freq = max(1, end // 20)
    end = freq * (end // freq)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=end, power=3, frequency=freq)
    # tfmot prunes every layer it wraps; like blockprune's plan, leave the small head dense.
    def wrap(layer):
        if isinstance(layer, keras.layers.Dense) and layer.units == 512:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule, block_size=(4, 1),
                                                           block_pooling_type="AVG")
        return layer

    pruned = keras.models.clone_model(model, clone_function=wrap)  # wrap() reuses the trained layers
    pruned.compile(keras.optimizers.Adam(1e-3), loss)
    timer = step_timer(keras)
    pruned.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0, shuffle=True,
               callbacks=[timer, tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    sparse_acc = float(np.mean(np.argmax(stripped.predict(xt, verbose=0), -1) == yt))
    kernels = [w for w in stripped.get_weights() if w.ndim == 2 and w.shape[1] == 512]
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tfmot.tflite").write_bytes(converter.convert())
    print(json.dumps({"version": tfmot.__version__, "dense_accuracy": dense_acc, "sparse_accuracy": sparse_acc,
                      "step_ms": statistics.median(timer.times[3:]) * 1e3,
                      "kernel_sparsity": [float(np.mean(k == 0)) for k in kernels],
                      "tflite": str(out / "tfmot.tflite")}))


if __name__ == "__main__":
    main()

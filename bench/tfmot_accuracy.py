"""tfmot 0.8.1's side of bench/accuracy.py: one MLP pruned by tfmot at one block size and sparsity.

Runs only in the tfmot environment (bench/setup_tfmot_env.sh) with TF_USE_LEGACY_KERAS=1.
Trains the MLP (inputs -> width -> width -> classes) densely (with --decay, at a learning rate
decaying on a cosine as blockprune's train_dense), prunes both hidden kernels with tfmot's
prune_low_magnitude (PolynomialDecay to the sparsity over 75% of the steps in 100 updates, the
given block_size, AVG pooling), strips it and prints one JSON line with both test accuracies.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help=".npz with x_train, y_train, x_test, y_test")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--dense-epochs", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--block", required=True, help="RxC, tfmot's block_size")
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--decay", action="store_true",
                        help="dense training's learning rate decays to zero on a cosine (as blockprune's train_dense)")
    parser.add_argument("--seed", type=int,
                        help="reseeds before pruning (the dense model always trains from seed 0; without it, "
                             "pruning continues seed 0's random stream)")
    args = parser.parse_args()
    d = np.load(args.data)
    x, y, xt, yt = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    keras.utils.set_random_seed(0)
    inputs = keras.Input(x.shape[1:])
    h = keras.layers.Dense(args.width, activation="relu", name="hidden_1")(inputs)
    h = keras.layers.Dense(args.width, activation="relu", name="hidden_2")(h)
    model = keras.Model(inputs, keras.layers.Dense(int(y.max()) + 1, name="logits")(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps_per_epoch = int(np.ceil(len(x) / args.batch_size))
    rate = 1e-3
    if args.decay:
        rate = keras.optimizers.schedules.CosineDecay(1e-3, args.dense_epochs * steps_per_epoch)
    model.compile(keras.optimizers.Adam(rate), loss)
    model.fit(x, y, batch_size=args.batch_size, epochs=args.dense_epochs, verbose=0)
    dense_acc = float(np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt))

    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
    steps = args.epochs * steps_per_epoch
    end = int(steps * 0.75)
    freq = max(1, end // 100)  # 100 mask updates, as blockprune's polynomial_schedule
    end = freq * (end // freq)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, args.sparsity, begin_step=0, end_step=end, power=3,
                                                    frequency=freq)
    block = tuple(int(v) for v in args.block.split("x"))

    def wrap(layer):  # like blockprune's runs here, the small head stays dense
        if layer.name in ("hidden_1", "hidden_2"):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule, block_size=block,
                                                           block_pooling_type="AVG")
        return layer

    pruned = keras.models.clone_model(model, clone_function=wrap)
    pruned.compile(keras.optimizers.Adam(1e-3), loss)
    pruned.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, shuffle=True,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    sparse_acc = float(np.mean(np.argmax(stripped.predict(xt, verbose=0), -1) == yt))
    kernels = [stripped.get_layer(n).kernel.numpy() for n in ("hidden_1", "hidden_2")]
    print(json.dumps({"version": tfmot.__version__, "dense_accuracy": dense_acc, "sparse_accuracy": sparse_acc,
                      "kernel_sparsity": [float(np.mean(k == 0)) for k in kernels]}))


if __name__ == "__main__":
    main()

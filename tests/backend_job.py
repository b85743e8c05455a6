"""Prunes the digits MLP in ``init.keras`` on whatever Keras backend this process runs
(``KERAS_BACKEND``), and writes its masks, accuracy and pruned model: the cross-backend tests
run it once per backend.

Usage: python tests/backend_job.py INIT.keras OUT_DIR TARGET EPOCHS
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import blockprune  # noqa: E402
from blockprune.data import load_data  # noqa: E402
from blockprune.pruning.callbacks import collect_wrappers  # noqa: E402


def main(init, out, target, epochs):
    data = load_data("digits")
    model = keras.models.load_model(init)
    plan = blockprune.plan(model, target, sparsity=0.9)
    steps = epochs * -(-len(data.x_train) // 32)
    schedule = blockprune.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=10 * (steps // 20), frequency=10)
    pruned = blockprune.prune(model, plan, schedule)
    pruned.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(data.x_train, data.y_train, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
               callbacks=[blockprune.UpdatePruningStep()])
    masks = {f"{w.layer.name}/{t['name']}": keras.ops.convert_to_numpy(t["mask"])
             for w in collect_wrappers(pruned) for t in w.targets}
    np.savez(os.path.join(out, "masks.npz"), **masks)
    pruned.save(os.path.join(out, "pruned.keras"))
    stripped = blockprune.strip_pruning(pruned)
    logits = keras.ops.convert_to_numpy(stripped(data.x_test))
    steps_run = int(keras.ops.convert_to_numpy(collect_wrappers(pruned)[0].pruning_step))
    result = {"backend": keras.backend.backend(), "accuracy": float(np.mean(logits.argmax(1) == data.y_test)),
              "step": steps_run, "exact": blockprune.verify(stripped, plan).ok}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

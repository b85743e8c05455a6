"""Timing helpers shared by the Keras 3 and the tf_keras (tfmot) benchmark scripts.

Each takes the Keras module to use, since the tfmot side runs Keras 2 (tf_keras).
"""

from __future__ import annotations

import time

import numpy as np


def step_timer(keras):
    """A callback that records each batch's time, from its batch begin to its batch end."""

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.t0)

    return StepTimer()


def epoch_timer(keras):
    """A callback that records each epoch's wall time (Keras waits for the epoch's last step
    before ``on_epoch_end`` on every backend, so asynchronous dispatch cannot hide work)."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t0)

    return EpochTimer()


def time_epochs(keras, model, x, y, batch, callbacks, epochs=3):
    """Mean step time of each epoch of ``fit`` after a first, warm-up epoch (tracing and
    compilation), every callback's per-batch work included."""
    timer = epoch_timer(keras)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=batch, epochs=1 + epochs, verbose=0, shuffle=False, callbacks=[timer, *callbacks])
    steps = -(-len(x) // batch)
    return [t / steps for t in timer.times[1:]]


def synthetic(name, batch, steps):
    """Inputs and 10-class labels for ``mlp1024`` or ``mobilenetv2`` (random), or ``digits``
    (scikit-learn's bundled 8x8 digits, as many copies as ``steps`` batches need)."""
    n = batch * steps
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        reps = -(-n // len(d.data))
        return (np.tile((d.data / 16.0).astype("float32"), (reps, 1))[:n], np.tile(d.target, reps)[:n])
    rng = np.random.default_rng(0)
    shape = (1024,) if name == "mlp1024" else (224, 224, 3)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, 10, size=(n,))


def results_dir(out, quick: bool, default):
    """Where a bench script writes: ``out`` when given, else a temporary folder for ``--quick``
    runs (they never overwrite the committed results), else ``default``."""
    import tempfile
    from pathlib import Path

    if out:
        return Path(out)
    return Path(tempfile.mkdtemp(prefix="bench-quick-")) if quick else Path(default)

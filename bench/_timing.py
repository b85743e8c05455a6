"""Timing helpers shared by the Keras 3 and the tf_keras (tfmot) benchmark scripts.

Each takes the Keras module to use, since the tfmot side runs Keras 2 (tf_keras).
"""

from __future__ import annotations

import statistics
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


def time_pairs(keras, dense, pruned, x, y, batch, callbacks, pairs):
    """Mean step time of ``fit`` epochs of an unwrapped and a pruned model, alternated.

    Both models are compiled (Adam, sparse cross-entropy) and run one warm-up epoch (tracing
    and compilation); then ``pairs`` times one epoch of each, the order swapped every pair
    (ABBA) so that a drift in machine load hits both alike. ``callbacks`` (the pruned model's,
    kept from epoch to epoch as in one long ``fit``) and their per-batch work are timed with it.

    Returns:
        Two lists of seconds per step, unwrapped and pruned, one entry per pair.
    """
    steps = -(-len(x) // batch)

    def epoch(model, extra):
        timer = epoch_timer(keras)
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[timer, *extra])
        return timer.times[0] / steps

    for model in (dense, pruned):
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    epoch(dense, [])
    epoch(pruned, callbacks)
    times = ([], [])
    for i in range(pairs):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            times[which].append(epoch(dense, []) if which == 0 else epoch(pruned, callbacks))
    return times


def paired_ratios(dense, pruned) -> dict:
    """The median of the paired ratios pruned / unwrapped (from ``time_pairs``) and their quartiles."""
    q1, median, q3 = statistics.quantiles([p / d for d, p in zip(dense, pruned)], n=4)
    return {"ratio": median, "ratio_q1": q1, "ratio_q3": q3}


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

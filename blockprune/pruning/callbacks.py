"""Training callbacks: ``UpdatePruningStep`` (required) and ``PruningSummaries``."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from ..kerasgraph import sublayers
from .wrapper import PruneLowMagnitude

__all__ = ["UpdatePruningStep", "PruningSummaries", "collect_wrappers"]


def collect_wrappers(model) -> list[PruneLowMagnitude]:
    """Every ``PruneLowMagnitude`` in ``model``, nested models included."""
    return [layer for layer in sublayers(model, recursive=True) if isinstance(layer, PruneLowMagnitude)]


class UpdatePruningStep(keras.callbacks.Callback):
    """Counts pruning steps and updates masks on schedule, before the train steps that need it.

    Required when training a pruned model (as in tfmot). Training resumes from the step
    stored in the wrappers, so a reloaded model continues its schedule where it stopped.
    The callback counts steps in Python and touches the model only before a step whose
    schedule updates a mask (on JAX, that is when the model's state is attached to its
    variables) and at the end of every epoch, when it stores the step in the wrappers; a
    checkpoint taken in the middle of an epoch holds the step of the last of those.

    Example:
        >>> model.fit(x, y, epochs=2, callbacks=[UpdatePruningStep()])  # doctest: +SKIP

    In a custom training loop, pass the loop's optimizer (its momentum at pruned positions is
    zeroed with each mask update), then call ``set_model``, ``on_train_begin`` once,
    ``on_train_batch_begin`` before each step and ``on_train_end`` after the last.

    Args:
        optimizer: the optimizer that trains the model, when it is not ``model.optimizer``.
    """

    def __init__(self, optimizer=None):
        super().__init__()
        self.optimizer = optimizer
        self.wrappers: list[PruneLowMagnitude] = []
        self.step = -1

    def on_train_begin(self, logs=None):
        model = self.model
        self.wrappers = collect_wrappers(model)
        if not self.wrappers:
            raise ValueError(f"UpdatePruningStep: model '{model.name}' has no layer wrapped for pruning; "
                             "wrap it with blockprune.prune(...) or prune_low_magnitude(...) first")
        steps = int(keras.ops.convert_to_numpy(getattr(model, "steps_per_execution", 1) or 1))
        if steps != 1:
            raise ValueError(f"UpdatePruningStep: model '{model.name}' is compiled with "
                             f"steps_per_execution={steps}; masks are updated "
                             "between train steps, so compile it with steps_per_execution=1")
        if self.optimizer is None and getattr(model, "optimizer", None) is None:
            warnings.warn(f"UpdatePruningStep: model '{model.name}' has no optimizer, so the momentum of pruned "
                          "weights is not zeroed with their masks and can revive them; in a custom training loop "
                          "pass it: UpdatePruningStep(optimizer)", stacklevel=2)
        for w in self.wrappers:
            w.step_callback_active = True
        # A fresh model starts at step 0; a reloaded one continues after its saved step.
        saved = int(keras.ops.convert_to_numpy(self.wrappers[0].pruning_step))
        self.step = saved + 1 if saved >= 0 else 0

    def on_train_batch_begin(self, batch, logs=None):
        due = [w for w in self.wrappers if w.due(self.step)]
        if due:
            model = self.model  # on JAX, reading it attaches the training state to the variables
            for w in due:
                w.pruning_step.assign(self.step - 1)
                w.update_masks(self.step, self.optimizer or getattr(model, "optimizer", None))
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        self._settle()

    def on_train_end(self, logs=None):
        self._settle()
        for w in self.wrappers:
            w.step_callback_active = False

    def _settle(self):
        """Stores the last step run in every wrapper."""
        self.model  # noqa: B018  (on JAX, attaches the training state to the variables)
        for w in self.wrappers:
            w.pruning_step.assign(self.step - 1)


def _scalar(tf, tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar through TensorFlow's core summary op (``tf.summary.scalar`` needs
    the tensorboard package; the event written is the same)."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata.SerializeToString())


class PruningSummaries(keras.callbacks.Callback):
    """Writes per-weight sparsity and mask threshold as TensorBoard scalars.

    Scalars are named ``pruning/<layer>/<weight>/sparsity`` and ``.../threshold`` and are
    written through ``tf.summary`` at the end of every epoch (and every ``update_freq``
    batches when it is an integer), at the pruning step.

    Args:
        log_dir: the TensorBoard log directory.
        update_freq: ``"epoch"`` or a number of batches.
    """

    def __init__(self, log_dir: str, update_freq="epoch"):
        super().__init__()
        if not isinstance(log_dir, str) or not log_dir:
            raise ValueError(f"PruningSummaries: log_dir must be a non-empty path, got {log_dir!r}")
        if update_freq != "epoch" and (not isinstance(update_freq, int) or update_freq <= 0):
            raise ValueError(f"PruningSummaries: update_freq must be 'epoch' or a positive integer, "
                             f"got {update_freq!r}")
        self.log_dir = log_dir
        self.update_freq = update_freq
        self._writer = None
        self._batches = 0

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self._writer = tf.summary.create_file_writer(self.log_dir)
        wrappers = collect_wrappers(self.model)
        saved = int(keras.ops.convert_to_numpy(wrappers[0].pruning_step)) if wrappers else -1
        self._first_step = max(saved + 1, 0)  # the step of this run's first batch
        self._batches = 0

    def _write(self):
        import tensorflow as tf

        with self._writer.as_default():
            step = self._first_step + max(self._batches - 1, 0)  # the last step run
            for wrapper in collect_wrappers(self.model):
                for t in wrapper.targets:
                    tag = f"pruning/{wrapper.layer.name}/{t['name']}"
                    value = keras.ops.convert_to_numpy(t["variable"])
                    _scalar(tf, f"{tag}/sparsity", float(np.mean(value == 0)), step)
                    _scalar(tf, f"{tag}/threshold", float(keras.ops.convert_to_numpy(t["threshold"])), step)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if isinstance(self.update_freq, int) and self._batches % self.update_freq == 0:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()

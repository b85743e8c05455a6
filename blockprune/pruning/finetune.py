"""``finetune``: prune a trained model to a plan with a polynomial schedule, checkpointing
every epoch, then strip and verify it. ``blockprune prune`` is a thin shell over this."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from ..checks import check_positive_int
from ..data import Dataset, check_fits
from ..masks import check_pooling_type
from ..plan.records import SparsityPlan
from .api import Verification, prune, save_model_atomic, strip_pruning, verify
from .callbacks import UpdatePruningStep
from .schedules import PolynomialDecay

__all__ = ["FinetuneResult", "finetune", "polynomial_schedule", "HoldThenCosine", "evaluate", "default_loss",
           "Distillation", "DistillationLoss", "epoch_order"]


@dataclass
class FinetuneResult:
    """What ``finetune`` produced.

    Attributes:
        model: the stripped model (plain Keras layers, masks baked in).
        plan: the plan it was pruned to.
        verification: block-structure check of ``model`` against ``plan``.
        dense_metrics: metrics of the input model on the test split (None without one).
        sparse_metrics: metrics of ``model`` on the test split.
        epochs_run: epochs trained in this call (fewer than asked when resuming).
        permutations: the layers whose output channels were regrouped before masking
            (``blockprune.permute.Permutation``); empty when none gained or it was off.
        distillation: the distillation used, or None.
    """

    model: object
    plan: SparsityPlan
    verification: Verification
    dense_metrics: dict | None
    sparse_metrics: dict | None
    epochs_run: int
    permutations: list = field(default_factory=list)
    distillation: "Distillation | None" = None


@dataclass(frozen=True)
class Distillation:
    """Distillation from the dense model while pruning: the loss is
    ``(1 - alpha) * CE(labels, student) + alpha * T^2 * CE(softmax(teacher / T), softmax(student / T))``.

    Attributes:
        temperature: ``T`` (softens both distributions; 4 is Hinton et al.'s usual choice).
        alpha: weight of the teacher's soft targets against the labels.
    """

    temperature: float = 4.0
    alpha: float = 0.7

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"distillation temperature={self.temperature!r} must be positive")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"distillation alpha={self.alpha!r} must be in [0, 1]")


@keras.saving.register_keras_serializable(package="blockprune")
class DistillationLoss(keras.losses.Loss):
    """The ``Distillation`` loss over ``y_true = [label, teacher logits...]`` (the teacher's
    logits computed once from the dense model, so any backend trains with it).

    Args:
        temperature, alpha: as in ``Distillation``.
        from_logits: the student outputs logits (else probabilities, taken as ``log p``).
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.7, from_logits: bool = True, **kwargs):
        kwargs.setdefault("name", "distillation")
        super().__init__(**kwargs)
        self.temperature, self.alpha, self.from_logits = float(temperature), float(alpha), bool(from_logits)

    def call(self, y_true, y_pred):
        ops = keras.ops
        labels = ops.cast(y_true[:, 0], "int32")
        teacher = y_true[:, 1:]
        student = y_pred if self.from_logits else ops.log(ops.clip(y_pred, 1e-7, 1.0))
        hard = keras.losses.sparse_categorical_crossentropy(labels, student, from_logits=True)
        t = self.temperature
        soft = -ops.sum(ops.softmax(teacher / t, axis=-1) * ops.log_softmax(student / t, axis=-1), axis=-1)
        return (1.0 - self.alpha) * hard + self.alpha * t * t * soft

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "alpha": self.alpha,
                "from_logits": self.from_logits}


def polynomial_schedule(total_steps: int, final_sparsity: float, updates: int = 100) -> PolynomialDecay:
    """A cubic schedule reaching ``final_sparsity`` at 75% of training in ``updates`` mask
    updates, then fine-tuning.

    ``end_step`` is a multiple of the update frequency, so the final sparsity is applied. Many small
    updates cost little and let wide blocks go gradually: animal-shapes MLP 1024 at 90%, 10 epochs,
    three seeds, 100 updates against 20: cpu-wide (1, 128) 89.9% against 89.3%, unstructured
    93.0% against 92.7% (docs/DESIGN.md section 5).
    """
    if total_steps < 2:
        raise ValueError(f"pruning needs at least 2 training steps, got {total_steps} (more data or epochs)")
    end = max(1, int(total_steps * 0.75))
    frequency = max(1, end // updates)
    end = max(frequency, frequency * (end // frequency))
    return PolynomialDecay(0.0, final_sparsity, begin_step=0, end_step=end, power=3, frequency=frequency)


@keras.saving.register_keras_serializable(package="blockprune")
class HoldThenCosine(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate held at ``rate`` until step ``hold``, then decayed to zero on a cosine at
    step ``total`` (zero after it): ``finetune(..., lr_decay=True)`` holds it while the masks
    change and lets the fine-tuning at the final masks settle. The 3x3 CNN of
    ``bench/accuracy_cnn.py`` at 90% in channel blocks (``run``'s cap), 16 epochs from a 97.40%
    dense model: 96.85% against 96.28% at a constant rate (docs/DESIGN.md section 5).

    Example:
        >>> [round(float(HoldThenCosine(1e-3, hold=50, total=100)(s)), 6) for s in (0, 50, 75, 100, 120)]
        [0.001, 0.001, 0.0005, 0.0, 0.0]
    """

    def __init__(self, rate: float, hold: int, total: int):
        if not rate > 0:
            raise ValueError(f"learning rate {rate!r} must be positive")
        if not 0 <= hold < total:
            raise ValueError(f"hold={hold!r} must be at least 0 and below total={total!r} steps")
        self.rate, self.hold, self.total = float(rate), int(hold), int(total)

    def __call__(self, step):
        done = keras.ops.clip((keras.ops.cast(step, "float32") - self.hold) / (self.total - self.hold), 0.0, 1.0)
        return self.rate * 0.5 * (1.0 + keras.ops.cos(math.pi * done))

    def get_config(self) -> dict:
        return {"rate": self.rate, "hold": self.hold, "total": self.total}


def _outputs_softmax(model) -> bool:
    return getattr(model.layers[-1], "activation", None) in (keras.activations.softmax,)


def default_loss(model, data: Dataset):
    """The loss fine-tuning uses: cross-entropy for class labels (on logits unless the model ends
    in a softmax), else mean squared error."""
    if data.n_classes is not None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=not _outputs_softmax(model))
    return keras.losses.MeanSquaredError()


def _with_teacher(model, data: Dataset, batch_size: int = 256) -> np.ndarray:
    """``[label, teacher logits...]`` per training sample, the teacher being ``model`` (dense)."""
    out = np.asarray(model.predict(data.x_train, batch_size=batch_size, verbose=0), dtype=np.float32)
    logits = np.log(np.clip(out, 1e-7, 1.0)) if _outputs_softmax(model) else out
    return np.concatenate([data.y_train.astype(np.float32)[:, None], logits], axis=1)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ``n`` training samples in ``epoch`` of a run shuffled with ``seed``: drawn by
    NumPy, so the same on every Keras backend, and the same for that epoch of a resumed run."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _shuffled_batches(x, y, batch_size: int, seed: int, initial_epoch: int, epochs: int):
    """Every batch of ``epochs`` from ``initial_epoch`` on, each epoch in ``epoch_order``, for
    ``fit`` with ``steps_per_epoch`` (Keras then keeps one iterator across epochs): a tf.data
    pipeline that gathers the batches in the graph on TensorFlow, a generator elsewhere."""
    orders = np.stack([epoch_order(len(x), seed, e) for e in range(initial_epoch, epochs)])
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        x_t, y_t = tf.constant(x), tf.constant(y)
        indices = tf.data.Dataset.from_tensor_slices(orders).flat_map(
            lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
        return indices.map(lambda i: (tf.gather(x_t, i), tf.gather(y_t, i))).prefetch(tf.data.AUTOTUNE)

    def batches():
        for order in orders:
            for start in range(0, len(order), batch_size):
                i = order[start:start + batch_size]
                yield x[i], y[i]

    return batches()


def evaluate(model, data: Dataset, batch_size: int = 256) -> dict | None:
    """Accuracy (integer labels) or mean squared error of ``model`` on the test split."""
    if data.x_test is None:
        return None
    pred = model.predict(data.x_test, batch_size=batch_size, verbose=0)
    if data.n_classes is not None:
        return {"accuracy": float(np.mean(np.argmax(pred, axis=-1) == data.y_test))}
    return {"mse": float(np.mean((pred - data.y_test) ** 2))}


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves the pruned (wrapped) model atomically at the end of every epoch."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        save_model_atomic(self.model, self.path)


def finetune(model, plan: SparsityPlan, data: Dataset, epochs: int, batch_size: int = 32,
             learning_rate: float = 1e-3, checkpoint: str | os.PathLike | None = None, resume: bool = False,
             verbose: int = 1, callbacks: list | None = None, permute: bool = True,
             distill: Distillation | None = None, shuffle: bool = True, quantize_aware: bool = False,
             block_pooling_type: str = "AVG", lr_decay: bool = False) -> FinetuneResult:
    """Prunes ``model`` to ``plan`` while fine-tuning on ``data``, then strips and verifies it.

    Sparsity rises on a cubic ``PolynomialDecay`` to each layer's planned sparsity over the
    first 75% of the steps; the rest fine-tunes at the final masks.

    Args:
        model: a trained Sequential or functional model.
        plan: a plan made for ``model``.
        data: training data (and, optionally, a test split for the accuracy report).
        epochs: total epochs of pruning and fine-tuning.
        batch_size: samples per step.
        learning_rate: Adam's learning rate.
        checkpoint: where to save the pruned model after every epoch (atomically).
        resume: continue from ``checkpoint`` if it exists (schedule, masks and optimizer state
            continue where they stopped).
        verbose: Keras ``fit`` verbosity (1: progress bar, 2: a line per epoch, 0: silent).
        callbacks: more Keras callbacks for ``fit`` (e.g. ``PruningSummaries``).
        permute: regroup the output channels of Dense layers pruned in wide ``(1, c)`` blocks
            where that keeps more weight magnitude (``blockprune.permute``); the model computes the
            same function, and the export is as fast.
        distill: learn from the dense model's outputs as well as the labels (classification).
        shuffle: shuffle the training data every epoch, in an order drawn by NumPy
            (``epoch_order``) from a seed taken from NumPy's global generator, which
            ``keras.utils.set_random_seed`` seeds: after one seed, TensorFlow, JAX and PyTorch
            see the same orders, and a resumed run sees those of an unbroken one.
        quantize_aware: fine-tune with simulated int8 weights and outputs (fake-quant), so that
            files exported with ``quantize="int8"`` or ``"dynamic"`` lose less accuracy; the masks
            are kept, and the stripped model is plain float.
        block_pooling_type: the block score masks rank blocks by: ``"AVG"`` (mean ``|w|``),
            ``"MAX"`` or ``"L2"`` (root mean square); see ``blockprune.masks.block_scores``.
        lr_decay: hold ``learning_rate`` until the final sparsity, then decay it to zero on a
            cosine (``HoldThenCosine``); else it stays constant.

    Returns:
        A ``FinetuneResult``.

    Raises:
        ValueError: data that does not fit the model, bad epochs, batch size or block score.
    """
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    check_pooling_type(block_pooling_type)
    order_seed = int(np.random.randint(2**31 - 1)) if shuffle else None  # before anything else draws
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"model '{model.name}' has {len(model.inputs)} input(s) and {len(model.outputs)} output(s); "
                         f"data '{data.name}' holds one x and one y array per split, so fine-tuning here needs one "
                         "input and one output (train a multi-output model with your own fit: "
                         "blockprune.prune_low_magnitude and blockprune.UpdatePruningStep)")
    check_fits(data, model.input_shape[1:], model.output_shape[1:], model.name)
    steps_per_epoch = math.ceil(len(data.x_train) / batch_size)
    schedule = polynomial_schedule(epochs * steps_per_epoch, plan.sparsity if plan.sparsity > 0 else 0.5)
    dense_metrics = evaluate(model, data)
    if distill is not None and data.n_classes is None:
        raise ValueError(f"distillation needs class labels; data '{data.name}' has none")

    checkpoint = Path(checkpoint) if checkpoint else None
    initial_epoch = 0
    if resume and checkpoint and checkpoint.is_file():
        pruned = keras.models.load_model(checkpoint)
        initial_epoch = min(epochs, int(pruned.optimizer.iterations.numpy()) // steps_per_epoch)
    permutations = []
    y_train = _with_teacher(model, data) if distill is not None else data.y_train
    if not (resume and checkpoint and checkpoint.is_file()):
        if permute:
            from ..kerasgraph import copy_model
            from ..permute import permute_channels

            model = copy_model(model)  # the caller's model stays as it was
            permutations = permute_channels(model, plan)
        pruned = prune(model, plan, schedule, block_pooling_type, quantize_aware=quantize_aware)
        loss = (DistillationLoss(distill.temperature, distill.alpha, from_logits=not _outputs_softmax(model))
                if distill is not None else default_loss(model, data))
        rate = HoldThenCosine(learning_rate, schedule.end_step, epochs * steps_per_epoch) if lr_decay else learning_rate
        pruned.compile(keras.optimizers.Adam(rate), loss)
    callbacks = [UpdatePruningStep()] + ([_EpochCheckpoint(checkpoint)] if checkpoint else []) + list(callbacks or [])
    if initial_epoch < epochs:
        feed = (dict(x=_shuffled_batches(data.x_train, y_train, batch_size, order_seed, initial_epoch, epochs),
                     steps_per_epoch=steps_per_epoch) if shuffle
                else dict(x=data.x_train, y=y_train, batch_size=batch_size))
        pruned.fit(**feed, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=verbose,
                   callbacks=callbacks)
    stripped = strip_pruning(pruned)
    return FinetuneResult(stripped, plan, verify(stripped, plan), dense_metrics, evaluate(stripped, data),
                          epochs - initial_epoch, permutations, distill)

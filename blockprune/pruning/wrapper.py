"""``PruneLowMagnitude``: a Keras 3 wrapper that trains a layer with block masks.

The wrapper owns, as non-trainable weights created in ``build``, one mask per pruned weight
(the kernel's shape), one threshold per pruned weight, and a step counter (written by the
callback at each mask update and at the end of each epoch). It works the same way on the
TensorFlow, JAX and PyTorch backends, because all it does during a train step is part of the
layer's forward and backward pass:

- ``call`` runs the wrapped layer on its pruned weights through an identity whose gradient
  is multiplied by the mask (``keras.ops.custom_gradient``, substituted for the variable in
  a ``keras.StatelessScope``, so any layer works unchanged; on PyTorch, a hook on the parameter
  masks its accumulated gradient in place): pruned weights get a zero gradient, and the forward pass
  costs nothing extra.

Between train steps, when the schedule says so, ``update_masks(step)`` (called by the
``UpdatePruningStep`` callback) recomputes each mask from the current weights, multiplies the
weight by it and zeroes the optimizer's slots (momentum, EMA) at the pruned positions, except
the slots an optimizer divides its step by (Adam's velocity, Adagrad's accumulator, ...; see
``DIVISOR_SLOTS``), which are filled with a large number instead. An update with a zero
gradient and a zero momentum leaves a weight at zero (Adam, AdamW, SGD with momentum, RMSprop
and EMA do; the tests check them), so pruned weights stay exactly zero between mask updates and
the forward pass needs no mask. The train step
itself is not touched, so the wrapper works in eager mode, in compiled ``fit`` (graph mode,
XLA, ``jax.jit``, ``torch``) and under ``tf.distribute`` and ``keras.distribution``.

With ``quantize_aware=True`` the forward pass also simulates int8 quantization (fake-quant,
straight-through gradients), so fine-tuning learns weights that survive an int8 export:
each pruned weight is rounded to 255 symmetric levels of its largest magnitude (per tensor,
the coarsest grid a runtime here uses: ONNX Runtime's static QDQ; zero stays exactly zero,
so the masks are kept), and the layer's output to 256 levels of a moving-average range (the
calibrated activations of a full-integer file).
"""

from __future__ import annotations

import functools
import re

import keras

from ..checks import check_block_shape, check_blocks_fit, divides
from ..kerasgraph import any_symbolic_tensors, call_takes_training, get_stateless_scope, optimizer_slots
from ..masks import block_scores, check_pooling_type, grid_mask, kept_block_grid
from ..modelwalk import layer_sites
from ..views import WeightView
from .schedules import ConstantSparsity, PruningSchedule

__all__ = ["PruneLowMagnitude"]


#: Momentum of the moving-average activation range of quantization-aware training.
RANGE_MOMENTUM = 0.99

#: Optimizer slots (Keras 3's names) that an update divides by, or multiplies the gradient by:
#: with a zero gradient and a zero momentum, a pruned weight's step is zero whatever they hold.
#: A mask update fills them with a large number at pruned positions, not with zero, because
#: Adam takes the square root of its velocity at every step and PyTorch's CPU square root ran
#: 6-9x slower on zeros than on other numbers (1M floats: 2.5 ms against 0.3 ms, AVX-512). At
#: 90%, zero velocities made the MLP 1024's PyTorch train step 1.20-1.27x the unwrapped one's;
#: filled, 1.03x (docs/DESIGN.md section 3).
DIVISOR_SLOTS = frozenset({"velocity", "velocity_hat", "norm", "accumulator", "accumulated_grad",
                           "accumulated_delta_var"})


def _fake_quant_weight(w):
    """``w`` rounded to 255 symmetric int8 levels of its largest magnitude (per tensor), with a
    straight-through gradient; zero stays exactly zero."""
    bound = keras.ops.maximum(keras.ops.stop_gradient(keras.ops.max(keras.ops.abs(w))), 1e-8)
    return keras.quantizers.fake_quant_with_min_max_vars(w, -bound, bound, num_bits=8, narrow_range=True)


@keras.ops.custom_gradient
def _masked_gradient(w, mask):
    """``w`` itself, whose gradient is multiplied by ``mask``."""

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        return upstream * mask, keras.ops.zeros_like(mask)

    return w, grad


def _one_per_block(mask, view: WeightView, block_shape):
    """``mask`` (kernel-shaped) rebuilt in the graph from its first element in every block.

    Equal to ``mask``, whose blocks are uniform. On JAX, where XLA compiles every train step,
    the rebuild fuses into the ops that read the masked gradient (Adam's two moment updates),
    which then load one row of every block's rows: a (4, 1) block's mask costs a quarter of
    the memory traffic. Elsewhere it would be computed as a tensor of its own, so the wrapper
    uses it on JAX only. A view that the block does not divide (its last blocks are cut short)
    keeps the whole mask.
    """
    r, c = block_shape
    rows, cols = view.view_shape
    if r * c == 1 or not divides(view.view_shape, block_shape):  # unstructured, or ragged blocks at the edges
        return mask
    m = mask if view.is_identity else keras.ops.transpose(mask, view.perm)
    m = keras.ops.reshape(m, (rows // r, r, cols // c, c))[:, :1, :, :1]
    m = keras.ops.reshape(keras.ops.broadcast_to(m, (rows // r, r, cols // c, c)), view.permuted_shape)
    return m if view.is_identity else keras.ops.transpose(m, view.inverse_perm)


def _mask_accumulated_gradient(parameter, mask):
    """PyTorch: multiplies ``parameter``'s accumulated gradient by ``mask`` in place."""
    parameter.grad.mul_(mask.value)


def _divisor_fill(dtype) -> float:
    """What a divisor slot holds at pruned positions: about the square root of ``dtype``'s
    largest number (1.8e19 in float32, 256 in float16), so that its square stays finite. In
    float32, Adam's decay of 0.999 per step takes 131,000 steps without a mask update to bring
    it down to subnormal numbers (slower still than zeros; then it flushes to zero)."""
    return 256.0 if keras.backend.standardize_dtype(dtype) == "float16" else 1.8e19


def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


class _Target:
    """One pruned weight inside a wrapper (plain Python, rebuilt by ``build``)."""

    def __init__(self, name, variable, view, block_shape, schedule, mask, threshold):
        self.name = name
        self.variable = variable
        self.view = view
        self.block_shape = block_shape
        self.schedule = schedule
        self.mask = mask
        self.threshold = threshold


@keras.saving.register_keras_serializable(package="blockprune")
class PruneLowMagnitude(keras.layers.Wrapper):
    """Wraps a layer so that its prunable weights are trained with block masks.

    Args:
        layer: the layer to wrap: Dense, Conv1D/2D/3D, EinsumDense, MultiHeadAttention, LSTM,
            GRU, SimpleRNN (and Bidirectional wrappers of them), or a
            ``PrunableLayer``.
        pruning_schedule: a ``PruningSchedule`` (default ``ConstantSparsity(0.5, 0)``).
        block_size: ``(rows, cols)`` block over each weight's ``[in, out]`` view (default
            ``(1, 1)``, unstructured), used for weights ``prune_weights`` does not configure.
        block_pooling_type: ``"AVG"``, ``"MAX"`` or ``"L2"`` (root mean square) of ``|w|`` over
            a block.
        balanced: keep the same number of blocks in every block-column.
        prune_weights: optional ``{weight_name: {"block_shape": (r, c), "sparsity": s}}`` to
            prune only these weights (names relative to the layer, e.g. ``"query/kernel"``),
            each with its own block shape and final sparsity (the schedule is retargeted with
            ``for_sparsity``). ``view_perm`` and ``view_in_axes`` give another ``[in, out]``
            view than the layer's own (a convolution's channel-major view for channel blocks).
            Default: every prunable weight of the layer.
        quantize_aware: simulate int8 quantization of the pruned weights and of the layer's
            output while training (fake-quant; see the module's notes), for files exported with
            ``--quantize int8`` or ``dynamic``. Inference after ``strip_pruning`` is plain float.
        **kwargs: passed to ``keras.layers.Layer``.

    Example:
        >>> import keras
        >>> from blockprune import PruneLowMagnitude, PolynomialDecay
        >>> dense = PruneLowMagnitude(keras.layers.Dense(64), PolynomialDecay(0.0, 0.9, 0, 1000),
        ...                           block_size=(4, 1))
    """

    def __init__(self, layer, pruning_schedule: PruningSchedule | None = None, block_size=(1, 1),
                 block_pooling_type: str = "AVG", balanced: bool = False, prune_weights: dict | None = None,
                 quantize_aware: bool = False, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"PruneLowMagnitude wraps a Keras layer, got {type(layer).__name__}")
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(f"Layer '{layer.name}' is already wrapped for pruning")
        if isinstance(layer, keras.Model):
            raise ValueError(f"Layer '{layer.name}' is a model; use prune_low_magnitude(model) to wrap its layers")
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        if pruning_schedule is None:
            pruning_schedule = ConstantSparsity(0.5, begin_step=0)
        if not isinstance(pruning_schedule, PruningSchedule):
            raise TypeError(f"Layer '{layer.name}': pruning_schedule must be a PruningSchedule, "
                            f"got {type(pruning_schedule).__name__}")
        check_pooling_type(block_pooling_type, f"Layer '{layer.name}': ")
        self.pruning_schedule = pruning_schedule
        self.block_size = check_block_shape(block_size, f"layer '{layer.name}'", name="block_size")
        self.block_pooling_type = block_pooling_type
        self.balanced = bool(balanced)
        self.prune_weights = None if prune_weights is None else {
            str(k): {"block_shape": list(check_block_shape(v.get("block_shape", self.block_size),
                                                          f"layer '{layer.name}' weight '{k}'")),
                     "sparsity": v.get("sparsity"),
                     **({"view_perm": [int(a) for a in v["view_perm"]], "view_in_axes": int(v["view_in_axes"])}
                        if v.get("view_perm") is not None else {})}
            for k, v in dict(prune_weights).items()
        }
        self.quantize_aware = bool(quantize_aware)
        self._targets: list[_Target] = []
        self._gradient_hooks = None
        self.output_range = None
        #: Set by ``UpdatePruningStep`` while it drives training; training without it is an error.
        self.step_callback_active = False

    # ------------------------------------------------------------------ state

    def build(self, input_shape=None):
        if not self.layer.built:
            try:
                self.layer.build(input_shape)
            except TypeError as e:
                raise ValueError(f"Layer '{self.layer.name}' must be built before it is wrapped for pruning "
                                 f"(call it on its inputs first): {e}") from None
        sites = [s for s in layer_sites(self.layer) if s.not_prunable is None]
        by_name = {s.weight: s for s in sites}
        if self.prune_weights is None:
            chosen = {s.weight: {"block_shape": list(self.block_size), "sparsity": None} for s in sites}
        else:
            unknown = [n for n in self.prune_weights if n not in by_name]
            if unknown:
                raise ValueError(f"Layer '{self.layer.name}' has no prunable weight {unknown[0]!r} "
                                 f"(prunable: {', '.join(by_name) or 'none'})")
            chosen = self.prune_weights
        if not chosen:
            raise ValueError(f"Layer '{self.layer.name}' ({type(self.layer).__name__}) has nothing to prune: "
                             "it holds no Dense, convolution or EinsumDense kernel and is not a PrunableLayer")
        # -1 until UpdatePruningStep starts training (tfmot's convention).
        self.pruning_step = self.add_weight(name="pruning_step", shape=(), dtype="int32",
                                            initializer=keras.initializers.Constant(-1), trainable=False,
                                            aggregation="only_first_replica")
        self._targets = []
        for name, spec in chosen.items():
            site = by_name[name]
            view = site.view
            if spec.get("view_perm") is not None:
                view = WeightView(tuple(site.kernel_shape), tuple(spec["view_perm"]), spec["view_in_axes"])
            block = tuple(spec["block_shape"])
            check_blocks_fit(view.view_shape, block, f"Layer '{self.layer.name}' weight '{name}'")
            schedule = self.pruning_schedule
            if spec.get("sparsity") is not None:
                schedule = schedule.for_sparsity(spec["sparsity"])
            mask = self.add_weight(name=f"{_slug(name)}_mask", shape=tuple(site.kernel_shape),
                                   dtype=site.variable.dtype, initializer="ones", trainable=False,
                                   aggregation="only_first_replica")
            threshold = self.add_weight(name=f"{_slug(name)}_threshold", shape=(), dtype="float32",
                                        initializer="zeros", trainable=False, aggregation="only_first_replica")
            self._targets.append(_Target(name, site.variable, view, block, schedule, mask, threshold))
        if self.quantize_aware:  # [min, max, batches seen] of the layer's output, like BatchNormalization's moving stats
            self.output_range = self.add_weight(name="output_range", shape=(3,), dtype="float32",
                                                initializer="zeros", trainable=False)
        self._hook_gradients()
        self.built = True

    # ------------------------------------------------------------------ pruning

    @property
    def targets(self) -> list[dict]:
        """The pruned weights: name, variable, view, block shape, schedule, mask, threshold."""
        return [dict(vars(t)) for t in self._targets]

    def due(self, step: int) -> bool:
        """True when the schedule of some pruned weight updates its mask at ``step``."""
        return any(t.schedule(step)[0] for t in self._targets)

    def update_masks(self, step: int, optimizer=None) -> bool:
        """Where the schedule says so, recomputes masks and applies them (eagerly, between steps).

        On the JAX backend the model's state must be attached to its variables first (reading
        ``callback.model`` does it; ``UpdatePruningStep`` takes care of it).

        Args:
            step: the 0-based training step about to run.
            optimizer: the model's optimizer; its slots (momentum, velocity, ...) of each
                updated weight are zeroed at the pruned positions (divisor slots filled
                with a large number, see ``DIVISOR_SLOTS``).

        Returns:
            True when at least one mask was updated.
        """
        updated = False
        for t in self._targets:
            should_prune, sparsity = t.schedule(step)
            if not should_prune:
                continue
            weight = keras.ops.convert_to_numpy(t.variable)
            view = t.view.to_2d(weight)
            scores = block_scores(view, t.block_shape, self.block_pooling_type)
            grid = kept_block_grid(scores, sparsity, self.balanced)
            mask = t.view.from_2d(grid_mask(grid, t.block_shape, view.shape[1], weight.dtype))
            t.mask.assign(mask)
            t.threshold.assign(float(scores[grid].min()) if grid.any() else 0.0)
            t.variable.assign(weight * mask)
            for name, slot in optimizer_slots(optimizer, t.variable).items():  # on the device, no copy to the host
                fill = _divisor_fill(slot.dtype) if name in DIVISOR_SLOTS else 0.0
                slot.assign(keras.ops.where(t.mask.value > 0, slot.value, keras.ops.cast(fill, slot.dtype)))
            updated = True
        return updated

    def apply_masks(self):
        """Multiplies every pruned weight by its mask (eagerly)."""
        for t in self._targets:
            t.variable.assign(t.variable * keras.ops.cast(t.mask, t.variable.dtype))

    # ------------------------------------------------------------------ call

    def __call__(self, *args, **kwargs):
        # On PyTorch, eager, a call needs no work of the wrapper's own (hooks mask the
        # gradients), so it skips the Keras layer machinery a second time around the layer.
        if (self._gradient_hooks is not None and not self.quantize_aware and not any_symbolic_tensors(args, kwargs)
                and (self.step_callback_active or not kwargs.get("training"))):
            return self.layer(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def call(self, inputs, *args, training=None, **kwargs):
        if training and not self.step_callback_active:
            raise ValueError(f"Layer '{self.name}': training a pruned model needs the UpdatePruningStep "
                             "callback, e.g. model.fit(x, y, callbacks=[blockprune.UpdatePruningStep()])")
        if call_takes_training(self.layer):
            kwargs["training"] = training
        if self._gradient_hooks is not None and not self.quantize_aware:  # PyTorch: hooks mask the gradients
            return self.layer(inputs, *args, **kwargs)
        outputs = self._call_masked(inputs, *args, **kwargs)
        if self.quantize_aware and not isinstance(outputs, (list, tuple, dict)):
            outputs = self._fake_quant_output(outputs, training)
        return outputs

    def _fake_quant_output(self, outputs, training):
        """The output rounded to 256 levels of its moving-average range (updated while training;
        untouched before the first training batch)."""
        lo, hi, seen = (self.output_range[i] for i in range(3))
        if training:
            batch_lo = keras.ops.stop_gradient(keras.ops.cast(keras.ops.min(outputs), "float32"))
            batch_hi = keras.ops.stop_gradient(keras.ops.cast(keras.ops.max(outputs), "float32"))
            first = keras.ops.equal(seen, 0.0)
            lo = keras.ops.where(first, batch_lo, RANGE_MOMENTUM * lo + (1 - RANGE_MOMENTUM) * batch_lo)
            hi = keras.ops.where(first, batch_hi, RANGE_MOMENTUM * hi + (1 - RANGE_MOMENTUM) * batch_hi)
            seen = seen + 1.0
            self.output_range.assign(keras.ops.stack([lo, hi, seen]))
        lo, hi = keras.ops.minimum(lo, 0.0), keras.ops.maximum(hi, 0.0)  # zero is representable
        quantized = keras.quantizers.fake_quant_with_min_max_vars(outputs, lo, keras.ops.maximum(hi, lo + 1e-6),
                                                                  num_bits=8)
        return keras.ops.where(keras.ops.greater(seen, 0.0), quantized, outputs)

    def _hook_gradients(self):
        """On PyTorch, masks each pruned weight's gradient with a hook on its parameter (in
        place of ``_call_masked``, whose per-call Python work costs more in eager mode). The
        hook runs once the gradient is accumulated and masks it in place: a hook returning a
        masked copy allocated a new gradient every step (digits MLP, one run of 30 epoch pairs:
        step overhead 1.23x with the copy, 1.11x in place)."""
        self._gradient_hooks = None
        if keras.backend.backend() != "torch":
            return
        self._gradient_hooks = [t.variable.value.register_post_accumulate_grad_hook(
            functools.partial(_mask_accumulated_gradient, mask=t.mask)) for t in self._targets]

    def _call_masked(self, *args, **kwargs):
        """Calls the wrapped layer with every pruned weight's gradient multiplied by its mask.

        The weights (``_masked_gradient`` of them) replace the variables inside a
        ``StatelessScope`` that also carries the current value of every other variable of the
        layer (and of an enclosing scope, as in JAX's stateless train step). State the layer
        updates (seed generators, a stateful RNN's states) and losses it adds are handed on
        to the enclosing context.
        """
        one_per_block = keras.backend.backend() == "jax"
        masked = {id(t.variable): _masked_gradient(t.variable.value, keras.ops.cast(
            _one_per_block(t.mask.value, t.view, t.block_shape) if one_per_block else t.mask.value, t.variable.dtype))
            for t in self._targets}
        if self.quantize_aware:
            masked = {k: _fake_quant_weight(w) for k, w in masked.items()}
        variables = self.layer.variables
        current = [(v, masked.get(id(v), v.value)) for v in variables]
        outer = get_stateless_scope()
        collect = outer is not None and outer.collect_losses
        with keras.StatelessScope(state_mapping=current, collect_losses=collect) as scope:
            outputs = self.layer(*args, **kwargs)
        for v, before in current:
            after = scope.get_current_value(v)
            if after is not before and id(v) not in masked:
                v.assign(after)
        for loss in scope.losses:
            outer.add_loss(loss)
        return outputs

    # ------------------------------------------------------------------ config

    def get_config(self):
        config = super().get_config()
        config.update({
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "balanced": self.balanced,
            "prune_weights": self.prune_weights,
            "quantize_aware": self.quantize_aware,
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(config["pruning_schedule"],
                                                                           custom_objects=custom_objects)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, **config)

"""Entry points: ``prune`` (plan-driven), ``prune_low_magnitude`` (tfmot-compatible),
``strip_pruning`` and the block-structure check ``verify``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras

from .._atomic import atomic_path
from .._text import text_table
from ..masks import block_structure, reachable_sparsity
from ..kerasgraph import copy_model, rewrap
from ..modelwalk import find_weights, layer_sites, model_kind
from ..plan.records import SparsityPlan
from .callbacks import collect_wrappers
from .schedules import ConstantSparsity, PruningSchedule
from .wrapper import PruneLowMagnitude

__all__ = ["prune", "prune_low_magnitude", "prune_once", "strip_pruning", "verify", "LayerCheck", "Verification",
           "save_model_atomic"]


def _require_graph_model(model, what: str) -> None:
    kind = model_kind(model)
    if kind == "subclassed":
        raise ValueError(f"Model '{model.name}' is a subclassed model: {what} needs a Sequential or functional "
                         "model whose layers it can wrap (blockprune.plan can still plan it; rebuild the model "
                         "with keras.Input to prune it)")


def prune(model, plan: SparsityPlan, schedule: PruningSchedule | None = None, block_pooling_type: str = "AVG",
          quantize_aware: bool = False):
    """Wraps exactly the weights a plan selects, on a copy of ``model``.

    Args:
        model: a Sequential or functional Keras model (its trained weights are kept).
        plan: a ``SparsityPlan`` made for this model.
        schedule: the pruning schedule; it is retargeted to each weight's planned sparsity
            with ``schedule.for_sparsity``. Default: ``ConstantSparsity`` from step 0.
        block_pooling_type: the block score: ``"AVG"``, ``"MAX"`` or ``"L2"`` (root mean
            square) of ``|w|`` over each block (``blockprune.masks.block_scores``).
        quantize_aware: train with simulated int8 weights and outputs (``PruneLowMagnitude``'s
            ``quantize_aware``), for files exported with ``quantize="int8"`` or ``"dynamic"``.

    Returns:
        A new model in which every layer with planned weights is a ``PruneLowMagnitude``
        (block shapes from the plan, balanced when the plan's target is). Train it with the
        ``UpdatePruningStep`` callback.

    Raises:
        ValueError: a subclassed model, a plan that prunes nothing, or a plan made for
            another model (a missing layer or a different weight shape).

    Example:
        >>> p = blockprune.plan(model, "simd-4x1", sparsity=0.9)                   # doctest: +SKIP
        >>> pruned = blockprune.prune(model, p, PolynomialDecay(0.0, 0.9, 0, 1000))  # doctest: +SKIP
    """
    if not isinstance(plan, SparsityPlan):
        raise TypeError(f"plan must be a SparsityPlan, got {type(plan).__name__}")
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a Keras 3 model, got {type(model).__name__}")
    _require_graph_model(model, "prune")
    if schedule is None:
        schedule = ConstantSparsity(plan.sparsity if plan.sparsity > 0 else 0.5, begin_step=0)
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(f"schedule must be a PruningSchedule, got {type(schedule).__name__}")
    planned = plan.pruned_layers
    if not planned:
        raise ValueError(f"plan for model '{plan.model}' on target '{plan.target.name}' prunes no weight "
                         "(every weight was skipped; see plan.summary())")
    sites = {f"{s.layer}/{s.weight}": s for s in find_weights(model)}
    groups: dict[str, dict] = {}
    for lp in planned:
        site = sites.get(lp.name)
        if site is None:
            raise ValueError(f"Layer '{lp.layer}': the plan prunes weight '{lp.weight}', which model "
                             f"'{model.name}' does not have (was the plan made for another model?)")
        if tuple(site.kernel_shape) != tuple(lp.kernel_shape):
            raise ValueError(f"Layer '{lp.layer}': weight '{lp.weight}' has shape {site.kernel_shape} in model "
                             f"'{model.name}' but {lp.kernel_shape} in the plan for target '{plan.target.name}'")
        spec = {"block_shape": list(lp.block_shape), "sparsity": lp.sparsity}
        if lp.view != site.view:  # e.g. a KxK convolution in channel blocks, over its channel-major view
            spec.update(view_perm=list(lp.view.perm), view_in_axes=lp.view.n_in_axes)
        groups.setdefault(lp.layer, {})[lp.weight] = spec

    def wrap(layer, path):
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(f"Layer '{layer.name}' is already wrapped for pruning; strip_pruning() it first")
        if path in groups:
            return PruneLowMagnitude(layer, schedule, block_pooling_type=block_pooling_type,
                                     balanced=plan.target.balanced, prune_weights=groups[path],
                                     quantize_aware=quantize_aware)
        return layer

    return rewrap(copy_model(model), wrap)


def prune_once(model, plan: SparsityPlan, block_pooling_type: str = "AVG"):
    """One-shot magnitude pruning to a plan, without training (for benchmarks and sweeps).

    Args:
        model: a Sequential or functional model.
        plan: a plan made for it.
        block_pooling_type: the block score: ``"AVG"``, ``"MAX"`` or ``"L2"`` (root mean
            square) of ``|w|`` over each block (``blockprune.masks.block_scores``).

    Returns:
        A stripped copy of ``model`` whose planned weights have the planned block sparsity.
    """
    wrapped = prune(model, plan, ConstantSparsity(plan.sparsity if plan.sparsity > 0 else 0.5, begin_step=0),
                    block_pooling_type)
    for wrapper in collect_wrappers(wrapped):
        wrapper.update_masks(0)
    return strip_pruning(wrapped)


def prune_low_magnitude(to_prune, pruning_schedule: PruningSchedule | None = None, block_size=(1, 1),
                        block_pooling_type: str = "AVG", balanced: bool = False, **kwargs):
    """tfmot's ``prune_low_magnitude`` for Keras 3, with block masks on any prunable layer.

    Args:
        to_prune: a layer, a list of layers, or a Sequential/functional model. For a model,
            every layer with a prunable weight (Dense, Conv1D/2D/3D, EinsumDense,
            MultiHeadAttention, LSTM/GRU/SimpleRNN and Bidirectional, ``PrunableLayer``) is wrapped, on a copy that keeps the
            trained weights; other layers are kept as they are.
        pruning_schedule: a ``PruningSchedule``; default ``ConstantSparsity(0.5, 0)``.
        block_size: ``(rows, cols)`` over each weight's ``[in, out]`` view.
        block_pooling_type: the block score: ``"AVG"``, ``"MAX"`` or ``"L2"`` (root mean
            square) of ``|w|`` over each block (``blockprune.masks.block_scores``).
        balanced: keep the same number of blocks in every block-column.
        **kwargs: passed to each ``PruneLowMagnitude``.

    Returns:
        A wrapped layer, a list of them, or a new model.

    Raises:
        TypeError: ``to_prune`` is none of the above.
        ValueError: a subclassed model, a model with nothing to prune, or a block size that
            does not divide some layer's view (the message names the layer).

    Example:
        >>> pruned = prune_low_magnitude(model, PolynomialDecay(0.0, 0.9, 0, 1000),  # doctest: +SKIP
        ...                              block_size=(4, 1))
    """
    params = dict(pruning_schedule=pruning_schedule, block_size=block_size, block_pooling_type=block_pooling_type,
                  balanced=balanced, **kwargs)
    if isinstance(to_prune, keras.Model):
        _require_graph_model(to_prune, "prune_low_magnitude")
        prunable = {s.layer for s in find_weights(to_prune) if s.not_prunable is None}
        if not prunable:
            raise ValueError(f"Model '{to_prune.name}' has no prunable layer (Dense, convolution, EinsumDense, "
                             "MultiHeadAttention or PrunableLayer)")

        def wrap(layer, path):
            return PruneLowMagnitude(layer, **params) if path in prunable else layer

        return rewrap(copy_model(to_prune), wrap)
    if isinstance(to_prune, (list, tuple)):
        return [prune_low_magnitude(layer, **params) for layer in to_prune]
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **params)
    raise TypeError(f"prune_low_magnitude expects a Keras layer, a list of layers or a Sequential/functional "
                    f"model, got {type(to_prune).__name__}")


def strip_pruning(model):
    """A plain Keras model with the masks baked into the weights.

    The result holds no wrapper, mask or step variable, shares no variable with ``model``,
    and gives the same outputs as the pruned model.

    Args:
        model: a model containing ``PruneLowMagnitude`` layers (or none: it is copied).

    Returns:
        A new Sequential/functional model.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"strip_pruning expects a Keras model, got {type(model).__name__}")
    _require_graph_model(model, "strip_pruning")
    for wrapper in collect_wrappers(model):
        wrapper.apply_masks()
    unwrapped = rewrap(model, lambda layer, path: layer.layer if isinstance(layer, PruneLowMagnitude) else layer)
    # The unwrapped model shares layers (and their mask constraints) with ``model``; a copy does not.
    return copy_model(unwrapped)


# --------------------------------------------------------------------------- verification

@dataclass(frozen=True)
class LayerCheck:
    """What one planned weight really looks like.

    Attributes:
        name: ``layer/weight``.
        block_shape: the planned block.
        target_sparsity: the planned sparsity.
        sparsity: fraction of its weights that are zero.
        block_sparsity: fraction of its blocks that are entirely zero.
        partial_blocks: blocks with some, but not all, weights zero.
        kept_per_block_column: (min, max) nonzero blocks over block-columns.
        exact: every block is all zero or kept, and the planned block sparsity is reached
            (and, for a balanced target, every block-column keeps the same number of blocks).
    """

    name: str
    block_shape: tuple[int, int]
    target_sparsity: float
    sparsity: float
    block_sparsity: float
    partial_blocks: int
    kept_per_block_column: tuple[int, int]
    exact: bool


@dataclass(frozen=True)
class Verification:
    """Per-weight block-structure checks of a model against a plan."""

    layers: tuple[LayerCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.exact for c in self.layers)

    def summary(self) -> str:
        rows = [("layer/weight", "block", "planned", "zero weights", "zero blocks", "partial", "exact")]
        for c in self.layers:
            rows.append((c.name, f"({c.block_shape[0]}, {c.block_shape[1]})", f"{c.target_sparsity:.1%}",
                         f"{c.sparsity:.1%}", f"{c.block_sparsity:.1%}", str(c.partial_blocks),
                         "yes" if c.exact else "NO"))
        return text_table(rows)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "layers": [dict(vars(c)) for c in self.layers]}


def _resolve_layer(model, path: str):
    current = model
    for part in path.split("/"):
        match = None
        for layer in current.layers:
            inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
            if inner.name == part:
                match = inner
                break
        if match is None:
            raise ValueError(f"Layer '{path}': no layer named '{part}' in model '{current.name}'")
        current = match
    return current


def verify(model, plan: SparsityPlan) -> Verification:
    """Checks that every weight the plan prunes has the planned block structure.

    Works on a pruned (wrapped) model and on a stripped one.

    Args:
        model: the model to check.
        plan: the plan it was pruned with.

    Returns:
        A ``Verification``; ``.ok`` is True when every planned weight is block-exact.
    """
    checks = []
    for lp in plan.pruned_layers:
        layer = _resolve_layer(model, lp.layer)
        site = next((s for s in layer_sites(layer) if s.weight == lp.weight), None)
        if site is None:
            raise ValueError(f"Layer '{lp.layer}' has no weight '{lp.weight}' (plan for target '{plan.target.name}')")
        view = (lp.view or site.view).to_2d(keras.ops.convert_to_numpy(site.variable))
        st = block_structure(view, lp.block_shape)
        expected = reachable_sparsity(view.shape, lp.block_shape, lp.sparsity, plan.target.balanced)
        lo, hi = st["kept_per_block_column"]
        exact = (st["partial_blocks"] == 0 and st["zero_block_fraction"] >= expected - 1e-9
                 and (not plan.target.balanced or lo == hi))
        checks.append(LayerCheck(lp.name, lp.block_shape, lp.sparsity, st["zero_fraction"],
                                 st["zero_block_fraction"], st["partial_blocks"], (lo, hi), exact))
    return Verification(tuple(checks))


def save_model_atomic(model, path: str | os.PathLike) -> Path:
    """``model.save(path)`` through a temporary ``.keras`` file in the same folder and a rename."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: a Keras model file must end in .keras")
    with atomic_path(path, suffix=".tmp.keras") as tmp:
        model.save(tmp)
    return path

"""Finds every weight of a Keras model that blockprune could prune, and why the others can't be.

``find_weights(model)`` walks Sequential and functional models (nested ones too) and, for a
subclassed model, its tracked layers. Each *graph-node* layer (a layer of the model or of a
nested model) yields one ``WeightSite`` per matrix-like weight it owns, its sublayers
included: MultiHeadAttention yields its four EinsumDense projections as ``query/kernel`` and
so on. Weights that are not a matmul over an ``[in, out]`` view (depthwise kernels,
embeddings, ...) are reported too, with the reason, so nothing falls through silently.

This module needs Keras; ``blockprune.plan`` imports it only when planning a live model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .kerasgraph import build_shapes, is_functional, own_variables, owns, sublayers
from .prunable import is_prunable_layer
from .views import WeightRef, WeightView, einsum_view

__all__ = ["WeightSite", "find_weights", "target_sites", "layer_sites", "model_kind", "matrix_kind"]

_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
#: Recurrent cells: their input ``kernel`` ``[in, gates * units]`` and ``recurrent_kernel``
#: ``[units, gates * units]`` are matmuls over ``[in, out]`` views (one per time step).
_RNN_CELLS = (keras.layers.LSTMCell, keras.layers.GRUCell, keras.layers.SimpleRNNCell)
_RNN_WEIGHTS = ("kernel", "recurrent_kernel")
_NOT_PRUNABLE_WHY = {
    "DepthwiseConv1D": "depthwise kernels are not prunable: XNNPACK and TFLite gain nothing from sparse depthwise convolutions",
    "DepthwiseConv2D": "depthwise kernels are not prunable: XNNPACK and TFLite gain nothing from sparse depthwise convolutions",
    "Embedding": "an embedding is a table lookup, not a matmul over an [in, out] view",
}


@dataclass(frozen=True)
class WeightSite(WeightRef):
    """One matrix-like weight of a live model: a ``WeightRef`` plus why it can't be pruned and
    the variable itself.

    Attributes:
        not_prunable: why the weight can never be pruned, or None.
        variable: the Keras variable (not serialized, not compared).
    """

    not_prunable: str | None = None
    variable: Any = field(default=None, repr=False, compare=False)


def model_kind(model) -> str:
    """``"sequential"``, ``"functional"`` or ``"subclassed"``."""
    if isinstance(model, keras.Sequential):
        return "sequential"
    return "functional" if is_functional(model) else "subclassed"


def matrix_kind(layer) -> tuple[str, WeightView | None, str | None]:
    """Classifies a layer that directly holds a kernel.

    Returns:
        ``(kind, view, reason)``: the layer kind, the kernel's view, and why it is not
        prunable (None when it is). ``kind`` is ``"other"`` for unknown layers.
    """
    kernel = _own_weight(layer, "kernel")
    if isinstance(layer, keras.layers.Dense) and kernel is not None:
        return "dense", WeightView.for_dense(kernel.shape), _dtype_reason(kernel)
    if isinstance(layer, keras.layers.EinsumDense) and kernel is not None:
        try:
            view = einsum_view(layer.equation, kernel.shape)
        except ValueError as e:
            return "einsum_dense", None, str(e)
        return "einsum_dense", view, _dtype_reason(kernel)
    if isinstance(layer, _CONVS) and kernel is not None:
        groups = getattr(layer, "groups", 1)
        if groups != 1:
            return "conv", None, f"grouped convolution (groups={groups}) has no single [in, out] matrix"
        spatial = tuple(kernel.shape[:-2])
        kind = "conv1x1" if all(k == 1 for k in spatial) else "conv"
        return kind, WeightView.for_conv(kernel.shape), _dtype_reason(kernel)
    return "other", None, None


def _dtype_reason(variable) -> str | None:
    dtype = str(getattr(variable, "dtype", "float32"))
    if "float" not in dtype:
        return f"kernel dtype {dtype} is already quantized; prune the float model before quantizing"
    return None


def _own_weight(layer, name: str):
    for w in layer.weights:
        if w.name == name and owns(layer, w):
            return w
    return None


def _known_positions(shape, n_out: int) -> int | None:
    """Rows per sample of a matmul whose output has ``shape`` and ``n_out`` output features."""
    if not shape or any(d is None for d in shape[1:]):
        return None
    return max(1, math.prod(int(d) for d in shape[1:]) // n_out)


def _output_shape(layer):
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError, RuntimeError):
        build = build_shapes(layer)
        if len(build) == 1:
            try:
                return tuple(layer.compute_output_shape(next(iter(build.values()))))
            except Exception:  # noqa: BLE001 - a layer may not implement it; the caller falls back
                return None
    return None


def _positions(layer, view: WeightView | None, node) -> int:
    """Matmul rows per sample, for the estimate; from the node's output when the layer's is unknown."""
    if view is None:
        return 1
    known = _known_positions(_output_shape(layer), view.view_shape[1])
    if known is None and node is not layer:
        node_shape = _output_shape(node)
        known = _known_positions(node_shape, node_shape[-1]) if node_shape and node_shape[-1] else None
    return known or 1


def _timesteps(node) -> int:
    """Time steps per sample of a recurrent layer (its input's axis 1), for the estimate; 1 when unknown."""
    shapes = list(build_shapes(node).values())
    shape = shapes[0] if shapes else None
    if shape and len(shape) >= 3 and shape[1] is not None:
        return int(shape[1])
    return 1


def _sites_of(layer, node, node_path: str, rel_prefix: str, out: list[WeightSite], covered: set[int]) -> None:
    """Adds the prunable weights of ``layer`` and of its sublayers (not nested graph nodes)."""
    if isinstance(layer, _RNN_CELLS):
        covered.update(id(w) for w in layer.weights)  # the bias belongs to the cell, not a matmul
        for name in _RNN_WEIGHTS:
            w = _own_weight(layer, name)
            shape = tuple(int(d) for d in w.shape)
            out.append(WeightSite(node_path, rel_prefix + name, type(layer).__name__, "recurrent", shape,
                                  WeightView.for_dense(shape), _timesteps(node), _dtype_reason(w), w))
        return
    if is_prunable_layer(layer):
        for w in layer.get_prunable_weights():
            covered.add(id(w))
            shape = tuple(int(d) for d in w.shape)
            view = WeightView.for_matrix_like(shape) if len(shape) >= 2 else None
            reason = None if view else f"weight of rank {len(shape)} has no [in, out] view"
            out.append(WeightSite(node_path, rel_prefix + w.name, type(layer).__name__, "custom", shape,
                                  view, _positions(layer, view, node), reason or _dtype_reason(w), w))
        return
    kind, view, reason = matrix_kind(layer)
    if kind != "other":
        kernel = _own_weight(layer, "kernel")
        # Biases (rank 2 in EinsumDense) and LoRA factors belong to the kernel's layer, not a matmul.
        covered.update(id(w) for w in layer.weights)
        out.append(WeightSite(node_path, rel_prefix + "kernel", type(layer).__name__, kind,
                              tuple(int(d) for d in kernel.shape), view, _positions(layer, view, node), reason, kernel))
        return
    for child in sublayers(layer):
        _sites_of(child, node, node_path, f"{rel_prefix}{child.name}/", out, covered)


def _uncovered(layer, node_path: str, out: list[WeightSite], covered: set[int]) -> None:
    """Reports matrix-like trainable weights that no prunable kind claimed."""
    for w in layer.trainable_weights:
        if id(w) in covered or len(w.shape) < 2:
            continue
        covered.add(id(w))
        owner = _owner_class(layer, w)
        if is_prunable_layer(layer):
            why = f"{type(layer).__name__}.get_prunable_weights() does not list it"
        else:
            why = _NOT_PRUNABLE_WHY.get(owner, f"{owner} weights are not a matmul over an [in, out] view "
                                        "blockprune knows; implement PrunableLayer.get_prunable_weights() to prune them")
        rel = _relative_name(layer, w)
        out.append(WeightSite(node_path, rel, owner, owner.lower(), tuple(int(d) for d in w.shape), None, 1, why, w))


def _owner_class(layer, variable) -> str:
    owner = type(layer).__name__
    for sub in sublayers(layer, recursive=True, include_self=True):
        if any(v is variable for v in own_variables(sub, trainable_only=True)):
            owner = type(sub).__name__
    return owner


def _relative_name(layer, variable) -> str:
    path = getattr(variable, "path", variable.name)
    prefix = f"{layer.name}/"
    idx = path.find(prefix)
    return path[idx + len(prefix):] if idx >= 0 else variable.name


def _check_finite(model) -> None:
    """Refuses a model with a NaN or infinite weight (a diverged training run), naming it."""
    for w in model.weights:
        if "float" not in str(w.dtype):
            continue
        values = np.asarray(w.numpy())
        bad = values.size - int(np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ValueError(f"Model '{model.name}': weight '{w.path}' holds {bad} NaN or infinite value(s) of "
                             f"{values.size}; blockprune does not plan, prune or export it (did training diverge?)")


def find_weights(model) -> list[WeightSite]:
    """All matrix-like weights of ``model``, in layer order.

    Args:
        model: a built Keras 3 model (Sequential, functional, nested, or subclassed).

    Returns:
        One ``WeightSite`` per weight; ``not_prunable`` says why a weight can't be pruned.

    Raises:
        TypeError: ``model`` is not a Keras model.
        ValueError: the model has no weights yet (it was never built).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a Keras 3 model (keras.Model), got {type(model).__module__}.{type(model).__name__}")
    if not model.weights:
        if model.built:
            raise ValueError(f"Model '{model.name}' has no weights: its layers ({len(model.layers)}) hold no kernel "
                             "to prune")
        raise ValueError(f"Model '{model.name}' has no weights yet: build it (give it an Input shape or call it "
                         "on a batch) before planning")
    _check_finite(model)
    sites: list[WeightSite] = []
    seen: set[int] = set()
    covered: set[int] = set()

    def walk(m, prefix: str) -> None:
        for layer in m.layers:
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            path = prefix + layer.name
            if isinstance(layer, keras.Model) and not is_prunable_layer(layer):
                walk(layer, path + "/")
                continue
            _sites_of(layer, layer, path, "", sites, covered)
            _uncovered(layer, path, sites, covered)

    walk(model, "")
    return sites


def layer_sites(layer) -> list[WeightSite]:
    """The matrix-like weights of one (built) layer, named relative to it."""
    sites: list[WeightSite] = []
    covered: set[int] = set()
    _sites_of(layer, layer, layer.name, "", sites, covered)
    _uncovered(layer, layer.name, sites, covered)
    return sites


def target_sites(model, target) -> list[WeightSite]:
    """The weights of ``model`` that ``target`` can prune: prunable, with an ``[in, out]`` view,
    of a layer kind the target lists (its ``min_weights`` is the planner's business)."""
    return [s for s in find_weights(model)
            if s.not_prunable is None and s.view is not None and s.kind in target.layer_kinds]

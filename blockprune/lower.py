"""Lowering: rewrite block-sparse Dense and 1x1 convolution layers into gather-matmul layers.

With balanced block sparsity, ``y = x @ W`` becomes standard ops that stock TFLite (XNNPACK)
and ONNX Runtime run fast at any batch size (DESIGN.md section 3)::

    Gather(x, cols[ncb, k*rows], axis=-1)   -> [B, ncb, k*rows]
    Transpose                               -> [ncb, B, k*rows]
    MatMul with packed W[ncb, k*rows, cols] -> [ncb, B, cols]
    Transpose, Reshape                      -> [B, out]

``lower(model, target, runtime)`` returns a new model in which every Dense and 1x1
convolution whose weights have one of the target's block shapes (read from the zeros) becomes a
``BlockSparseDense`` holding the packed blocked-ELL weights; everything else is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from .formats import BlockedELL, detect_block_shape
from .modelwalk import target_sites
from .kerasgraph import copy_model, rewrap
from .targets import LOWERABLE_KINDS, load_target

__all__ = ["BlockSparseDense", "LoweredLayer", "lower", "LOWERABLE_KINDS"]


@keras.saving.register_keras_serializable(package="blockprune")
class BlockSparseDense(keras.layers.Layer):
    """``activation(x @ W + bias)`` over the last axis, with ``W`` in blocked-ELL form.

    Args:
        units: output features.
        in_features: input features.
        block_shape: ``(rows, cols)`` of the blocks.
        blocks_per_column: ``k``, blocks kept in every block-column.
        activation: a Keras activation name or function.
        use_bias: whether a bias is added.

    The weights are ``gather_indices`` (int32 ``[units // cols, k * rows]``), ``values``
    (``[units // cols, k * rows, cols]``) and ``bias``; set them with ``set_packed``.

    Example:
        >>> from blockprune.formats import BlockedELL            # doctest: +SKIP
        >>> layer = BlockSparseDense.from_packed(BlockedELL.from_dense(w, (1, 64)), bias, "relu")  # doctest: +SKIP
    """

    def __init__(self, units, in_features, block_shape, blocks_per_column, activation=None, use_bias=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.in_features = int(in_features)
        self.block_shape = (int(block_shape[0]), int(block_shape[1]))
        self.blocks_per_column = int(blocks_per_column)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        if self.units % self.block_shape[1] or self.in_features % self.block_shape[0]:
            raise ValueError(f"Layer '{self.name}': block_shape={self.block_shape} does not divide the [in, out] "
                             f"view ({self.in_features}, {self.units})")

    def build(self, input_shape):
        if input_shape[-1] != self.in_features:
            raise ValueError(f"Layer '{self.name}' expects {self.in_features} input features, got {input_shape[-1]}")
        bh, bw = self.block_shape
        n_cols, kr = self.units // bw, self.blocks_per_column * bh
        self.gather_indices = self.add_weight(name="gather_indices", shape=(n_cols, kr), dtype="int32",
                                              initializer="zeros", trainable=False)
        self.values = self.add_weight(name="values", shape=(n_cols, kr, bw), initializer="zeros", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros",
                                    trainable=False) if self.use_bias else None

    @classmethod
    def from_packed(cls, matrix: BlockedELL, bias=None, activation=None, **kwargs) -> "BlockSparseDense":
        """A built layer holding ``matrix`` (and ``bias``)."""
        layer = cls(matrix.shape[1], matrix.shape[0], matrix.block_shape, matrix.k, activation,
                    use_bias=bias is not None, **kwargs)
        layer.build((None, matrix.shape[0]))
        layer.set_packed(matrix, bias)
        return layer

    def set_packed(self, matrix: BlockedELL, bias=None) -> None:
        """Loads packed weights (their shapes must match the layer's)."""
        self.gather_indices.assign(matrix.gather_indices())
        self.values.assign(matrix.packed_values())
        if self.use_bias:
            self.bias.assign(np.asarray(bias, dtype=self.values.dtype))

    def call(self, x):
        ops = keras.ops
        flat = len(x.shape) == 2  # the common case needs no reshapes around the product
        lead = None if flat else ops.shape(x)[:-1]
        x2 = x if flat else ops.reshape(x, (-1, self.in_features))
        gathered = ops.take(x2, self.gather_indices, axis=1)         # [B, ncb, k*rows]
        y = ops.matmul(ops.transpose(gathered, (1, 0, 2)), self.values)  # [ncb, B, cols]
        y = ops.reshape(ops.transpose(y, (1, 0, 2)), (-1, self.units))
        if self.use_bias:
            y = y + self.bias
        y = self.activation(y)
        return y if flat else ops.reshape(y, (*lead, self.units))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "in_features": self.in_features,
                "block_shape": list(self.block_shape), "blocks_per_column": self.blocks_per_column,
                "activation": keras.activations.serialize(self.activation), "use_bias": self.use_bias}


@dataclass(frozen=True)
class LoweredLayer:
    """One rewritten layer: its name, kind, block shape, sparsity and blocks per block-column."""

    name: str
    kind: str
    block_shape: tuple[int, int]
    sparsity: float
    blocks_per_column: int


def _lowerable(layer) -> str | None:
    """Why ``layer`` cannot become a gather-matmul layer, or None when it can."""
    if isinstance(layer, keras.layers.Dense):
        return None
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        if layer.data_format != "channels_last":
            return "a channels_first convolution"
        if any(s != 1 for s in layer.strides):
            return f"a strided convolution (strides={layer.strides})"
        return None
    return f"a {type(layer).__name__}"


def lower(model, target, runtime: str = "tflite", block_shapes=None):
    """Rewrites block-sparse Dense and 1x1 convolutions into ``BlockSparseDense`` layers.

    Only when the target's lowering for ``runtime`` is ``gather-matmul``; otherwise the model
    is returned unchanged (as a copy).

    Args:
        model: a stripped Sequential or functional model.
        target: target name, path or descriptor.
        runtime: ``"tflite"`` or ``"onnx"``.
        block_shapes: ``{"layer/weight": (rows, cols)}`` to pin block shapes (from a plan);
            default: read each weight's block shape from its zeros among the target's.

    Returns:
        ``(lowered_model, [LoweredLayer, ...])``.
    """
    target = load_target(target)
    if runtime not in ("tflite", "onnx"):
        raise ValueError(f"runtime={runtime!r} must be 'tflite' or 'onnx'")
    copy = copy_model(model)
    if getattr(target.lowering, runtime) != "gather-matmul":
        return copy, []
    block_shapes = block_shapes or {}
    replacements: dict[str, tuple] = {}
    for site in target_sites(copy, target):
        if site.kind not in LOWERABLE_KINDS or site.weight != "kernel":
            continue
        w2d = site.view.to_2d(np.asarray(site.variable.numpy()))
        name = f"{site.layer}/{site.weight}"
        candidates = [block_shapes[name]] if name in block_shapes else target.block_shapes
        found = detect_block_shape(w2d, candidates)
        if found is None:
            continue
        replacements[site.layer] = (w2d, found[0], found[1])
    lowered: list[LoweredLayer] = []

    def swap(layer, path):
        if path not in replacements or _lowerable(layer) is not None:
            return layer
        w2d, block, zero = replacements[path]
        matrix = BlockedELL.from_dense(w2d, block)
        bias = layer.bias.numpy() if layer.use_bias else None
        new = BlockSparseDense.from_packed(matrix, bias, layer.activation, name=layer.name)
        lowered.append(LoweredLayer(path, "conv1x1" if not isinstance(layer, keras.layers.Dense) else "dense",
                                    block, zero, matrix.k))
        return new

    return rewrap(copy, swap), lowered

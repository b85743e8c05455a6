"""Keras layers that lowered models are built from (registered, so a lowered model saves and loads)."""

from __future__ import annotations

import keras
import numpy as np

from ..formats import BlockedELL

__all__ = ["BlockSparseDense"]


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

"""Keras layers that lowered models are built from (registered, so a lowered model saves and loads).

- ``BlockSparseDense``: ``x @ W`` over the trailing input axes with ``W`` in blocked-ELL form,
  in one of two layouts (see docs/DESIGN.md, section 4): ``batch`` (gather along the feature
  axis, batched matmul over block-columns) or ``feature`` (transpose once, gather whole rows of
  the feature-major activations, matmul with the transposed blocks, transpose back).
- ``FeatureMajorAttention``: self-attention whose four projections are feature-major
  ``BlockSparseDense`` layers, computed ``[features, tokens]`` from the projections' input to
  the output projection (attention as batched matmuls over the heads), so none of the
  projections transposes back.
- ``ChannelGatherConv``: a KxK convolution whose kept weights come in channel blocks (one input
  channel, all taps, ``c`` output channels), as a gather over input channels and a grouped
  convolution.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from ..checks import fits, n_block_cols
from ..formats import BlockedELL

__all__ = ["BlockSparseDense", "ChannelGatherConv", "ChannelGatherDense", "FeatureMajorAttention", "LAYOUTS", "elementwise"]

#: Layouts of ``BlockSparseDense``.
LAYOUTS = ("batch", "feature", "rows")
#: Keras activations that act on each value alone (so they can run on transposed activations);
#: softmax and log_softmax do not.
ELEMENTWISE = {"linear", "relu", "relu6", "sigmoid", "tanh", "gelu", "silu", "swish", "elu", "selu", "softplus",
               "softsign", "hard_sigmoid", "hard_silu", "hard_swish", "leaky_relu", "mish", "exponential", "celu"}


def elementwise(activation) -> bool:
    """Whether a Keras activation (a name or a function) acts on each value alone."""
    name = keras.activations.serialize(keras.activations.get(activation))
    name = name.get("config", name) if isinstance(name, dict) else name
    return isinstance(name, str) and name in ELEMENTWISE


@keras.saving.register_keras_serializable(package="blockprune")
class BlockSparseDense(keras.layers.Layer):
    """``activation(x @ W + bias)`` over the trailing input axes, with ``W`` in blocked-ELL form.

    Args:
        units: output features (columns of ``W``).
        in_features: input features (rows of ``W``): the product of the trailing
            ``input_axes`` axes of the input.
        block_shape: ``(rows, cols)`` of the blocks.
        blocks_per_column: ``k``, blocks kept in every block-column.
        activation: a Keras activation name or function.
        use_bias: whether a bias is added.
        layout: ``"batch"``, ``"feature"`` or ``"rows"`` (see ``blockprune.lower.gather_matmul``).
        input_axes: how many trailing input axes form the ``in`` dimension (an EinsumDense
            contracting several axes).
        output_shape: the trailing output axes the ``units`` are reshaped to (default
            ``(units,)``).
        bias_shape: the bias's shape as the replaced layer stored it (default ``(units,)``);
            added after the reshape, with the same broadcasting.
        input_layout, output_layout: ``"batch"`` (the model's own tensors) or ``"feature"``
            (``[features, rows]``, between two chained feature-major layers: the transposes in
            between are left out).
        lead_shape: the input's axes between the batch and the ``in`` axes (e.g. the sequence
            length), to restore the output when the input arrives feature-major.

    The weights are ``gather_indices`` (int32), ``values`` and ``bias``; set them with
    ``set_packed``.

    Example:
        >>> from blockprune.formats import BlockedELL            # doctest: +SKIP
        >>> layer = BlockSparseDense.from_packed(BlockedELL.from_dense(w, (1, 64)), bias, "relu")  # doctest: +SKIP
    """

    def __init__(self, units, in_features, block_shape, blocks_per_column, activation=None, use_bias=True,
                 layout="batch", input_axes=1, output_shape=None, bias_shape=None, input_layout="batch",
                 output_layout="batch", lead_shape=(), **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.in_features = int(in_features)
        self.block_shape = (int(block_shape[0]), int(block_shape[1]))
        self.blocks_per_column = int(blocks_per_column)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        if layout not in LAYOUTS:
            raise ValueError(f"Layer '{self.name}': layout={layout!r} is not one of {LAYOUTS}")
        self.layout = layout
        self.input_axes = int(input_axes)
        self.out_shape = tuple(int(d) for d in (output_shape or (self.units,)))
        self.bias_shape = tuple(int(d) for d in (bias_shape or (self.units,)))
        self.input_layout, self.output_layout = input_layout, output_layout
        self.lead_shape = tuple(int(d) for d in lead_shape)
        if (input_layout, output_layout) != ("batch", "batch") and (layout != "feature" or not self._transposable):
            raise ValueError(f"Layer '{self.name}': feature-major inputs or outputs need layout='feature', one "
                             "bias value per unit and an elementwise activation")
        if not fits((self.in_features, self.units), self.block_shape):
            raise ValueError(f"Layer '{self.name}': block_shape={self.block_shape} does not fit the [in, out] "
                             f"view ({self.in_features}, {self.units})")
        # a last block-column narrower than the block is computed padded, then cut off
        self.padded_units = n_block_cols(self.units, self.block_shape[1]) * self.block_shape[1]
        if math.prod(self.out_shape) != self.units:
            raise ValueError(f"Layer '{self.name}': output_shape={self.out_shape} does not hold {self.units} units")

    def build(self, input_shape):
        got = math.prod(input_shape[-self.input_axes:])
        if got != self.in_features:
            raise ValueError(f"Layer '{self.name}' expects {self.in_features} input features, got {got}")
        bh, bw = self.block_shape
        n_cols, kr = self.padded_units // bw, self.blocks_per_column * bh
        index_shape = (n_cols, kr) if self.layout == "batch" else (n_cols * kr,)
        value_shape = (n_cols, bw, kr) if self.layout == "feature" else (n_cols, kr, bw)
        self.gather_indices = self.add_weight(name="gather_indices", shape=index_shape, dtype="int32",
                                              initializer="zeros", trainable=False)
        self.values = self.add_weight(name="values", shape=value_shape, initializer="zeros", trainable=False)
        self.bias = self.add_weight(name="bias", shape=self.bias_shape, initializer="zeros",
                                    trainable=False) if self.use_bias else None

    @classmethod
    def from_packed(cls, matrix: BlockedELL, bias=None, activation=None, input_shape=None,
                    **kwargs) -> "BlockSparseDense":
        """A built layer holding ``matrix`` (and ``bias``).

        Args:
            matrix: the packed ``[in, out]`` weight.
            bias: the bias as the replaced layer stores it, or None.
            activation: a Keras activation.
            input_shape: the input's shape (needed when ``input_axes`` > 1).
            **kwargs: as for the constructor (``layout``, ``input_axes``, ``output_shape``, ``name``).
        """
        layer = cls(matrix.shape[1], matrix.shape[0], matrix.block_shape, matrix.k, activation,
                    use_bias=bias is not None, bias_shape=None if bias is None else np.shape(bias), **kwargs)
        layer.build(tuple(input_shape) if input_shape is not None else (None, matrix.shape[0]))
        layer.set_packed(matrix, bias)
        return layer

    def set_packed(self, matrix: BlockedELL, bias=None) -> None:
        """Loads packed weights (their shapes must match the layer's)."""
        indices, values = matrix.gather_indices(), matrix.packed_values()
        if self.layout != "batch":
            indices = indices.reshape(-1)
        if self.layout == "feature":
            values = np.ascontiguousarray(np.transpose(values, (0, 2, 1)))
        self.gather_indices.assign(indices)
        self.values.assign(values)
        if self.use_bias:
            self.bias.assign(np.asarray(bias, dtype=self.values.dtype).reshape(self.bias_shape))

    def _batch_major(self, x2):
        """``x2 @ W`` for ``x2`` of shape ``[rows, in_features]``, gathering along the features."""
        ops = keras.ops
        gathered = ops.take(x2, self.gather_indices, axis=1)               # [B, ncb, k*rows]
        y = ops.matmul(ops.transpose(gathered, (1, 0, 2)), self.values)    # [ncb, B, cols]
        y = ops.reshape(ops.transpose(y, (1, 0, 2)), (-1, self.padded_units))
        return y if self.padded_units == self.units else y[:, : self.units]

    def _row_gather(self, xt):
        """``x @ W`` (``[rows, units]``) for ``xt = x^T`` of shape ``[in_features, rows]``: whole
        rows gathered as in the feature-major form, multiplied as in the batch-major one."""
        ops = keras.ops
        n_cols, kr, _ = self.values.shape
        gathered = ops.reshape(ops.take(xt, self.gather_indices, axis=0), (n_cols, kr, -1))  # [ncb, k*rows, B]
        y = ops.matmul(ops.transpose(gathered, (0, 2, 1)), self.values)                     # [ncb, B, cols]
        y = ops.reshape(ops.transpose(y, (1, 0, 2)), (-1, self.padded_units))
        return y if self.padded_units == self.units else y[:, : self.units]

    def _feature_major(self, xt):
        """``(x @ W)^T`` for ``xt = x^T`` of shape ``[in_features, rows]``: ``[units, rows]``; the
        bias and activation included when they can run transposed (``_transposable``)."""
        ops = keras.ops
        n_cols, bw, kr = self.values.shape
        rows = ops.take(xt, self.gather_indices, axis=0)                      # [ncb*k*rows, B]
        y = ops.reshape(ops.matmul(self.values, ops.reshape(rows, (n_cols, kr, -1))), (self.padded_units, -1))
        if self.padded_units != self.units:
            y = y[: self.units]
        if not self._transposable:
            return y
        if self.use_bias:
            y = y + ops.reshape(self.bias, (self.units, 1))
        return self.activation(y)

    @property
    def _transposable(self) -> bool:
        """Whether the bias (one value per unit) and the activation (elementwise) can be applied
        to the transposed ``[units, rows]`` product."""
        return math.prod(self.bias_shape) == self.units and elementwise(self.activation)

    def call(self, x):
        ops = keras.ops
        if self.input_layout == "feature":  # [in, rows] from a chained feature-major layer
            yt = self._feature_major(x)
            if self.output_layout == "feature":
                return yt
            return ops.reshape(ops.transpose(yt), (-1, *self.lead_shape, *self.out_shape))
        plain = len(x.shape) == 2 and self.input_axes == 1 and self.out_shape == (self.units,)
        x2 = x if plain else ops.reshape(x, (-1, self.in_features))
        if self.layout == "feature":
            yt = self._feature_major(ops.transpose(x2))
            if self.output_layout == "feature":
                return yt
            y = ops.transpose(yt)
        elif self.layout == "rows":
            y = self._row_gather(ops.transpose(x2))
        else:
            y = self._batch_major(x2)
        if not plain:
            lead = ops.shape(x)[: len(x.shape) - self.input_axes]
            y = ops.reshape(y, (*lead, *self.out_shape))
        if self.layout == "feature" and self._transposable:  # bias and activation were applied transposed
            return y
        if self.use_bias:
            y = y + self.bias
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        if self.output_layout == "feature":
            return (self.units, None)
        if self.input_layout == "feature":
            return (None, *self.lead_shape, *self.out_shape)
        return (*input_shape[: len(input_shape) - self.input_axes], *self.out_shape)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "in_features": self.in_features,
                "block_shape": list(self.block_shape), "blocks_per_column": self.blocks_per_column,
                "activation": keras.activations.serialize(self.activation), "use_bias": self.use_bias,
                "layout": self.layout, "input_axes": self.input_axes, "output_shape": list(self.out_shape),
                "bias_shape": list(self.bias_shape), "input_layout": self.input_layout,
                "output_layout": self.output_layout, "lead_shape": list(self.lead_shape)}


@keras.saving.register_keras_serializable(package="blockprune")
class ChannelGatherConv(keras.layers.Layer):
    """A convolution over the input channels each group of output channels keeps.

    Output channels come in ``groups`` groups of ``filters // groups``; group ``g`` reads only
    its ``k`` kept input channels (all kernel taps of each). The layer gathers those channels
    (``gather_indices``, ``groups * k`` of them, group after group) and runs one grouped
    convolution (``groups`` groups) with the kept kernel slices: stock ops that LiteRT
    (XNNPACK) and ONNX Runtime run as a single convolution.

    Args:
        rank: 1 or 2 (Conv1D, Conv2D).
        filters, kernel_size, strides, padding, dilation_rate, activation, use_bias: as the
            convolution it replaces (channels last).
        groups: groups of output channels (``filters // c`` for channel blocks of ``c``).
        channels_per_group: ``k``, input channels each group keeps.
        split: compute the groups as separate convolutions, concatenated (for ONNX: tf2onnx
            cannot convert the XLA-compiled grouped convolution Keras uses on TensorFlow).
        group_width: ``c``, output channels per group (default ``filters // groups``); when
            ``groups * c`` exceeds ``filters`` the last group is padded with zero filters.
    """

    def __init__(self, rank, filters, kernel_size, strides, padding, dilation_rate, groups, channels_per_group,
                 activation=None, use_bias=True, split=False, group_width=None, **kwargs):
        super().__init__(**kwargs)
        self.split = bool(split)
        self.rank = int(rank)
        if self.rank not in (1, 2):
            raise ValueError(f"Layer '{self.name}': rank={rank} must be 1 or 2")
        self.groups = int(groups)
        self.channels_per_group = int(channels_per_group)
        self.filters = int(filters)
        self.group_width = int(group_width or self.filters // self.groups)
        # equal groups: a last, narrower group of output channels is padded with zero filters
        padded = self.groups * self.group_width
        conv = keras.layers.Conv1D if self.rank == 1 else keras.layers.Conv2D
        self.conv = conv(padded, kernel_size, strides=strides, padding=padding, dilation_rate=dilation_rate,
                         groups=self.groups, activation=activation, use_bias=use_bias, name="grouped")

    def build(self, input_shape):
        self.gather_indices = self.add_weight(name="gather_indices", shape=(self.groups * self.channels_per_group,),
                                              dtype="int32", initializer="zeros", trainable=False)
        self.conv.build((*input_shape[:-1], self.groups * self.channels_per_group))
        self.conv.trainable = False

    def call(self, x):
        gathered = keras.ops.take(x, self.gather_indices, axis=-1)
        if not self.split:
            y = self.conv(gathered)
        else:
            ops, conv, k = keras.ops, self.conv, self.channels_per_group
            c = conv.filters // self.groups
            parts = [ops.conv(gathered[..., g * k:(g + 1) * k], conv.kernel[..., g * c:(g + 1) * c], conv.strides,
                              conv.padding, dilation_rate=conv.dilation_rate) for g in range(self.groups)]
            y = parts[0] if self.groups == 1 else ops.concatenate(parts, axis=-1)
            if conv.use_bias:
                y = y + conv.bias
            y = conv.activation(y) if conv.activation is not None else y
        return y if self.conv.filters == self.filters else y[..., : self.filters]

    def compute_output_shape(self, input_shape):
        shape = self.conv.compute_output_shape((*input_shape[:-1], self.groups * self.channels_per_group))
        return (*shape[:-1], self.filters)

    @classmethod
    def from_conv(cls, layer, indices: np.ndarray, kernel: np.ndarray, name: str | None = None,
                  split: bool = False) -> "ChannelGatherConv":
        """A built layer replacing the (built) convolution ``layer``.

        Args:
            layer: the Conv1D/Conv2D it replaces (for its configuration and bias).
            indices: ``[groups, k]`` kept input channels per group.
            kernel: ``[*taps, k, groups * c]``, the kept kernel slices (group ``g``'s filters read
                the ``k`` channels of ``indices[g]``; filters past ``layer.filters`` are zero).
        """
        groups, k = indices.shape
        new = cls(len(layer.kernel_size), layer.filters, layer.kernel_size, layer.strides, layer.padding,
                  layer.dilation_rate, groups, k, layer.activation, layer.use_bias, split, kernel.shape[-1] // groups,
                  name=name or layer.name)
        new.build((None,) * (len(layer.kernel_size) + 1) + (int(layer.kernel.shape[-2]),))
        new.gather_indices.assign(indices.reshape(-1).astype("int32"))
        new.conv.kernel.assign(kernel)
        if layer.use_bias:
            bias = layer.bias.numpy()
            new.conv.bias.assign(np.pad(bias, (0, new.conv.filters - len(bias))))
        return new

    def get_config(self):
        c = self.conv
        return {**super().get_config(), "rank": self.rank, "filters": self.filters, "kernel_size": list(c.kernel_size),
                "strides": list(c.strides), "padding": c.padding, "dilation_rate": list(c.dilation_rate),
                "groups": self.groups, "channels_per_group": self.channels_per_group,
                "activation": keras.activations.serialize(c.activation), "use_bias": c.use_bias, "split": self.split,
                "group_width": self.group_width}


@keras.saving.register_keras_serializable(package="blockprune")
class ChannelGatherDense(ChannelGatherConv):
    """A Dense layer in ``(1, c)`` blocks as ``ChannelGatherConv``: its input ``[..., in]`` is
    viewed as ``[rows, 1, in]`` and runs through the Gather and one grouped 1x1 convolution, a
    form whose full-integer int8 convolution XNNPACK runs (its int8 BATCH_MATMUL it does not)."""

    def __init__(self, filters, groups, channels_per_group, activation=None, use_bias=True, split=False,
                 group_width=None, **kwargs):
        for key in ("rank", "kernel_size", "strides", "padding", "dilation_rate"):
            kwargs.pop(key, None)  # fixed: a 1x1 Conv1D (get_config of the parent lists them)
        super().__init__(1, filters, 1, 1, "valid", 1, groups, channels_per_group, activation, use_bias, split,
                         group_width, **kwargs)

    def build(self, input_shape):
        super().build((None, 1, input_shape[-1]))

    def call(self, x):
        lead = tuple(-1 if d is None else int(d) for d in x.shape[1:-1])
        y = super().call(keras.ops.reshape(x, (-1, 1, x.shape[-1])))
        return keras.ops.reshape(y, (-1, *lead, self.filters))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    @classmethod
    def from_dense(cls, layer, indices: np.ndarray, kernel: np.ndarray, split: bool = False) -> "ChannelGatherDense":
        """A built layer replacing the (built) Dense ``layer``; ``indices`` and ``kernel`` (``[1, k,
        groups * c]``) as for ``ChannelGatherConv.from_conv``."""
        groups, k = indices.shape
        new = cls(layer.units, groups, k, layer.activation, layer.use_bias, split, kernel.shape[-1] // groups,
                  name=layer.name)
        new.build((None, int(layer.kernel.shape[0])))
        new.gather_indices.assign(indices.reshape(-1).astype("int32"))
        new.conv.kernel.assign(kernel)
        if layer.use_bias:
            bias = keras.ops.convert_to_numpy(layer.bias)
            new.conv.bias.assign(np.pad(bias, (0, new.conv.filters - len(bias))))
        return new


@keras.saving.register_keras_serializable(package="blockprune")
class FeatureMajorAttention(keras.layers.Layer):
    """Multi-head self-attention with feature-major block-sparse projections.

    Replaces a ``MultiHeadAttention`` called on one ``[batch, tokens, features]`` tensor (query,
    value and key alike, no mask) whose four projections are lowered feature-major: the input
    is transposed once to ``[features, batch * tokens]``; the query, key and value projections
    read and write that layout; attention runs per sample and head on ``[head_dim, tokens]``
    slices (``softmax(Q^T K / sqrt(key_dim))`` and ``V P^T`` as batched matmuls); the output
    projection reads the ``[heads * value_dim, batch * tokens]`` context and writes the model's
    own layout. The same function as the replaced layer at inference (dropout is off).

    Args:
        num_heads, key_dim, value_dim: as the replaced layer.
        tokens: the sequence length (static).
        query, key, value, output: the lowered projections (``BlockSparseDense``, feature-major;
            query/key/value with feature-major inputs and outputs, output with a feature-major
            input), or their serialized configs.
    """

    def __init__(self, num_heads, key_dim, value_dim, tokens, query, key, value, output, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.key_dim, self.value_dim, self.tokens = (int(num_heads), int(key_dim), int(value_dim),
                                                                     int(tokens))

        def layer(x):
            return x if isinstance(x, keras.layers.Layer) else keras.saving.deserialize_keras_object(x)

        self.query_dense, self.key_dense, self.value_dense, self.output_dense = map(layer, (query, key, value, output))

    def build(self, input_shape):
        for sub in (self.query_dense, self.key_dense, self.value_dense, self.output_dense):
            if not sub.built:
                sub.build((None, sub.in_features))

    def _heads(self, yt, dim):
        """``[heads * dim, batch * tokens]`` -> ``[batch, heads, dim, tokens]``."""
        ops = keras.ops
        return ops.transpose(ops.reshape(yt, (self.num_heads, dim, -1, self.tokens)), (2, 0, 1, 3))

    def call(self, query, value=None, key=None, training=None):
        ops = keras.ops
        xt = ops.transpose(ops.reshape(query, (-1, query.shape[-1])))              # [features, batch*tokens]
        q = self._heads(self.query_dense(xt), self.key_dim) * (1.0 / math.sqrt(self.key_dim))
        k = self._heads(self.key_dense(xt), self.key_dim)
        v = self._heads(self.value_dense(xt), self.value_dim)
        probs = ops.softmax(ops.matmul(ops.swapaxes(q, -1, -2), k), axis=-1)        # [batch, heads, tq, tk]
        context = ops.matmul(v, ops.swapaxes(probs, -1, -2))                       # [batch, heads, dv, tq]
        context = ops.reshape(ops.transpose(context, (1, 2, 0, 3)), (self.num_heads * self.value_dim, -1))
        return self.output_dense(context)

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        return (query_shape[0], self.tokens, *self.output_dense.out_shape)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "value_dim": self.value_dim, "tokens": self.tokens,
                **{name: keras.saving.serialize_keras_object(getattr(self, f"{name}_dense"))
                   for name in ("query", "key", "value", "output")}}

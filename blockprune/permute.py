"""Channel permutation before masking: regroup a layer's output channels so that the ``c``
outputs of each wide block (or channel block of a convolution) share their important inputs, at
no cost in the exported model.

A wide block ``(1, c)`` keeps or drops one input row for ``c`` consecutive outputs at once. When
those outputs want different inputs, a block-sparse mask throws away weights that a finer block
would keep; a convolution's channel block (one input channel, all its taps, by ``c`` outputs)
likewise. Which outputs sit next to each other is free to choose: permuting the output channels
of a layer (its kernel's last axis and its bias) and the input channels of the one Dense layer or
convolution that reads it (through element-wise, batch-normalization and pooling layers, whose
per-channel weights follow) gives the same function. The permuted model is an ordinary Keras
model with the same layers; nothing is added to the export.

``output_grouping`` finds the permutation by alternating between (a) each group's kept rows at
the planned sparsity (the top rows by the group's summed magnitude, as the balanced mask keeps
them) and (b) a capacity-constrained greedy assignment of every output to the group whose kept
rows hold most of its magnitude; it stops when the retained magnitude stops growing. This is the
balanced k-means of channel permutation for N:M sparsity, with the block mask as the centroid.

This module needs Keras for ``permute_channels`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["output_grouping", "retained", "permute_channels", "Permutation"]

#: Layers between a permuted layer and its reader that act on each channel alone.
_ELEMENTWISE = ("Activation", "Dropout", "ReLU", "LeakyReLU", "ELU", "GaussianNoise", "GaussianDropout",
                "AlphaDropout", "Identity")


def _kept_rows(magnitude: np.ndarray, groups: np.ndarray, n_groups: int, keep: int) -> np.ndarray:
    """``[in, n_groups]`` 0/1: the ``keep`` rows of largest summed magnitude in each group."""
    sums = np.zeros((magnitude.shape[0], n_groups))
    np.add.at(sums.T, groups, magnitude.T)
    kept = np.zeros_like(sums)
    top = np.argpartition(-sums, keep - 1, axis=0)[:keep]
    np.put_along_axis(kept, top, 1.0, axis=0)
    return kept


def retained(magnitude: np.ndarray, groups: np.ndarray, cols: int, keep: int) -> float:
    """Sum of ``|w|`` a balanced ``(1, cols)`` mask keeping ``keep`` rows per group retains,
    outputs grouped by ``groups`` (``groups[j]`` is output ``j``'s group)."""
    n_groups = magnitude.shape[1] // cols
    kept = _kept_rows(magnitude, groups, n_groups, keep)
    return float(np.sum(magnitude * kept[:, groups]))


def _assign(gain: np.ndarray, cols: int) -> np.ndarray:
    """Each output to a group, ``cols`` per group, greedily by ``gain[out, group]``."""
    n_out, n_groups = gain.shape
    groups = np.full(n_out, -1)
    room = np.full(n_groups, cols)
    for flat in np.argsort(-gain, axis=None, kind="stable"):
        j, g = divmod(int(flat), n_groups)
        if groups[j] < 0 and room[g]:
            groups[j] = g
            room[g] -= 1
    return groups


def output_grouping(kernel: np.ndarray, cols: int, sparsity: float, iterations: int = 20) -> tuple[np.ndarray, float]:
    """An order of the outputs of ``kernel`` (``[in, out]``) for balanced ``(1, cols)`` blocks.

    Returns:
        ``(order, gain)``: ``kernel[:, order]`` is the regrouped kernel (group ``g`` is columns
        ``g * cols`` to ``(g + 1) * cols``), and ``gain`` the retained magnitude at ``sparsity``
        against the original order (1.0: no better order found; ``order`` is then the identity).
    """
    magnitude = np.abs(np.asarray(kernel, dtype=np.float64))
    n_in, n_out = magnitude.shape
    if cols <= 1 or n_out % cols or n_out == cols:
        return np.arange(n_out), 1.0
    keep = max(1, int(round(n_in * (1.0 - sparsity))))
    n_groups = n_out // cols
    groups = np.arange(n_out) // cols
    start = best = retained(magnitude, groups, cols, keep)
    best_groups = groups
    for _ in range(iterations):
        kept = _kept_rows(magnitude, groups, n_groups, keep)
        groups = _assign(magnitude.T @ kept, cols)
        score = retained(magnitude, groups, cols, keep)
        if score <= best * (1 + 1e-6):
            break
        best, best_groups = score, groups
    if best <= start:
        return np.arange(n_out), 1.0
    order = np.argsort(best_groups, kind="stable")
    return order, best / start


@dataclass(frozen=True)
class Permutation:
    """One layer whose outputs were regrouped.

    Attributes:
        layer: the permuted layer; ``reader``: the layer whose input channels follow.
        gain: retained magnitude at the planned sparsity against the original order.
    """

    layer: str
    reader: str
    gain: float


def _is_plain_conv(layer) -> bool:
    """A Conv1D/Conv2D with one group (depthwise, separable and transposed convolutions are not
    subclasses of them in Keras 3)."""
    import keras

    return isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)) and getattr(layer, "groups", 1) == 1


def _path_to_reader(model, layer):
    """``(reader, between)``: the Dense or convolution that alone reads ``layer``'s output, through
    layers that act on each channel alone (``between``: element-wise layers, batch normalization,
    pooling), or ``(None, [])``."""
    import keras

    from .kerasgraph import sole_consumer

    between = []
    node = sole_consumer(model, layer)
    while node is not None:
        if type(node) is keras.layers.Dense or _is_plain_conv(node):
            return node, between
        per_channel = (type(node).__name__ in _ELEMENTWISE or "Pooling" in type(node).__name__
                       or (isinstance(node, keras.layers.BatchNormalization) and node.axis in (-1, len(node.input.shape) - 1)))
        if not per_channel:
            return None, []
        between.append(node)
        node = sole_consumer(model, node)
    return None, []


def _channel_magnitude(layer, block) -> np.ndarray | None:
    """``[in channels, out channels]`` of summed ``|w|`` for a layer pruned in ``block`` when the
    block is one input channel (all its taps) by several outputs, else None."""
    import keras

    kernel = np.abs(layer.kernel.numpy())
    taps = int(np.prod(kernel.shape[:-2])) if kernel.ndim > 2 else 1
    if block[1] < 2 or block[0] != taps:
        return None
    if type(layer) is keras.layers.Dense:
        return kernel
    return kernel.reshape(-1, *kernel.shape[-2:]).sum(axis=0)


def permute_channels(model, plan, min_gain: float = 1.001) -> list[Permutation]:
    """Regroups, in place, the output channels of every Dense layer pruned in ``(1, c)`` blocks
    and every convolution pruned in channel blocks (``c > 1``) whose output one Dense layer or
    convolution reads (through element-wise, batch-normalization and pooling layers only), where
    the regrouping retains at least ``min_gain`` times the magnitude. The kernel's output axis and
    bias, every batch normalization's per-channel weights on the way, and the reader's input axis
    are permuted alike, so the model computes the same function (up to float rounding).

    Args:
        model: a functional or Sequential Keras model (its weights are changed).
        plan: the ``SparsityPlan`` it will be pruned to.
        min_gain: the least gain worth a permutation.

    Returns:
        One ``Permutation`` per regrouped layer.
    """
    import keras

    done = []
    for lp in plan.pruned_layers:
        if lp.weight != "kernel" or "/" in lp.layer or lp.block_shape is None:
            continue
        try:
            layer = model.get_layer(lp.layer)
        except ValueError:
            continue
        if not (type(layer) is keras.layers.Dense or _is_plain_conv(layer)):
            continue
        magnitude = _channel_magnitude(layer, lp.block_shape)
        reader, between = _path_to_reader(model, layer) if magnitude is not None else (None, [])
        if reader is None:
            continue
        order, gain = output_grouping(magnitude, lp.block_shape[1], lp.sparsity)
        if gain < min_gain:
            continue
        layer.kernel.assign(layer.kernel.numpy()[..., order])
        if layer.use_bias:
            layer.bias.assign(layer.bias.numpy()[order])
        for node in between:
            for w in node.weights:  # batch normalization: gamma, beta, moving mean and variance
                w.assign(w.numpy()[order])
        reader.kernel.assign(np.take(reader.kernel.numpy(), order, axis=-2))
        done.append(Permutation(layer.name, reader.name, gain))
    return done

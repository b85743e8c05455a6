"""Unread outputs: a layer that runs dense and whose output is read only through the gather of one
lowered layer computes only the features that gather reads.

A lowered layer gathers its kept input rows (``BlockSparseDense``) or channels
(``ChannelGatherConv``, ``ChannelGatherDense``); at 90% sparsity in wide blocks the union of
those rows is often a fraction of the input (the default digits MLP's second hidden layer reads
289 of its 1024 inputs). When the layer before it runs dense (a narrow first layer, pruned less
or not at all), its other outputs are computed and never read. ``narrow`` drops them: the dense
producer keeps only the read output columns (kernel, bias) and the consumer's gather indices are
renumbered. The model computes the same function (the dropped outputs went through an elementwise
activation into nothing), with less work in the producer and no new op.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GATHERING", "Narrowed", "narrow", "narrowed_producer", "producer"]

#: Lowerings whose layers read their input through a gather over its features.
GATHERING = ("gather-matmul", "channel-gather")


@dataclass(frozen=True)
class Narrowed:
    """A dense layer that computes only ``kept`` of its ``outputs`` features: the ones its
    reader ``reader`` (a lowered layer) gathers."""

    name: str
    kept: int
    outputs: int
    reader: str

    def describe(self) -> str:
        return (f"computes {self.kept} of its {self.outputs} outputs: the ones '{self.reader}' reads "
                "(the others are read by no kept weight)")


def producer(layer) -> bool:
    """A plain Dense, or a channels-last, ungrouped Conv1D/Conv2D, with an activation that acts
    on each value alone: slicing its output features slices its kernel and bias."""
    import keras

    from .layers import elementwise

    if type(layer) is keras.layers.Dense:
        return elementwise(layer.activation)
    if type(layer) in (keras.layers.Conv1D, keras.layers.Conv2D):
        return layer.data_format == "channels_last" and layer.groups == 1 and elementwise(layer.activation)
    return False


def _gathered(layer) -> np.ndarray | None:
    """The input features ``layer`` reads, when it reads its input only through one gather on the
    last axis (sorted, unique); else None."""
    from .layers import BlockSparseDense, ChannelGatherConv

    if isinstance(layer, BlockSparseDense):
        if layer.input_layout != "batch" or layer.input_axes != 1 or layer.block_shape[0] != 1:
            return None
    elif not isinstance(layer, ChannelGatherConv):  # ChannelGatherDense too
        return None
    return np.unique(_numpy(layer.gather_indices))


def _numpy(variable) -> np.ndarray:
    """A variable's value as a NumPy array."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable))


def narrowed_producer(layer, kept: np.ndarray, input_shape):
    """A built copy of the Dense/Conv ``layer`` with only output features ``kept``."""
    key = "units" if "units" in layer.get_config() else "filters"
    new = type(layer).from_config({**layer.get_config(), key: len(kept)})
    new.build(input_shape)
    weights = [_numpy(layer.kernel)[..., kept]]
    if layer.use_bias:
        weights.append(_numpy(layer.bias)[kept])
    new.set_weights(weights)
    return new


def _renumber_reader(layer, kept: np.ndarray, input_shape):
    """A built copy of the lowered ``layer`` reading only input features ``kept`` (its gather
    indices renumbered to positions in ``kept``)."""
    from .layers import BlockSparseDense

    config = layer.get_config()
    if isinstance(layer, BlockSparseDense):
        config["in_features"] = len(kept)
    new = type(layer).from_config(config)
    new.build((*input_shape[:-1], len(kept)))
    new.set_weights(layer.get_weights())
    indices = _numpy(layer.gather_indices)
    new.gather_indices.assign(np.searchsorted(kept, indices).astype("int32"))
    return new


def narrow(model) -> tuple[object, list[Narrowed]]:
    """Drops the outputs of dense layers that the lowered layer reading them does not gather.

    Args:
        model: a lowered functional or Sequential model (``blockprune.lower.lower``'s result).

    Returns:
        ``(model, [Narrowed, ...])``: a new model computing the same function, or ``model``
        itself and ``[]`` when no layer can be narrowed.
    """
    from ..kerasgraph import layer_paths, rewrap, sole_consumer

    paths = layer_paths(model)
    swaps, records = {}, []
    for layer in model.layers:
        reader = sole_consumer(model, layer) if producer(layer) else None
        kept = _gathered(reader) if reader is not None else None
        if kept is None or len(kept) == layer.kernel.shape[-1]:
            continue
        width = int(layer.kernel.shape[-1])
        swaps[id(layer)] = narrowed_producer(layer, kept, _input_shape(model, layer))
        swaps[id(reader)] = _renumber_reader(reader, kept, _input_shape(model, reader))
        records.append(Narrowed(paths[id(layer)], len(kept), width, paths[id(reader)]))
    if not records:
        return model, []
    return rewrap(model, lambda layer, path: swaps.get(id(layer), layer)), records


def _input_shape(model, layer) -> tuple:
    """The shape of ``layer``'s (one) input in ``model``."""
    from ..kerasgraph import node_of

    return tuple(node_of(model, layer).input_tensors[0].shape)

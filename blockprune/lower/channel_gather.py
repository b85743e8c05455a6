"""The channel-gather lowering: a convolution whose kept weights come in channel blocks (one input
channel with all its kernel taps, times ``c`` consecutive output channels; as many kept in every
group of ``c`` outputs) becomes a Gather over the input channels followed by one grouped
convolution with ``cout / c`` groups (``blockprune.lower.layers.ChannelGatherConv``). LiteRT
converts it to one CONV_2D that XNNPACK runs; ONNX has ``Conv(group=G)``.

The strides, padding and dilation of the convolution are kept as they are. A 1x1 convolution's
channel blocks are its ``(1, c)`` blocks, so this is also a second lowering of 1x1 convolutions
beside gather-matmul (docs/DESIGN.md, section 4, has the measurements), and a Dense layer in
``(1, c)`` blocks can run as a grouped 1x1 convolution too (``ChannelGatherDense``), a candidate
of .tflite files with int8 weights only: there XNNPACK runs the int8 convolution but not
gather-matmul's int8 BATCH_MATMUL, and the convolution won (MLP 2048 at 90%, (1, 64): 17 against
19-29 us per layer at batch 1, 113 against 154 us at batch 8); in float32 it tied or lost, and in
ONNX its split convolutions lost to gather-matmul in every probe.
"""

from __future__ import annotations

import numpy as np

from ..formats import BlockedELL
from .base import Lowering

__all__ = ["ChannelGather"]


class ChannelGather(Lowering):
    """Conv1D/Conv2D (channels last, ungrouped) in channel blocks -> ``ChannelGatherConv``."""

    name = "channel-gather"
    kinds = ("conv", "conv1x1", "dense")
    formats = ("tflite", "onnx")
    balanced = True
    variants = ("grouped", "split")
    summary = "Gather over input channels -> grouped convolution (Conv1D/Conv2D in channel blocks, Dense in (1, c))"

    def variants_for(self, fmt: str, ws=None, quantized: bool = False) -> tuple[str, ...]:
        if ws is not None and ws.kind == "dense":
            return ("grouped",) if fmt == "tflite" and quantized else ()
        # tf2onnx cannot convert the XLA-compiled grouped convolution Keras emits on TensorFlow.
        return ("split",) if fmt == "onnx" else ("grouped",)

    def handles(self, ws) -> bool:
        if not super().handles(ws) or ws.view is None:
            return False
        return ws.block_shape[0] == ws.view.taps and (ws.view.is_channel_major or ws.view.taps == 1)

    def why_not(self, layer) -> str | None:
        import keras

        if isinstance(layer, keras.layers.Dense):
            return None
        if not isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)) or isinstance(
                layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose)):
            return f"a {type(layer).__name__} (only Dense, Conv1D and Conv2D have a grouped form here)"
        if layer.data_format != "channels_last":
            return "a channels_first convolution"
        if getattr(layer, "groups", 1) != 1:
            return f"an already grouped convolution (groups={layer.groups})"
        return None

    def rewrite(self, layer, ws, variant: str = ""):
        import keras

        from .layers import ChannelGatherConv, ChannelGatherDense

        if isinstance(layer, keras.layers.Dense):
            packed = BlockedELL.from_dense(ws.matrix, ws.block_shape)  # [groups, k, 1, c]
            groups, k, _, c = packed.data.shape
            kernel = np.transpose(packed.data, (2, 1, 0, 3)).reshape(1, k, groups * c)
            return ChannelGatherDense.from_dense(layer, packed.block_rows.astype(np.int64), kernel,
                                                 split=variant == "split")
        taps_shape = tuple(int(d) for d in layer.kernel.shape[:-2])
        packed = BlockedELL.from_dense(ws.matrix, ws.block_shape)      # block rows = input channels
        groups, k, taps, c = packed.data.shape
        # data[g, j, t, o] is tap t of kept channel j of group g, output o of the group.
        kernel = np.transpose(packed.data, (2, 1, 0, 3)).reshape(*taps_shape, k, groups * c)
        return ChannelGatherConv.from_conv(layer, packed.block_rows.astype(np.int64), kernel, split=variant == "split")

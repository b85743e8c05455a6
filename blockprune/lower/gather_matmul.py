"""The gather-matmul lowering: a Dense layer or 1x1 convolution with balanced block sparsity
becomes standard ops that stock TFLite (XNNPACK) and ONNX Runtime run fast at any batch size::

    Gather(x, cols[ncb, k*rows], axis=-1)   -> [B, ncb, k*rows]
    Transpose                               -> [ncb, B, k*rows]
    MatMul with packed W[ncb, k*rows, cols] -> [ncb, B, cols]
    Transpose, Reshape                      -> [B, out]

``blockprune.lower.layers.BlockSparseDense`` holds the packed blocked-ELL weights (see docs/DESIGN.md, "Lowerings").
"""

from __future__ import annotations

from ..formats import BlockedELL
from .base import Lowering

__all__ = ["GatherMatmul"]


class GatherMatmul(Lowering):
    """Dense and stride-1 channels-last 1x1 convolutions -> ``BlockSparseDense``."""

    name = "gather-matmul"
    kinds = ("dense", "conv1x1")
    formats = ("tflite", "onnx")
    balanced = True
    summary = "Gather -> BatchMatMul -> Reshape over blocked-ELL weights (Dense, 1x1 conv)"

    def why_not(self, layer) -> str | None:
        import keras

        if isinstance(layer, keras.layers.Dense):
            return None
        if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
            if layer.data_format != "channels_last":
                return "a channels_first convolution"
            if any(s != 1 for s in layer.strides):
                return f"a strided convolution (strides={layer.strides})"
            return None
        return f"a {type(layer).__name__}"

    def rewrite(self, layer, ws):
        from .layers import BlockSparseDense

        matrix = BlockedELL.from_dense(ws.matrix, ws.block_shape)
        bias = layer.bias.numpy() if layer.use_bias else None
        return BlockSparseDense.from_packed(matrix, bias, layer.activation, name=layer.name)

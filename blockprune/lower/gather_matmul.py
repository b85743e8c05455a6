"""The gather-matmul lowering: a Dense layer, 1x1 convolution or EinsumDense (MultiHeadAttention's
projections included) with block sparsity becomes standard ops that stock LiteRT (XNNPACK),
ONNX Runtime and OpenVINO run fast at any batch size. Two layouts (docs/DESIGN.md, section 4):

- ``batch`` (batch-major)::

      Gather(x, cols[ncb, k*rows], axis=-1)   -> [B, ncb, k*rows]
      Transpose                               -> [ncb, B, k*rows]
      MatMul with packed W[ncb, k*rows, cols] -> [ncb, B, cols]
      Transpose, Reshape                      -> [B, out]

- ``feature`` (feature-major)::

      Transpose x                             -> [in, B]
      Gather(rows, axis=0), Reshape           -> [ncb, k*rows, B]
      MatMul with W^T[ncb, cols, k*rows]      -> [ncb, cols, B]
      Reshape, Transpose                      -> [B, out]

  Gathering whole rows is a memory copy, and the matmul's long side is the block width, so
  this layout wins when many rows share the weights (batches, tokens) and loses at batch 1
  (XNNPACK's batch matmul is slow with a last dimension of 1).

- ``rows`` (row-gather; ``.tflite`` files only)::

      Transpose x                             -> [in, B]
      Gather(rows, axis=0), Reshape           -> [ncb, k*rows, B]
      Transpose                               -> [ncb, B, k*rows]
      MatMul with packed W[ncb, k*rows, cols] -> [ncb, B, cols]
      Transpose, Reshape                      -> [B, out]

  TFLite's GATHER copies one slice per index outside XNNPACK, on one thread: along the last axis
  a slice is one float, so at batch 8 the batch-major gather of a 2048-wide layer at 90% took
  161 us against its matmul's 68 us (2 threads). This form gathers whole rows (19 us), as the
  feature-major one does, and keeps the batch-major matmul, which XNNPACK ran faster than the
  feature-major one (68 against 109 us).

``blockprune.lower.layers.BlockSparseDense`` holds the packed blocked-ELL weights.
"""

from __future__ import annotations

from ..formats import BlockedELL
from ..views import einsum_matmul_form
from .base import Lowering

__all__ = ["GatherMatmul"]


class GatherMatmul(Lowering):
    """Dense, stride-1 channels-last 1x1 convolutions and EinsumDense -> ``BlockSparseDense``."""

    name = "gather-matmul"
    kinds = ("dense", "conv1x1", "einsum_dense")
    formats = ("tflite", "onnx")
    balanced = True
    variants = ("batch", "feature", "rows")
    summary = "Gather -> BatchMatMul -> Reshape over blocked-ELL weights (Dense, 1x1 conv, EinsumDense)"

    def variants_for(self, fmt: str, ws=None, quantized: bool = False) -> tuple[str, ...]:
        # Row-gather fixes TFLite's GATHER. Two 2048-wide layers at 90%, one A/B run: LiteRT batch 8
        # 582 -> 315 us (1 thread), 570 -> 232 us (2 threads) against batch-major; in ONNX Runtime
        # (its files gather the last axis with GatherElements) and OpenVINO it tied or lost
        # (OpenVINO batch 8, 2 threads: 283 -> 455 us), so their files do not probe it.
        return self.variants if fmt == "tflite" else self.variants[:2]

    def handles(self, ws) -> bool:
        return super().handles(ws) and ws.view == ws.site.view  # a channel-major view is channel-gather's

    def why_not(self, layer) -> str | None:
        import keras

        if isinstance(layer, keras.layers.Dense):
            return None
        if isinstance(layer, keras.layers.EinsumDense):
            try:
                einsum_matmul_form(layer.equation, layer.kernel.shape)
            except ValueError as e:
                return str(e)
            return None
        if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
            if layer.data_format != "channels_last":
                return "a channels_first convolution"
            if any(s != 1 for s in layer.strides):
                return f"a strided convolution (strides={layer.strides})"
            return None
        return f"a {type(layer).__name__}"

    def rewrite(self, layer, ws, variant: str = "batch"):
        import keras

        from .layers import BlockSparseDense

        matrix = BlockedELL.from_dense(ws.matrix, ws.block_shape)
        bias = layer.bias.numpy() if layer.bias is not None else None
        if isinstance(layer, keras.layers.EinsumDense):
            input_axes, output_shape = einsum_matmul_form(layer.equation, layer.kernel.shape)
            return BlockSparseDense.from_packed(matrix, bias, layer.activation, name=layer.name, layout=variant,
                                                input_axes=input_axes, output_shape=output_shape,
                                                input_shape=(None, *self._trailing(layer, input_axes)))
        return BlockSparseDense.from_packed(matrix, bias, layer.activation, name=layer.name, layout=variant)

    @staticmethod
    def _trailing(layer, input_axes: int) -> tuple[int, ...]:
        """The contracted input axes' sizes of a built EinsumDense (the kernel's in-axes, in order)."""
        from ..views import einsum_view

        view = einsum_view(layer.equation, layer.kernel.shape)
        return tuple(int(layer.kernel.shape[a]) for a in view.perm[: view.n_in_axes])

"""Reference NumPy kernels for ``y = x @ W`` with ``W`` packed block-sparse.

They are written for clarity, not speed: they are the oracle that the tests of the packed
formats (against dense matmul and scipy) and of the lowered Keras layers compare against.
Exported files are checked against the Keras model itself, by running them in their runtime.

Example:
    >>> import numpy as np
    >>> from blockprune.formats import BSR
    >>> w = np.eye(4, dtype=np.float32); m = BSR.from_dense(w, (2, 2))
    >>> x = np.ones((1, 4), np.float32)
    >>> bsr_matmul(x, m.shape, m.data, m.indices, m.indptr).tolist()
    [[1.0, 1.0, 1.0, 1.0]]
"""

from __future__ import annotations

import numpy as np

__all__ = ["bsr_matmul", "ell_matmul", "channel_block_conv"]


def bsr_matmul(x: np.ndarray, shape: tuple[int, int], data: np.ndarray, indices: np.ndarray,
               indptr: np.ndarray) -> np.ndarray:
    """``x @ W`` for ``W`` in BSR over its ``[in, out]`` view.

    Args:
        x: ``[batch, in]``.
        shape: ``(in, out)`` of ``W``.
        data: ``[nnzb, rows, cols]`` blocks; ``indices``: block-column of each;
            ``indptr``: ``[in // rows + 1]`` offsets per block row.

    Returns:
        ``[batch, out]`` in ``x``'s dtype promoted with ``data``'s.
    """
    _, bh, bw = data.shape
    n_in, n_out = shape
    if x.shape[-1] != n_in:
        raise ValueError(f"x has {x.shape[-1]} features, W has {n_in} inputs")
    y = np.zeros((x.shape[0], n_out), dtype=np.result_type(x, data))
    ptr = indptr.astype(np.int64)
    for r in range(len(ptr) - 1):
        xr = x[:, r * bh:(r + 1) * bh]
        for b in range(ptr[r], ptr[r + 1]):
            c = int(indices[b])
            y[:, c * bw:(c + 1) * bw] += xr @ data[b]
    return y


def ell_matmul(x: np.ndarray, shape: tuple[int, int], block_rows: np.ndarray, data: np.ndarray) -> np.ndarray:
    """``x @ W`` for ``W`` in blocked-ELL, as the gather-matmul lowering computes it:
    gather the input features each block-column reads, one batched matmul, reshape.

    Args:
        x: ``[batch, in]``.
        shape: ``(in, out)`` of ``W``.
        block_rows: ``[ncb, k]`` kept block rows per block-column.
        data: ``[ncb, k, rows, cols]`` kept blocks (``ncb = ceil(out / cols)``).

    Returns:
        ``[batch, out]``.
    """
    n_cols, k, bh, bw = data.shape
    if x.shape[-1] != shape[0]:
        raise ValueError(f"x has {x.shape[-1]} features, W has {shape[0]} inputs")
    cols = (block_rows.astype(np.int64)[:, :, None] * bh + np.arange(bh)).reshape(n_cols, k * bh)
    gathered = np.transpose(x[:, cols], (1, 0, 2))          # [ncb, batch, k * rows]
    y = gathered @ data.reshape(n_cols, k * bh, bw)          # [ncb, batch, cols]
    # a last, narrower block-column is stored padded to the block width
    return np.transpose(y, (1, 0, 2)).reshape(x.shape[0], n_cols * bw)[:, : shape[1]]


def _same_padding(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def channel_block_conv(x: np.ndarray, block_rows: np.ndarray, data: np.ndarray, kernel_size, strides=None,
                       padding: str = "valid", dilation=None) -> np.ndarray:
    """A channels-last convolution (1-D or 2-D) whose kernel is packed in channel blocks.

    Group ``g`` of ``c`` output channels reads only its kept input channels ``block_rows[g]``,
    all taps of each. Computed tap by tap over the kept channels, with TensorFlow's padding rules.

    Args:
        x: ``[batch, *spatial, cin]``.
        block_rows: ``[groups, k]`` kept input channels per group of output channels.
        data: ``[groups, k, taps, c]``: tap ``t`` (row-major over ``kernel_size``) of kept channel
            ``j`` for the group's ``c`` outputs (the blocked-ELL data of the channel-major view).
        kernel_size, strides, dilation: per spatial axis; ``padding``: ``"valid"`` or ``"same"``.

    Returns:
        ``[batch, *out_spatial, groups * c]``.
    """
    kernel_size = tuple(kernel_size)
    rank = len(kernel_size)
    strides = tuple(strides or (1,) * rank)
    dilation = tuple(dilation or (1,) * rank)
    if rank == 1:  # a 1-D convolution is a 2-D one over a width of 1
        y = channel_block_conv(x[:, :, None, :], block_rows, data, (kernel_size[0], 1), (strides[0], 1), padding,
                               (dilation[0], 1))
        return y[:, :, 0, :]
    groups, k, taps, c = data.shape
    if padding == "same":
        pads = [_same_padding(x.shape[1 + a], kernel_size[a], strides[a], dilation[a]) for a in range(2)]
        x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
    out_hw = [(x.shape[1 + a] - (kernel_size[a] - 1) * dilation[a] - 1) // strides[a] + 1 for a in range(2)]
    y = np.zeros((x.shape[0], *out_hw, groups * c), dtype=np.result_type(x, data))
    for g in range(groups):
        xg = x[..., block_rows[g].astype(np.int64)]                      # [B, H, W, k]
        for t in range(taps):
            ti, tj = divmod(t, kernel_size[1])
            window = xg[:, ti * dilation[0]: ti * dilation[0] + (out_hw[0] - 1) * strides[0] + 1: strides[0],
                        tj * dilation[1]: tj * dilation[1] + (out_hw[1] - 1) * strides[1] + 1: strides[1], :]
            y[..., g * c:(g + 1) * c] += window @ data[g, :, t, :]
    return y

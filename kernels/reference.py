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

__all__ = ["bsr_matmul", "ell_matmul"]


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
        block_rows: ``[out // cols, k]`` kept block rows per block-column.
        data: ``[out // cols, k, rows, cols]`` kept blocks.

    Returns:
        ``[batch, out]``.
    """
    n_cols, k, bh, bw = data.shape
    if x.shape[-1] != shape[0]:
        raise ValueError(f"x has {x.shape[-1]} features, W has {shape[0]} inputs")
    cols = (block_rows.astype(np.int64)[:, :, None] * bh + np.arange(bh)).reshape(n_cols, k * bh)
    gathered = np.transpose(x[:, cols], (1, 0, 2))          # [ncb, batch, k * rows]
    y = gathered @ data.reshape(n_cols, k * bh, bw)          # [ncb, batch, cols]
    return np.transpose(y, (1, 0, 2)).reshape(x.shape[0], shape[1])

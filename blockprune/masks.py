"""Block-mask math: pure NumPy functions over the 2-D ``[in, out]`` view of a weight.

A weight's view is cut into ``block_shape = (rows, cols)`` blocks; each block gets a score
(``AVG`` or ``MAX`` of ``|w|`` over the block, or ``L2``, its root mean square); the
lowest-scoring blocks are zeroed so that exactly ``round(sparsity * n_blocks)`` blocks are
zero. The *balanced* variant zeroes ``round(sparsity * n_block_rows)`` blocks in every
block-column, so that every block-column keeps the same number of blocks (what the
gather-matmul lowering needs, docs/DESIGN.md).

Ties are broken deterministically: among blocks with equal scores, the one that comes first
(row-major over the block grid; top to bottom within a block-column when balanced) is kept.
This module does not import TensorFlow.

Example:
    >>> import numpy as np
    >>> w = np.array([[1., 1., 0., 0.],
    ...               [1., 1., 0., 0.],
    ...               [0., 0., 3., 3.],
    ...               [0., 0., 3., 3.]])
    >>> block_mask(w, (2, 2), 0.5).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
"""

from __future__ import annotations

import numpy as np

from .checks import check_blocks_fit, kept_blocks, n_block_cols

__all__ = ["POOLING_TYPES", "check_pooling_type", "block_scores", "block_mask", "grid_mask", "kept_block_grid", "block_structure", "reachable_sparsity"]

POOLING_TYPES = ("AVG", "MAX", "L2")


def check_pooling_type(pooling: str, where: str = "") -> None:
    """Raises a ValueError naming ``pooling`` (after ``where``, e.g. ``"Layer 'dense': "``) unless
    it is one of ``POOLING_TYPES``."""
    if pooling not in POOLING_TYPES:
        raise ValueError(f"{where}block_pooling_type={pooling!r} is not one of {POOLING_TYPES}")


def block_scores(weight2d: np.ndarray, block_shape: tuple[int, int], pooling: str = "AVG") -> np.ndarray:
    """Pools ``|weight2d|`` over each block.

    Args:
        weight2d: the ``[in, out]`` view.
        block_shape: ``(rows, cols)``; must fit the view (``blockprune.checks.fits``).
        pooling: ``"AVG"`` (mean), ``"MAX"``, or ``"L2"`` (root mean square: the block's L2
            norm over the square root of its size, which ranks a block with a few large weights
            above one of many small ones with the same mean).

    Returns:
        Scores of shape ``[in // rows, ceil(out / cols)]`` (float64).
    """
    check_pooling_type(pooling)
    w = np.abs(np.asarray(weight2d, dtype=np.float64))
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D [in, out] view, got shape {w.shape}")
    check_blocks_fit(w.shape, block_shape)
    bh, bw = block_shape
    grid = _blocks(w, block_shape)
    if pooling == "MAX":
        return grid.max(axis=(1, 3))
    # the mean over the block's real weights (a last, narrower block-column is padded)
    size = _blocks(np.ones(w.shape), block_shape).sum(axis=(1, 3))
    if pooling == "L2":
        return np.sqrt((grid * grid).sum(axis=(1, 3)) / size)
    return grid.sum(axis=(1, 3)) / size


def _blocks(w: np.ndarray, block_shape) -> np.ndarray:
    """``w`` as ``[block rows, rows, block cols, cols]``, its last block-column padded with zeros."""
    bh, bw = block_shape
    pad = n_block_cols(w.shape[1], bw) * bw - w.shape[1]
    if pad:
        w = np.pad(w, ((0, 0), (0, pad)))
    return w.reshape(w.shape[0] // bh, bh, w.shape[1] // bw, bw)


def _keep_first(scores: np.ndarray, n_keep: int) -> np.ndarray:
    """Boolean mask of the ``n_keep`` highest of the 1-D, non-negative ``scores``; equal scores:
    first wins (the result of a stable sort of the negated scores).

    Linear time: a partition finds the ``n_keep``-th highest score and ties at it are taken in
    index order. Blocks pruned earlier all score 0, and a partition slows down on so many equal
    values, so only the positive scores are partitioned.
    """
    n = scores.shape[0]
    if n_keep <= 0:
        return np.zeros(n, dtype=bool)
    if n_keep >= n:
        return np.ones(n, dtype=bool)
    positive = scores > 0
    n_positive = int(positive.sum())
    if n_keep <= n_positive:
        values = scores[positive]
        cut = np.partition(values, n_positive - n_keep)[n_positive - n_keep]
    else:
        cut = 0.0
    above = scores > cut
    tied = scores == cut
    return above | (tied & (np.cumsum(tied) <= n_keep - int(above.sum())))


def kept_block_grid(scores: np.ndarray, sparsity: float, balanced: bool = False) -> np.ndarray:
    """Which blocks to keep, given their scores.

    Args:
        scores: ``[n_block_rows, n_block_cols]`` block scores.
        sparsity: fraction of blocks to zero, in ``[0, 1)``.
        balanced: zero ``round(sparsity * n_block_rows)`` blocks in every block-column.

    Returns:
        A boolean grid of the same shape, True for kept blocks.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r} is outside [0, 1)")
    n_rows, n_cols = scores.shape
    if balanced:
        n_keep = kept_blocks(n_rows, sparsity)
        return np.stack([_keep_first(scores[:, j], n_keep) for j in range(n_cols)], axis=1)
    n_keep = kept_blocks(scores.size, sparsity)
    return _keep_first(scores.reshape(-1), n_keep).reshape(scores.shape)


def block_mask(weight2d: np.ndarray, block_shape: tuple[int, int], sparsity: float, pooling: str = "AVG",
               balanced: bool = False) -> np.ndarray:
    """The block mask of a 2-D ``[in, out]`` view.

    Args:
        weight2d: the weight's ``[in, out]`` view.
        block_shape: ``(rows, cols)`` block; must fit the view (a last, narrower block-column
            is one block).
        sparsity: fraction of blocks to zero, in ``[0, 1)``.
        pooling: block score: ``"AVG"``, ``"MAX"`` or ``"L2"`` (root mean square) of ``|w|``.
        balanced: keep the same number of blocks in every block-column.

    Returns:
        A float mask of the view's shape and dtype: 1 for kept weights, 0 for pruned ones.

    Raises:
        ValueError: the block shape does not fit the view, or a bad sparsity or pooling.
    """
    weight2d = np.asarray(weight2d)
    grid = kept_block_grid(block_scores(weight2d, block_shape, pooling), sparsity, balanced)
    return grid_mask(grid, block_shape, weight2d.shape[1],
                     weight2d.dtype if weight2d.dtype.kind == "f" else np.float32)


def grid_mask(grid: np.ndarray, block_shape: tuple[int, int], width: int, dtype=np.float32) -> np.ndarray:
    """The ``[in, width]`` weight mask of a grid of kept blocks (``kept_block_grid``)."""
    mask = np.repeat(np.repeat(grid, block_shape[0], axis=0), block_shape[1], axis=1)[:, :width]
    return mask.astype(dtype)


def block_structure(weight2d: np.ndarray, block_shape: tuple[int, int]) -> dict:
    """Measures how block-sparse a 2-D view really is.

    Returns:
        ``zero_fraction`` (of weights), ``zero_block_fraction``, ``partial_blocks`` (blocks
        with some but not all weights zero; 0 means the zeros come in whole blocks),
        ``kept_per_block_column`` (min and max count of nonzero blocks over block-columns).
    """
    w = np.asarray(weight2d)
    check_blocks_fit(w.shape, block_shape)
    zeros_per_block = _blocks((w == 0).astype(np.int64), block_shape).sum(axis=(1, 3))
    real_per_block = _blocks(np.ones(w.shape, np.int64), block_shape).sum(axis=(1, 3))
    zero = w == 0
    all_zero = zeros_per_block == real_per_block
    partial = (zeros_per_block > 0) & ~all_zero
    kept_per_col = (~all_zero).sum(axis=0)
    return {
        "zero_fraction": float(zero.mean()) if w.size else 0.0,
        "zero_block_fraction": float(all_zero.mean()) if all_zero.size else 0.0,
        "partial_blocks": int(partial.sum()),
        "kept_per_block_column": (int(kept_per_col.min()), int(kept_per_col.max())) if kept_per_col.size else (0, 0),
    }


def reachable_sparsity(view_shape, block_shape, sparsity: float, balanced: bool) -> float:
    """The zero-block fraction ``block_mask`` really produces for ``sparsity`` (whole blocks,
    rounded per block-column when balanced, over all blocks otherwise)."""
    n_rows, n_cols = view_shape[0] // block_shape[0], n_block_cols(view_shape[1], block_shape[1])
    if balanced:
        return round(sparsity * n_rows) / n_rows
    return round(sparsity * n_rows * n_cols) / (n_rows * n_cols)

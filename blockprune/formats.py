"""Packed block-sparse formats over the 2-D ``[in, out]`` view of a weight.

- ``BSR``: block compressed sparse row, as scipy's ``bsr_matrix``: block rows run over the
  ``in`` axis; ``indptr[r]:indptr[r+1]`` index the kept blocks of block row ``r``, whose
  block-column numbers are in ``indices`` and values in ``data[nnzb, rows, cols]``.
- ``BlockedELL``: a fixed number ``k`` of blocks in every block-column (balanced sparsity):
  ``block_rows[ncb, k]`` and ``data[ncb, k, rows, cols]``. Block-columns with fewer nonzero
  blocks are padded with zero blocks. This is what the gather-matmul lowering consumes.

Both are immutable, derive their block shape from their data, have explicit
``from_dense``/``to_dense``, a cheap ``validate()`` (``full=True`` checks every index), and
report ``nbytes`` split into values and indices. Index arrays use the narrowest unsigned
integer type that holds them. This module does not import TensorFlow.

Example:
    >>> import numpy as np
    >>> w = np.zeros((4, 8), np.float32); w[0, :4] = 1; w[2, 4:] = 2
    >>> m = BlockedELL.from_dense(w, (1, 4))
    >>> m.k, m.block_rows.tolist(), m.block_rows.dtype.name
    (1, [[0], [2]], 'uint8')
    >>> bool((m.to_dense() == w).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_blocks_divide, check_blocks_fit, fits, n_block_cols

__all__ = ["BSR", "BlockedELL", "FORMATS", "index_dtype", "nonzero_block_grid", "detect_block_shape"]


def index_dtype(max_value: int) -> np.dtype:
    """The narrowest unsigned integer dtype that holds ``max_value``."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"index {max_value} does not fit in 64 bits")


def nonzero_block_grid(w2d: np.ndarray, block_shape: tuple[int, int]) -> np.ndarray:
    """``[in // rows, ceil(out / cols)]`` booleans: True where a block holds a nonzero value (a
    last, narrower block-column counts as one block)."""
    w2d = np.asarray(w2d)
    check_blocks_fit(w2d.shape, block_shape)
    return _pad_columns(w2d != 0, block_shape[1]).reshape(
        w2d.shape[0] // block_shape[0], block_shape[0], -1, block_shape[1]).any(axis=(1, 3))


def _pad_columns(w2d: np.ndarray, cols: int) -> np.ndarray:
    """``w2d`` with zero columns added up to a whole number of block-columns."""
    pad = n_block_cols(w2d.shape[1], cols) * cols - w2d.shape[1]
    return np.pad(w2d, ((0, 0), (0, pad))) if pad else w2d


def detect_block_shape(w2d: np.ndarray, candidates, explained: float = 0.95) -> tuple[tuple[int, int], float] | None:
    """The candidate block shape that explains the zero pattern of ``w2d``.

    A candidate explains it when it fits the view (``blockprune.checks.fits``) and whole zero
    blocks hold at least ``explained`` of all zero weights (a 90%-sparse (4, 1) pattern has some all-zero (1, 16)
    blocks by chance, but they hold few of its zeros). Among candidates that explain it the
    largest block area wins, then the first listed.

    Returns:
        ``(block_shape, zero_block_fraction)``, or None when no candidate fits.
    """
    w2d = np.asarray(w2d)
    zero_fraction = float(np.mean(w2d == 0)) if w2d.size else 0.0
    best = None
    for block in candidates:
        block = tuple(int(v) for v in block)
        if zero_fraction == 0 or not fits(w2d.shape, block):
            continue
        zero_blocks = 1.0 - float(nonzero_block_grid(w2d, block).mean())
        explains = zero_blocks > 0 and zero_blocks >= explained * zero_fraction
        if explains and (best is None or block[0] * block[1] > best[0][0] * best[0][1]):
            best = (block, zero_blocks)
    return best


def _check_view(w2d) -> np.ndarray:
    w2d = np.asarray(w2d)
    if w2d.ndim != 2:
        raise ValueError(f"expected a 2-D [in, out] view, got shape {w2d.shape}")
    return w2d


def _index_problem(name: str, arr: np.ndarray) -> str | None:
    if arr.dtype.kind != "u":
        return f"{name} has dtype {arr.dtype}, expected an unsigned integer type"
    return None


@dataclass(frozen=True, eq=False)
class BSR:
    """Block compressed sparse rows over the ``[in, out]`` view (scipy's BSR layout).

    Attributes:
        shape: ``(in, out)`` of the dense view.
        data: ``[nnzb, rows, cols]`` kept blocks.
        indices: ``[nnzb]`` block-column of each kept block.
        indptr: ``[in // rows + 1]`` offsets of each block row's blocks.
    """

    shape: tuple[int, int]
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    format_name = "bsr"

    @property
    def block_shape(self) -> tuple[int, int]:
        return (int(self.data.shape[1]), int(self.data.shape[2]))

    @property
    def nnzb(self) -> int:
        return int(self.data.shape[0])

    @classmethod
    def from_dense(cls, w2d: np.ndarray, block_shape: tuple[int, int]) -> "BSR":
        """Packs the nonzero blocks of a 2-D view (all-zero blocks are dropped); the block must
        divide the view."""
        w2d = _check_view(w2d)
        check_blocks_divide(w2d.shape, block_shape)
        grid = nonzero_block_grid(w2d, block_shape)
        bh, bw = block_shape
        n_rows, n_cols = grid.shape
        r, c = np.nonzero(grid)  # row-major: sorted by block row, then block column
        blocks = w2d.reshape(n_rows, bh, n_cols, bw).transpose(0, 2, 1, 3)[r, c]
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=n_rows), out=indptr[1:])
        return cls(tuple(w2d.shape), np.ascontiguousarray(blocks, dtype=w2d.dtype),
                   c.astype(index_dtype(max(n_cols - 1, 0))), indptr.astype(index_dtype(len(r))))

    def to_dense(self) -> np.ndarray:
        bh, bw = self.block_shape
        n_rows, n_cols = self.shape[0] // bh, self.shape[1] // bw
        grid = np.zeros((n_rows, n_cols, bh, bw), dtype=self.data.dtype)
        rows = np.repeat(np.arange(n_rows), np.diff(self.indptr.astype(np.int64)))
        grid[rows, self.indices.astype(np.int64)] = self.data
        return grid.transpose(0, 2, 1, 3).reshape(self.shape)

    def validate(self, full: bool = False) -> None:
        """Checks shapes and dtypes; ``full`` also checks every index.

        Raises:
            ValueError: the arrays do not describe a valid BSR matrix.
        """
        bh, bw = self.block_shape
        problems = []
        if self.data.ndim != 3 or bh < 1 or bw < 1:
            problems.append(f"data has shape {self.data.shape}, expected [nnzb, rows, cols]")
        elif self.shape[0] % bh or self.shape[1] % bw:
            problems.append(f"block {self.block_shape} does not divide the view {self.shape}")
        if self.indices.shape != (self.nnzb,):
            problems.append(f"indices has shape {self.indices.shape}, expected ({self.nnzb},)")
        if bh and self.indptr.shape != (self.shape[0] // bh + 1,):
            problems.append(f"indptr has shape {self.indptr.shape}, expected ({self.shape[0] // max(bh, 1) + 1},)")
        problems += [p for p in (_index_problem("indices", self.indices), _index_problem("indptr", self.indptr)) if p]
        if not problems and full:
            ptr = self.indptr.astype(np.int64)
            if ptr[0] != 0 or ptr[-1] != self.nnzb or (np.diff(ptr) < 0).any():
                problems.append("indptr is not a non-decreasing run from 0 to nnzb")
            elif self.nnzb and self.indices.max() >= self.shape[1] // bw:
                problems.append(f"a block-column index is >= {self.shape[1] // bw}")
            else:
                for r in range(len(ptr) - 1):
                    cols = self.indices[ptr[r]:ptr[r + 1]].astype(np.int64)
                    if (np.diff(cols) <= 0).any():
                        problems.append(f"block row {r}: block-column indices are not strictly increasing")
                        break
        if problems:
            raise ValueError("invalid BSR: " + "; ".join(problems))

    @property
    def nbytes(self) -> dict[str, int]:
        """Bytes of ``values`` and of ``indices`` (indices + indptr)."""
        return {"values": int(self.data.nbytes), "indices": int(self.indices.nbytes + self.indptr.nbytes)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"data": self.data, "indices": self.indices, "indptr": self.indptr}

    @classmethod
    def from_arrays(cls, shape, arrays: dict[str, np.ndarray]) -> "BSR":
        return cls(tuple(int(v) for v in shape), arrays["data"], arrays["indices"], arrays["indptr"])


@dataclass(frozen=True, eq=False)
class BlockedELL:
    """A fixed number of blocks per block-column over the ``[in, out]`` view.

    Attributes:
        shape: ``(in, out)`` of the dense view.
        block_rows: ``[ncb, k]`` block-row index of each kept block, increasing;
            ``ncb = ceil(out / cols)``.
        data: ``[ncb, k, rows, cols]`` kept blocks (zero-padded where a block-column has fewer
            than ``k`` nonzero blocks, and beyond ``out`` in a last, narrower block-column).
    """

    shape: tuple[int, int]
    block_rows: np.ndarray
    data: np.ndarray

    format_name = "blocked-ell"

    @property
    def block_shape(self) -> tuple[int, int]:
        return (int(self.data.shape[2]), int(self.data.shape[3]))

    @property
    def k(self) -> int:
        """Blocks kept per block-column."""
        return int(self.block_rows.shape[1])

    @classmethod
    def from_dense(cls, w2d: np.ndarray, block_shape: tuple[int, int], k: int | None = None) -> "BlockedELL":
        """Packs a 2-D view keeping ``k`` blocks per block-column.

        Args:
            w2d: the ``[in, out]`` view.
            block_shape: ``(rows, cols)``.
            k: blocks per block-column; default the largest count of nonzero blocks in any
                block-column. Columns with fewer are padded with their first zero blocks.

        Raises:
            ValueError: ``k`` is smaller than some block-column's count of nonzero blocks
                (packing would lose weights).
        """
        w2d = _check_view(w2d)
        grid = nonzero_block_grid(w2d, block_shape)
        bh, bw = block_shape
        n_rows, n_cols = grid.shape
        shape = tuple(w2d.shape)
        w2d = _pad_columns(w2d, bw)
        counts = grid.sum(axis=0)
        need = int(counts.max()) if n_cols else 0
        k = need if k is None else int(k)
        if k < need or k > n_rows:
            raise ValueError(f"k={k} blocks per block-column cannot hold the view {tuple(w2d.shape)} "
                             f"(block-columns hold up to {need} nonzero blocks of {block_shape}, of {n_rows})")
        # Nonzero blocks first, then zero blocks as padding; each group in block-row order.
        order = np.argsort(~grid, axis=0, kind="stable")[:k]
        rows = np.sort(order, axis=0).T  # [n_cols, k]
        blocks = w2d.reshape(n_rows, bh, n_cols, bw).transpose(2, 0, 1, 3)  # [n_cols, n_rows, bh, bw]
        data = np.take_along_axis(blocks, rows[:, :, None, None], axis=1)
        return cls(shape, rows.astype(index_dtype(max(n_rows - 1, 0))), np.ascontiguousarray(data, dtype=w2d.dtype))

    def to_dense(self) -> np.ndarray:
        bh, bw = self.block_shape
        n_rows, n_cols = self.shape[0] // bh, n_block_cols(self.shape[1], bw)
        blocks = np.zeros((n_cols, n_rows, bh, bw), dtype=self.data.dtype)
        np.put_along_axis(blocks, self.block_rows.astype(np.int64)[:, :, None, None], self.data, axis=1)
        return blocks.transpose(1, 2, 0, 3).reshape(self.shape[0], n_cols * bw)[:, : self.shape[1]]

    def gather_indices(self) -> np.ndarray:
        """``[ncb, k * rows]`` input-feature indices each block-column reads (int32)."""
        bh = self.block_shape[0]
        rows = self.block_rows.astype(np.int64)[:, :, None] * bh + np.arange(bh)
        return rows.reshape(self.block_rows.shape[0], -1).astype(np.int32)

    def packed_values(self) -> np.ndarray:
        """``[ncb, k * rows, cols]``: the values in the order ``gather_indices`` reads (a last,
        narrower block-column padded with zero columns)."""
        n_cols, k, bh, bw = self.data.shape
        return self.data.reshape(n_cols, k * bh, bw)

    def validate(self, full: bool = False) -> None:
        """Checks shapes and dtypes; ``full`` also checks every index.

        Raises:
            ValueError: the arrays do not describe a valid blocked-ELL matrix.
        """
        problems = []
        if self.data.ndim != 4:
            problems.append(f"data has shape {self.data.shape}, expected [ncb, k, rows, cols]")
        else:
            bh, bw = self.block_shape
            if not fits(self.shape, self.block_shape):
                problems.append(f"block {self.block_shape} does not fit the view {self.shape}")
            elif self.block_rows.shape != (n_block_cols(self.shape[1], bw), self.data.shape[1]):
                problems.append(f"block_rows has shape {self.block_rows.shape}, expected "
                                f"({n_block_cols(self.shape[1], bw)}, {self.data.shape[1]})")
        problem = _index_problem("block_rows", self.block_rows)
        if problem:
            problems.append(problem)
        if not problems and full and self.block_rows.size:
            if self.block_rows.max() >= self.shape[0] // self.block_shape[0]:
                problems.append(f"a block-row index is >= {self.shape[0] // self.block_shape[0]}")
            elif (np.diff(self.block_rows.astype(np.int64), axis=1) <= 0).any():
                problems.append("block-row indices are not strictly increasing within a block-column")
        if problems:
            raise ValueError("invalid blocked-ELL: " + "; ".join(problems))

    @property
    def nbytes(self) -> dict[str, int]:
        """Bytes of ``values`` and of ``indices``."""
        return {"values": int(self.data.nbytes), "indices": int(self.block_rows.nbytes)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"block_rows": self.block_rows, "data": self.data}

    @classmethod
    def from_arrays(cls, shape, arrays: dict[str, np.ndarray]) -> "BlockedELL":
        return cls(tuple(int(v) for v in shape), arrays["block_rows"], arrays["data"])


#: Format name -> class.
FORMATS = {BSR.format_name: BSR, BlockedELL.format_name: BlockedELL}

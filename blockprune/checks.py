"""Validators shared by every stage: sparsities, block shapes, and whether a block tiles a view.

The lowest module of blockprune besides ``views``: plans, overrides, masks, schedules, the
pruning wrapper and the lowerings all check their inputs here, so one wrong value gets one
message everywhere. It also holds the sparsity ladder that tuning measures and budgets
allocate from. This module does not import TensorFlow.

Example:
    >>> divides((2048, 2048), (1, 64))
    True
    >>> check_sparsity(0.9, "target 'cpu-wide'")
    0.9
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SPARSITY_LADDER", "check_sparsity", "check_positive_int", "check_block_shape", "divides", "fits",
           "check_blocks_divide", "kept_blocks", "check_blocks_fit", "n_block_cols"]

#: Sparsities ``blockprune tune`` measures by default, and the levels a latency budget
#: allocates from when no profile gives its own.
SPARSITY_LADDER = (0.5, 0.8, 0.9, 0.95)


def check_sparsity(value: Any, where: str = "", name: str = "sparsity") -> float:
    """Validates a sparsity in ``[0, 1)`` (for plans, overrides and schedules alike).

    Args:
        value: the sparsity given.
        where: what it belongs to, for the message (e.g. ``"target 'cpu-wide'"``).
        name: the argument's name in the message (e.g. ``"final_sparsity"``).

    Returns:
        The sparsity as a float.

    Raises:
        TypeError: not a real number.
        ValueError: outside ``[0, 1)``.
    """
    suffix = f" for {where}" if where else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__} {value!r}{suffix}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}={value!r} is outside [0, 1){suffix}")
    return float(value)


def check_positive_int(value: Any, name: str, where: str = "") -> int:
    """Validates a count (epochs, a batch size, threads): an int of at least 1, not a bool.

    Raises:
        ValueError: anything else; the message names ``name`` and, in parentheses, ``where``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer" + (f" ({where})" if where else ""))
    return value


def check_block_shape(value: Any, where: str = "", name: str = "block_shape") -> tuple[int, int]:
    """Validates a ``(rows, cols)`` block shape of two positive integers (for plans and wrappers).

    Returns:
        The block shape as a tuple of two ints.

    Raises:
        ValueError: anything else; the message names ``where``.
    """
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        suffix = f" for {where}" if where else ""
        raise ValueError(f"{name}={value!r} is not two positive integers (rows, cols){suffix}")
    return (int(value[0]), int(value[1]))


def divides(view_shape, block_shape) -> bool:
    """Whether ``block_shape`` tiles the ``[in, out]`` view ``view_shape`` exactly."""
    bh, bw = block_shape
    return bh > 0 and bw > 0 and view_shape[0] % bh == 0 and view_shape[1] % bw == 0


def check_blocks_divide(view_shape: tuple[int, int], block_shape: tuple[int, int], where: str = "") -> None:
    """Raises ``ValueError`` unless ``block_shape`` tiles ``view_shape`` exactly."""
    if not divides(view_shape, block_shape):
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}block_shape={tuple(block_shape)} does not divide the [in, out] view "
                         f"{tuple(view_shape)}")


def fits(view_shape, block_shape) -> bool:
    """Whether ``block_shape`` can cut the ``[in, out]`` view ``view_shape`` into blocks: the rows
    divide exactly, and the columns hold at least one whole block; a last block-column narrower
    than the block (``out`` not a multiple of ``cols``) is padded with zero columns.

    Example:
        >>> fits((1000, 1000), (1, 64)), divides((1000, 1000), (1, 64))
        (True, False)
    """
    bh, bw = block_shape
    return bh > 0 and bw > 0 and view_shape[0] % bh == 0 and view_shape[1] >= bw


def check_blocks_fit(view_shape: tuple[int, int], block_shape: tuple[int, int], where: str = "") -> None:
    """Raises ``ValueError`` unless ``block_shape`` fits ``view_shape`` (see ``fits``)."""
    if not fits(view_shape, block_shape):
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}block_shape={tuple(block_shape)} does not divide the [in, out] view "
                         f"{tuple(view_shape)} (its rows must divide {view_shape[0]}; its columns may leave a narrower "
                         f"last block-column but must be at most {view_shape[1]})")


def kept_blocks(n: int, sparsity: float) -> int:
    """How many of ``n`` blocks a sparsity keeps (``masks.kept_block_grid`` zeroes the rest)."""
    return n - int(round(sparsity * n))


def n_block_cols(out: int, cols: int) -> int:
    """Block-columns of a view ``out`` wide: the last one may be narrower than ``cols``."""
    return -(-out // cols)

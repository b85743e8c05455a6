"""The one place where a kernel is flattened to its 2-D ``[in, out]`` view.

blockprune states block shapes over the 2-D view ``[in, out]`` of a kernel as Keras stores it
(docs/DESIGN.md, section 2):

- Dense: the kernel ``[in, out]`` itself.
- Conv1D/Conv2D/Conv3D: ``[k..., cin, cout]`` reshaped to ``[prod(k) * cin, cout]``.
- EinsumDense: the contracted axes (shared with the input, absent from the output) by the
  output axes, each group in the kernel's own axis order.
- A custom ``PrunableLayer`` weight: all axes but the last by the last.

A ``WeightView`` records the axis permutation and the split point, so the same transform is
applied to NumPy arrays here and to tensors in the training wrapper. This module does not
import TensorFlow.

Example:
    >>> import numpy as np
    >>> v = WeightView.for_conv((3, 3, 16, 32))
    >>> v.view_shape
    (144, 32)
    >>> w = np.arange(3 * 3 * 16 * 32, dtype="float32").reshape(3, 3, 16, 32)
    >>> bool((v.from_2d(v.to_2d(w)) == w).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["WeightView", "WeightRef", "einsum_view", "einsum_matmul_form"]


@dataclass(frozen=True)
class WeightView:
    """How a kernel of any rank maps onto its 2-D ``[in, out]`` view.

    Attributes:
        kernel_shape: the kernel's shape as Keras stores it.
        perm: axis permutation applied before reshaping (identity for Dense and Conv).
        n_in_axes: how many of the permuted axes form the ``in`` (row) dimension.
    """

    kernel_shape: tuple[int, ...]
    perm: tuple[int, ...]
    n_in_axes: int

    def __post_init__(self):
        if sorted(self.perm) != list(range(len(self.kernel_shape))):
            raise ValueError(f"perm {self.perm} is not a permutation of the axes of {self.kernel_shape}")
        if not 1 <= self.n_in_axes < len(self.kernel_shape):
            raise ValueError(f"n_in_axes={self.n_in_axes} must leave at least one axis on each side "
                             f"of the view of kernel shape {self.kernel_shape}")

    @classmethod
    def for_matrix_like(cls, kernel_shape) -> "WeightView":
        """All axes but the last are ``in``; the last is ``out`` (Dense, Conv, custom)."""
        shape = tuple(int(d) for d in kernel_shape)
        if len(shape) < 2:
            raise ValueError(f"a kernel needs at least 2 axes to have an [in, out] view, got shape {shape}")
        return cls(shape, tuple(range(len(shape))), len(shape) - 1)

    for_dense = for_matrix_like
    for_conv = for_matrix_like

    @classmethod
    def channel_major(cls, kernel_shape) -> "WeightView":
        """The channel-major view ``[cin * prod(k), cout]`` of a convolution kernel
        ``[k..., cin, cout]``: the rows of one input channel (all its taps) are consecutive, so a
        channel block (one input channel x ``c`` output channels) is the block ``(prod(k), c)``.

        Example:
            >>> WeightView.channel_major((3, 3, 16, 32)).view_shape
            (144, 32)
        """
        shape = tuple(int(d) for d in kernel_shape)
        if len(shape) < 3:
            raise ValueError(f"a convolution kernel [k..., cin, cout] has at least 3 axes, got shape {shape}")
        n = len(shape)
        return cls(shape, (n - 2, *range(n - 2), n - 1), n - 1)

    @property
    def taps(self) -> int:
        """Kernel positions per input channel of a convolution view (1 for a matrix)."""
        return math.prod(self.kernel_shape[:-2]) if len(self.kernel_shape) > 2 else 1

    @property
    def is_channel_major(self) -> bool:
        n = len(self.kernel_shape)
        return n >= 3 and self.perm == (n - 2, *range(n - 2), n - 1)

    @property
    def is_identity(self) -> bool:
        return self.perm == tuple(range(len(self.perm)))

    @property
    def permuted_shape(self) -> tuple[int, ...]:
        """The kernel's shape after ``perm``: the view's rows, then its columns, unflattened."""
        return tuple(self.kernel_shape[a] for a in self.perm)

    @property
    def inverse_perm(self) -> tuple[int, ...]:
        """The permutation that takes ``permuted_shape`` back to ``kernel_shape``."""
        return tuple(int(a) for a in np.argsort(self.perm))

    @property
    def view_shape(self) -> tuple[int, int]:
        """``(in, out)``: rows and columns of the 2-D view."""
        permuted = self.permuted_shape
        return (math.prod(permuted[: self.n_in_axes]), math.prod(permuted[self.n_in_axes:]))

    def to_2d(self, kernel: np.ndarray) -> np.ndarray:
        """The ``[in, out]`` view of ``kernel`` (a NumPy array of ``kernel_shape``)."""
        kernel = np.asarray(kernel)
        if tuple(kernel.shape) != self.kernel_shape:
            raise ValueError(f"expected a kernel of shape {self.kernel_shape}, got {tuple(kernel.shape)}")
        return np.transpose(kernel, self.perm).reshape(self.view_shape)

    def from_2d(self, view: np.ndarray) -> np.ndarray:
        """The inverse of ``to_2d``: a kernel of ``kernel_shape`` from its ``[in, out]`` view."""
        view = np.asarray(view)
        if tuple(view.shape) != self.view_shape:
            raise ValueError(f"expected a view of shape {self.view_shape}, got {tuple(view.shape)}")
        return np.transpose(view.reshape(self.permuted_shape), self.inverse_perm)

    def to_json(self) -> dict:
        return {"kernel_shape": list(self.kernel_shape), "perm": list(self.perm), "n_in_axes": self.n_in_axes}

    @classmethod
    def from_json(cls, data: dict) -> "WeightView":
        return cls(tuple(data["kernel_shape"]), tuple(data["perm"]), int(data["n_in_axes"]))


def einsum_view(equation: str, kernel_shape) -> WeightView:
    """The ``[in, out]`` view of an EinsumDense kernel.

    Args:
        equation: the layer's equation, e.g. ``"abc,cde->abde"``.
        kernel_shape: the kernel's shape.

    Returns:
        A ``WeightView`` whose rows are the contracted axes and whose columns are the kernel
        axes that appear in the output.

    Raises:
        ValueError: the equation is not a plain matrix product over the kernel (an axis shared
            by input, kernel and output, or a kernel axis summed on its own).

    Example:
        >>> einsum_view("abc,cde->abde", (16, 2, 8)).view_shape
        (16, 16)
    """
    shape = tuple(int(d) for d in kernel_shape)
    try:
        lhs, out = equation.replace(" ", "").split("->")
        inp, ker = lhs.split(",")
    except ValueError:
        raise ValueError(f"cannot parse einsum equation {equation!r}") from None
    if "." in equation:
        raise ValueError(f"einsum equation {equation!r} uses '...', which has no fixed [in, out] view")
    if len(ker) != len(shape):
        raise ValueError(f"einsum equation {equation!r} names {len(ker)} kernel axes, kernel has shape {shape}")
    contracted, produced = [], []
    for axis, letter in enumerate(ker):
        in_input, in_output = letter in inp, letter in out
        if in_input and not in_output:
            contracted.append(axis)
        elif in_output and not in_input:
            produced.append(axis)
        elif in_input and in_output:
            raise ValueError(f"einsum equation {equation!r}: kernel axis {letter!r} is shared by input and "
                             "output (a batched product), which is not a single [in, out] matrix")
        else:
            raise ValueError(f"einsum equation {equation!r}: kernel axis {letter!r} is summed on its own")
    if not contracted or not produced:
        raise ValueError(f"einsum equation {equation!r} has no contracted or no output kernel axis")
    return WeightView(shape, tuple(contracted + produced), len(contracted))


@dataclass(frozen=True)
class WeightRef:
    """One matrix-like weight of a model, by name, with its ``[in, out]`` view.

    What the model walk finds (``blockprune.modelwalk.WeightSite``) and what the plan decides
    for it (``blockprune.plan.LayerPlan``) both extend this, so every function that needs a
    weight's name, shape and view takes either.

    Attributes:
        layer: path of the graph-node layer owning the weight (``"encoder/dense_1"`` inside a
            nested model ``encoder``); the layer a pruning wrapper wraps.
        weight: the weight's name relative to ``layer`` (``"kernel"``, ``"query/kernel"``).
        layer_class: class name of the layer that directly holds the weight.
        kind: layer kind (``dense``, ``conv1x1``, ``conv``, ``einsum_dense``, ``custom``), or
            the lowercased class name of a layer blockprune cannot prune.
        kernel_shape: the weight's shape as Keras stores it.
        view: its ``[in, out]`` view, or None when it has none.
        positions: rows of the matmul per sample (conv output positions, sequence length).
    """

    layer: str
    weight: str
    layer_class: str
    kind: str
    kernel_shape: tuple[int, ...]
    view: WeightView | None
    positions: int = 1

    @property
    def name(self) -> str:
        """``layer/weight``, unique within a model."""
        return f"{self.layer}/{self.weight}"

    @property
    def view_shape(self) -> tuple[int, int] | None:
        return self.view.view_shape if self.view else None

    @property
    def n_weights(self) -> int:
        return math.prod(self.kernel_shape)

    def ref(self) -> "WeightRef":
        """Just the reference fields (a ``WeightRef``), e.g. to build a plan entry from a site."""
        return WeightRef(self.layer, self.weight, self.layer_class, self.kind, self.kernel_shape, self.view,
                         self.positions)


def einsum_matmul_form(equation: str, kernel_shape) -> tuple[int, tuple[int, ...]]:
    """How an EinsumDense is a plain matmul over its ``[in, out]`` view, if it is one.

    The layer is ``reshape(reshape(x, [-1, in]) @ W, lead + produced)`` when the input ends with
    the contracted axes in the kernel's order and the output is the input's other axes followed
    by the produced axes in the kernel's order (MultiHeadAttention's projections are).

    Returns:
        ``(input_axes, output_shape)``: how many trailing input axes form ``in``, and the shape
        of the produced output axes.

    Raises:
        ValueError: the equation has no such form (the message says why).

    Example:
        >>> einsum_matmul_form("abcd,cde->abe", (4, 16, 64))
        (2, (64,))
    """
    view = einsum_view(equation, kernel_shape)
    lhs, out = equation.replace(" ", "").split("->")
    inp, ker = lhs.split(",")
    contracted = "".join(ker[a] for a in view.perm[: view.n_in_axes])
    produced = "".join(ker[a] for a in view.perm[view.n_in_axes:])
    lead = inp[: len(inp) - len(contracted)]
    if not inp.endswith(contracted) or out != lead + produced:
        raise ValueError(f"einsum equation {equation!r} is not x[..., in] @ W[in, out] with the contracted axes "
                         "last in the input and the produced axes last in the output")
    return len(contracted), tuple(int(kernel_shape[ker.index(c)]) for c in produced)

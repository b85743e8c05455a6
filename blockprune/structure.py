"""A model's block structure, read once from its zeros and passed to pack, lower and export.

``read_structure(model, target, plan)`` looks at every weight the target can prune and
records, as a typed value, what its zeros really are: the block shape among the target's that
explains them, the fraction of zero blocks and of zero weights, and how many blocks each
block-column keeps (equal everywhere when the sparsity is balanced). With a plan, every
planned weight must have its planned block structure. This module does not import TensorFlow
(walking a live model is delegated to ``blockprune.modelwalk`` when ``read_structure`` runs).

Example:
    >>> import numpy as np
    >>> w = np.zeros((8, 4), np.float32); w[:2, :2] = 1; w[4:6, 2:] = 1
    >>> s = WeightStructure.measure(None, w, [(2, 2)])
    >>> s.block_shape, s.block_sparsity, s.kept_per_block_column, s.balanced
    ((2, 2), 0.75, (1, 1), True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .formats import detect_block_shape, nonzero_block_grid
from .masks import reachable_sparsity

__all__ = ["WeightStructure", "ModelStructure", "StructureError", "read_structure"]


class StructureError(ValueError):
    """A weight that lacks the block structure its plan says it has."""


@dataclass(frozen=True)
class WeightStructure:
    """What one weight's zeros really are.

    Attributes:
        site: the weight (a ``blockprune.modelwalk.WeightSite``: name, kind, view, variable).
        matrix: its 2-D view as read (not compared, not shown).
        block_shape: the block shape (among the candidates) whose whole zero blocks explain its
            zeros, or None (dense, or zeros in no candidate's blocks).
        block_sparsity: fraction of zero blocks of ``block_shape`` (0 when None).
        sparsity: fraction of zero weights.
        kept_per_block_column: ``(min, max)`` nonzero blocks over the block-columns.
    """

    site: Any
    matrix: np.ndarray = field(repr=False, compare=False)
    block_shape: tuple[int, int] | None
    block_sparsity: float
    sparsity: float
    kept_per_block_column: tuple[int, int]
    view: Any = None

    @classmethod
    def measure(cls, site, matrix: np.ndarray, candidates, view=None) -> "WeightStructure":
        """Reads the structure of ``matrix``: ``view`` of the weight ``site`` (default its
        ``[in, out]`` view), whose blocks may be any of ``candidates``."""
        matrix = np.asarray(matrix)
        view = view if view is not None else getattr(site, "view", None)
        found = detect_block_shape(matrix, candidates)
        sparsity = float(np.mean(matrix == 0)) if matrix.size else 0.0
        if found is None:
            return cls(site, matrix, None, 0.0, sparsity, (0, 0), view)
        kept = nonzero_block_grid(matrix, found[0]).sum(axis=0)
        return cls(site, matrix, found[0], found[1], sparsity, (int(kept.min()), int(kept.max())), view)

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def layer(self) -> str:
        return self.site.layer

    @property
    def kind(self) -> str:
        return self.site.kind

    @property
    def view_shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)

    @property
    def blocked(self) -> bool:
        """Whether the zeros come in blocks of one of the candidate shapes."""
        return self.block_shape is not None

    @property
    def balanced(self) -> bool:
        """Whether every block-column keeps the same number of blocks."""
        return self.blocked and self.kept_per_block_column[0] == self.kept_per_block_column[1]


@dataclass(frozen=True)
class ModelStructure:
    """The ``WeightStructure`` of every weight a target can prune, in model order."""

    weights: tuple[WeightStructure, ...] = ()

    def __iter__(self) -> Iterator[WeightStructure]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)

    @property
    def blocked(self) -> list[WeightStructure]:
        """The weights whose zeros come in blocks."""
        return [w for w in self.weights if w.blocked]

    def get(self, name: str) -> WeightStructure | None:
        """The structure of weight ``layer/weight``, or None."""
        return next((w for w in self.weights if w.name == name), None)


def read_structure(model, target, plan=None, block_shapes=None) -> ModelStructure:
    """Reads the block structure of every weight of ``model`` that ``target`` can prune.

    Args:
        model: a stripped Keras model.
        target: a ``TargetDescriptor``; its block shapes are the candidates.
        plan: optional ``SparsityPlan``; each planned weight is read with its planned block
            shape and must reach its planned sparsity.
        block_shapes: optional ``{"layer/weight": (rows, cols)}``: read these weights with this
            block shape only.

    Returns:
        A ``ModelStructure``.

    Raises:
        StructureError: a planned weight lacks its planned block structure.
    """
    from .modelwalk import target_sites

    planned = {lp.name: lp for lp in plan.pruned_layers} if plan else {}
    pins = dict(block_shapes or {})
    out = []
    for site in target_sites(model, target):
        lp = planned.get(site.name)
        view, candidates = target.pattern(site)
        if lp:
            view, candidates = lp.view, [lp.block_shape]
        elif site.name in pins:
            view, candidates = site.view, [pins[site.name]]
        ws = WeightStructure.measure(site, view.to_2d(np.asarray(site.variable.numpy())), candidates, view)
        if lp and (not ws.blocked or ws.block_sparsity < reachable_sparsity(ws.view_shape, lp.block_shape,
                                                                            lp.sparsity, target.balanced) - 1e-9):
            have = "no zero block" if not ws.blocked else f"{ws.block_sparsity:.1%} zero blocks"
            raise StructureError(f"Layer '{site.layer}': weight '{site.weight}' has {have} of {lp.block_shape}, but "
                                 f"the plan for target '{target.name}' says {lp.sparsity:.0%}; prune it first")
        out.append(ws)
    return ModelStructure(tuple(out))

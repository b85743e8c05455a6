"""Accuracy sensitivity: how much the held-out loss rises when one weight alone is pruned.

``measure_sensitivity(model, plan, data)`` prunes each planned weight by itself, one shot, at
its planned block shape and at each sparsity level, evaluates the loss on held-out data, and
restores it. The allocator (``blockprune.plan.allocate``) then spends sparsity where it costs
the least loss per microsecond saved: ``plan(..., overall_sparsity=0.9, sensitivity=data)`` or
``blockprune plan --overall-sparsity 0.9 --sensitivity-data animal-shapes``.

One-shot losses overstate what fine-tuning leaves, but they rank weights the way fine-tuning
does (the usual layer-wise sensitivity analysis), which is what the allocation needs.
This module imports Keras only inside ``measure_sensitivity``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Sensitivity", "measure_sensitivity", "LEVELS"]

#: Sparsity levels measured by default (the cost between them is interpolated linearly).
LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class Sensitivity:
    """Per weight and sparsity level, the rise of the held-out loss when that weight alone is
    pruned to that level (the others dense).

    Attributes:
        data: the dataset it was measured on; ``samples``: how many held-out samples.
        base_loss: the dense model's loss there.
        increase: ``{weight: {sparsity: loss increase}}``.
    """

    data: str
    samples: int
    base_loss: float
    increase: dict = field(default_factory=dict)

    def cost(self, weight: str, sparsity: float) -> float:
        """The loss increase of ``weight`` at ``sparsity`` (0 when dense; linear between levels,
        the last level's slope beyond it). A weight not measured costs nothing."""
        points = sorted(self.increase.get(weight, {}).items())
        if not points or sparsity <= 0:
            return 0.0
        xs = [0.0] + [s for s, _ in points]
        ys = [0.0] + [max(0.0, d) for _, d in points]  # pruning that helps on held-out data is noise here
        if sparsity <= xs[-1]:
            return float(np.interp(sparsity, xs, ys))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return ys[-1] + slope * (sparsity - xs[-1])

    def to_dict(self) -> dict:
        return {"format": "blockprune-sensitivity", "version": 1, "data": self.data, "samples": self.samples,
                "base_loss": self.base_loss,
                "increase": {w: {f"{s:g}": d for s, d in sorted(v.items())} for w, v in self.increase.items()}}

    @classmethod
    def from_dict(cls, data: dict, source: str = "sensitivity") -> "Sensitivity":
        if data.get("format") != "blockprune-sensitivity":
            raise ValueError(f"{source}: not a blockprune sensitivity file (format {data.get('format')!r})")
        return cls(data["data"], int(data["samples"]), float(data["base_loss"]),
                   {w: {float(s): float(d) for s, d in v.items()} for w, v in data["increase"].items()})

    def save(self, path: str | os.PathLike) -> Path:
        from ._atomic import write_text_atomic

        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Sensitivity":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()), str(path))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read sensitivity file '{path}': {e}") from None


def measure_sensitivity(model, plan, data, levels=LEVELS, max_samples: int = 2000) -> Sensitivity:
    """Measures, for every weight ``plan`` prunes, the held-out loss at each sparsity level with
    that weight alone pruned (one shot, its planned block shape, the target's balance). Each
    weight is measured up to its planned sparsity too (an allocation may go that far; loss curves
    bend sharply near the top, so the cost there is measured, not extrapolated).

    Args:
        model: the trained dense Keras model (its weights are restored after each measurement).
        plan: a ``SparsityPlan`` for it: which weights, in which blocks.
        data: a ``blockprune.data.Dataset``; its test split (else the last ``max_samples``
            training samples) is the held-out data.
        levels: the sparsities to measure.
        max_samples: at most this many held-out samples.

    Raises:
        ValueError: a weight of the plan that the model does not have.
    """
    from .masks import block_mask
    from .modelwalk import find_weights
    from .pruning.finetune import default_loss

    x, y = (data.x_test, data.y_test) if data.x_test is not None else (data.x_train, data.y_train)
    x, y = x[-max_samples:], y[-max_samples:]
    loss_fn = default_loss(model, data)

    def loss() -> float:
        return float(np.mean(np.asarray(loss_fn(y, model.predict(x, batch_size=512, verbose=0)))))

    sites = {f"{s.layer}/{s.weight}": s for s in find_weights(model)}
    base = loss()
    increase: dict[str, dict[float, float]] = {}
    for lp in plan.pruned_layers:
        site = sites.get(lp.name)
        if site is None:
            raise ValueError(f"Layer '{lp.layer}': the plan prunes weight '{lp.weight}', which model '{model.name}' "
                             "does not have")
        original = np.asarray(site.variable.numpy())
        view = lp.view.to_2d(original)
        increase[lp.name] = {}
        try:
            for s in sorted(set(levels) | {lp.sparsity}):
                mask = block_mask(view, lp.block_shape, s, balanced=plan.target.balanced)
                site.variable.assign(lp.view.from_2d(view * mask).astype(original.dtype))
                increase[lp.name][float(s)] = loss() - base
        finally:
            site.variable.assign(original)
    return Sensitivity(data.name, len(x), base, increase)

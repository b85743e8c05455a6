"""The latency allocator: per-weight sparsities chosen for a latency budget or an overall sparsity.

``Predictor`` says how long one weight's matmul takes at a block shape and sparsity (from a
tuning profile where it measured one, else the cost model); ``LevelTable`` lists, per weight
and sparsity level, the fastest choice; ``allocate`` runs a greedy knapsack over it, and
``allocate_for_model`` finds by bisection the matmul budget that meets a whole-model budget.
This module does not import TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .. import cost
from ..lower import runs_sparse
from ..targets import TargetDescriptor
from .records import LayerPlan, SparsityPlan

__all__ = ["ProfileReader", "Predictor", "LevelTable", "allocate", "allocate_for_model"]


@dataclass(frozen=True)
class ProfileReader:
    """How to read a tuning profile for one plan."""

    profile: Any
    runtime: str
    batch: int
    threads: int

    def latency(self, lp_or_site, block, sparsity) -> float | None:
        view = lp_or_site.view.view_shape
        rows = self.batch * lp_or_site.positions
        return self.profile.latency(self.runtime, view, rows, self.threads, block, sparsity)



@dataclass(frozen=True)
class Predictor:
    """Predicted latency of one weight's matmul: the profile where it measured one, else the cost
    model. A weight whose kind the runtime's lowering leaves dense costs its dense time."""

    target: TargetDescriptor
    runtime: str
    measured: ProfileReader | None = None

    def runs_sparse(self, lp_or_site) -> bool:
        return runs_sparse(self.target, lp_or_site.kind, self.runtime)

    def latency(self, lp_or_site, block, sparsity) -> float:
        if not sparsity or block is None or not self.runs_sparse(lp_or_site):
            block, sparsity = None, 0.0
        if self.measured is not None:
            t = self.measured.latency(lp_or_site, block, sparsity)
            if t is not None:
                return t
        e = cost.estimate(lp_or_site.view.view_shape, block or (1, 1), sparsity, self.target,
                          positions=lp_or_site.positions)
        return e.dense_us if block is None else e.sparse_us

    def fastest(self, lp, blocks, sparsity) -> tuple[float, tuple[int, int]]:
        """``(us, block)``: the fastest measured of ``blocks`` at ``sparsity``, else the first one's estimate."""
        if self.measured is not None and self.runs_sparse(lp):
            timed = [(t, k, b) for k, b in enumerate(blocks)
                     if (t := self.measured.latency(lp, b, sparsity)) is not None]
            if timed:
                t, _, b = min(timed)
                return t, b
        return self.latency(lp, blocks[0], sparsity), blocks[0]

    def layer_plan(self, lp: LayerPlan, block, sparsity, **changes) -> LayerPlan:
        """``lp`` at ``block`` and ``sparsity``, with its estimate and measurement updated."""
        est = cost.estimate(lp.view.view_shape, block, sparsity, self.target, positions=lp.positions)
        m_sparse = None
        if self.measured is not None:
            m_sparse = self.measured.latency(lp, block if self.runs_sparse(lp) else None,
                                             sparsity if self.runs_sparse(lp) else 0.0)
        return replace(lp, block_shape=block, sparsity=sparsity,
                       est_dense_us=est.dense_us, est_sparse_us=est.sparse_us if self.runs_sparse(lp) else est.dense_us,
                       measured_dense_us=self.measured.latency(lp, None, 0.0) if m_sparse is not None else None,
                       measured_sparse_us=m_sparse, **changes)



@dataclass(frozen=True)
class LevelTable:
    """What an allocation chooses from: the weights it may change (``free``), the sparsity
    levels (0 first, the ceiling last), each weight's candidate blocks, and per weight and level
    the predicted ``(us, block)``. Independent of the budget, so a search over budgets builds it once."""

    free: list[int]
    levels: list[float]
    blocks: dict
    options: dict

    @classmethod
    def build(cls, layers: list[LayerPlan], predictor: Predictor, ceiling: float, levels) -> "LevelTable":
        free = [i for i, lp in enumerate(layers) if lp.pruned and lp.source != "override"]
        levels = [0.0] + sorted({lv for lv in levels if 0 < lv < ceiling} | {ceiling})
        if predictor.measured is None:  # the cost model does not rank block shapes: keep the target's choice
            blocks = {i: [layers[i].block_shape] for i in free}
        else:
            blocks = {i: predictor.target.pattern(layers[i])[1] or [layers[i].block_shape]
                      for i in free}
        options = {i: [(predictor.latency(layers[i], None, 0.0), None)]
                   + [predictor.fastest(layers[i], blocks[i], lv) for lv in levels[1:]] for i in free}
        return cls(free, levels, blocks, options)


#: The least loss increase a move is charged with sensitivity (so free moves rank by time saved).
LOSS_FLOOR = 1e-4


def allocate(layers: list[LayerPlan], predictor: Predictor, table: LevelTable, *,
              budget_us: float | None = None, speedup: float | None = None, overall: float | None = None,
              sensitivity=None):
    """Chooses per-weight sparsities (a greedy knapsack over the weights the target chose).

    With a latency budget (``budget_us`` or ``speedup``), the predicted latency must meet it while
    pruning as few weights as possible; with an ``overall`` sparsity, that fraction of the
    eligible weights must be zero at the lowest predicted latency. Each step takes the move (one
    weight, to any higher sparsity level) with the largest predicted saving per extra pruned
    weight: looking past the next level lets a lowering that is slow at low sparsity and fast at
    high sparsity be chosen. With a profile, each level uses the fastest measured block there.
    With ``sensitivity`` (a ``blockprune.sensitivity.Sensitivity``), a move's worth is instead the
    time it saves per rise of the held-out loss it costs (at least ``LOSS_FLOOR``): sparsity goes
    where it costs the least accuracy per microsecond saved.

    Returns:
        ``(layers, budget_us or None, note or None)``.
    """
    free, levels, blocks, options = table.free, table.levels, table.blocks, table.options
    ceiling = levels[-1]
    fixed = dense_total = 0.0
    zeros = pool = 0.0
    for i, lp in enumerate(layers):
        if lp.view is None:
            continue
        dense_total += predictor.latency(lp, None, 0.0)
        if lp.pruned:
            pool += lp.n_weights
        if i not in free:  # a skipped weight has no block and sparsity 0: its dense time, no zeros
            fixed += predictor.latency(lp, lp.block_shape, lp.sparsity)
            zeros += lp.n_weights * lp.sparsity
    by_budget = overall is None
    budget = (budget_us if budget_us is not None else dense_total / speedup) if by_budget else None
    goal = None if by_budget else overall * pool
    level = {i: 0 for i in free}
    total = fixed + sum(options[i][0][0] for i in free)

    def met(total_us, zeros_now) -> bool:
        return total_us <= budget * (1 + 1e-9) if by_budget else zeros_now >= goal - 1e-6

    while not met(total, zeros):
        best = None
        for i in free:
            cur, n = level[i], layers[i].n_weights
            for j in range(cur + 1, len(levels)):
                saved = options[i][cur][0] - options[i][j][0]
                if sensitivity is None:
                    ratio = saved / (n * (levels[j] - levels[cur]))
                else:  # time saved per loss; where no move saves time, zeros per loss decide
                    name = layers[i].name
                    ratio = (saved + 1e-9 * n * (levels[j] - levels[cur])) / max(
                        sensitivity.cost(name, levels[j]) - sensitivity.cost(name, levels[cur]), LOSS_FLOOR)
                # Among equal savings the lower sparsity wins, so weights that buy no time share evenly.
                if best is None or ratio > best[0] + 1e-9 * abs(best[0]) or (
                        ratio >= best[0] - 1e-9 * abs(best[0]) and levels[j] < levels[best[2]]):
                    best = (ratio, i, j)
        if best is None or (by_budget and best[0] <= 0):
            break
        _, i, j = best
        cur, n = level[i], layers[i].n_weights
        if by_budget or sensitivity is not None:  # go no further along this weight than the budget (goal) needs
            j = next(k for k in range(cur + 1, j + 1)
                     if k == j or met(total - options[i][cur][0] + options[i][k][0],
                                      zeros + n * (levels[k] - levels[cur])))
        total += options[i][j][0] - options[i][cur][0]
        zeros += n * (levels[j] - levels[cur])
        level[i] = j
    sparsity = {i: levels[level[i]] for i in free}
    if not by_budget and zeros > goal + 0.5:  # give back the zeros the last step took too many, where it costs least
        total += _give_back(layers, sparsity, blocks, predictor, zeros - goal)
        zeros = goal
    if by_budget:  # undo steps the later ones made unnecessary
        for i in sorted(free, key=lambda k: layers[k].n_weights):
            while level[i] > 0 and met(total - options[i][level[i]][0] + options[i][level[i] - 1][0], zeros):
                total += options[i][level[i] - 1][0] - options[i][level[i]][0]
                level[i] -= 1
            sparsity[i] = levels[level[i]]
    out = list(layers)
    source = "budget" if by_budget else "allocated"
    for i in free:
        lp, s = layers[i], sparsity[i]
        if s == 0:
            why = (f"the latency budget of {budget:.0f} us is met without pruning it" if by_budget else
                   f"{overall:.0%} overall is reached faster by pruning other weights")
            out[i] = replace(lp, block_shape=None, sparsity=0.0, skip_code="budget_dense", skip_reason=f"kept dense: {why}",
                             source=source, est_sparse_us=lp.est_dense_us, measured_sparse_us=lp.measured_dense_us)
        else:
            out[i] = predictor.layer_plan(lp, predictor.fastest(lp, blocks[i], s)[1], s, source=source)
    note = None
    if by_budget and not met(total, zeros):
        note = (f"latency budget {budget:.0f} us is out of reach: predicted {total:.0f} us with every eligible weight "
                f"at sparsity {ceiling:.0%}")
    elif not by_budget and not met(total, zeros):
        note = (f"overall sparsity {overall:.0%} is out of reach: {zeros / pool:.1%} with every eligible weight "
                f"at sparsity {ceiling:.0%}")
    return out, budget, note


def _give_back(layers, sparsity: dict, blocks, predictor, excess: float, step: float = 0.01) -> float:
    """Lowers sparsities (in place) by ``excess`` zero weights in all, so an allocation lands on
    its overall sparsity, at the smaller predicted latency of two ways: all on the one weight
    where that costs least, or spread a ``step`` at a time onto the weight where each step costs
    least. Returns the latency added (us)."""
    def at(i, s):
        return predictor.fastest(layers[i], blocks[i], s)[0]

    def lowered(i, s, zeros):
        return max(0.0, math.floor((s - zeros / layers[i].n_weights) * 1e4) / 1e4)

    ways = []
    one = [(at(i, lowered(i, s, excess)) - at(i, s), i) for i, s in sparsity.items()
           if s * layers[i].n_weights >= excess]
    if one:
        added, i = min(one)
        ways.append((added, {**sparsity, i: lowered(i, sparsity[i], excess)}))
    spread, added, left = dict(sparsity), 0.0, excess
    while left > 0.5:
        best = None
        for i, s in spread.items():
            if s > 0:
                low = lowered(i, s, min(step * layers[i].n_weights, left))
                per_zero = (at(i, low) - at(i, s)) / (layers[i].n_weights * (s - low))
                best = min(best or (per_zero, i, low), (per_zero, i, low))
        _, i, low = best
        added += at(i, low) - at(i, spread[i])
        left -= layers[i].n_weights * (spread[i] - low)
        spread[i] = low
    ways.append((added, spread))
    added, chosen = min(ways, key=lambda w: w[0])
    sparsity.update(chosen)
    return added


def allocate_for_model(layers, predictor, table: LevelTable, model_us, budget_us, speedup, steps: int = 14,
                       sensitivity=None):
    """A latency budget on the whole model's predicted latency (``model_us(layers)[1]``): the
    largest matmul budget whose allocation's predicted model latency meets it, by bisection (the
    model-to-matmul ratio depends on the weight bytes an allocation keeps)."""
    dense_model, _ = model_us(layers)
    model_budget = budget_us if budget_us is not None else dense_model / speedup
    ceiling = table.levels[-1]
    dense_matmul = SparsityPlan("model", "functional", predictor.target, ceiling, tuple(layers)).predicted_us[0]

    def allocation(matmul_budget):
        out = allocate(layers, predictor, table, budget_us=max(matmul_budget, 1e-9), sensitivity=sensitivity)[0]
        return model_us(out)[1], out

    lo, hi = 0.0, dense_matmul
    best = allocation(lo)
    if best[0] > model_budget * (1 + 1e-6):
        note = (f"latency budget {model_budget:.0f} us is out of reach: predicted {best[0]:.0f} us for the whole "
                f"model with every eligible weight at sparsity {ceiling:.0%}")
        return best[1], model_budget, note
    for _ in range(steps):
        mid = (lo + hi) / 2
        tried = allocation(mid)
        if tried[0] <= model_budget * (1 + 1e-6):
            lo, best = mid, tried
        else:
            hi = mid
    return best[1], model_budget, None

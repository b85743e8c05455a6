"""The planning rules: choose a block shape and sparsity for every prunable weight of a model.

``plan(model, target)`` returns a ``SparsityPlan``: one ``LayerPlan`` per matrix-like weight,
either planned (block shape, sparsity, estimated speedup) or skipped with the reason. The plan
is a typed, saveable value (``to_json``/``from_json``) that the later stages read. This module
does not import TensorFlow; walking a live Keras model is delegated to ``blockprune.modelwalk``,
imported only inside ``plan()``.

Rules, in order, for each weight:

1. A weight that is not a matmul over an ``[in, out]`` view is skipped (``not_prunable``).
2. A user override that says ``skip`` (or sparsity 0) excludes it (``excluded``).
3. An override with an explicit ``block_shape`` is used as given (it must divide the view).
4. Otherwise the layer kind must be eligible for the target (``kind_not_eligible``), the weight
   must have at least the target's ``min_weights`` (``too_small``), and the block shape is the
   first of the target's ``block_shapes`` that divides the view (``no_block_divides``).

With a tuning profile the block shape is the fastest measured one. With a latency budget
(``latency_budget_us``/``speedup``) or an ``overall_sparsity``, per-weight sparsities are then
allocated by a greedy knapsack over the predicted latencies (``blockprune.plan.allocate``).

Example:
    >>> import keras
    >>> m = keras.Sequential([keras.Input((256,)), keras.layers.Dense(512), keras.layers.Dense(10)])
    >>> p = plan(m, "cpu-wide", sparsity=0.9)
    >>> [(lp.layer, lp.block_shape, lp.skip_code) for lp in p.layers]
    [('dense', (1, 64), None), ('dense_1', None, 'too_small')]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from .. import cost
from ..checks import SPARSITY_LADDER, check_block_shape, check_sparsity, fits, kept_blocks
from ..targets import TargetDescriptor, fast_runtimes, load_target
from .allocate import LevelTable, Predictor, ProfileReader, allocate, allocate_for_model
from .records import LayerPlan, SparsityPlan

__all__ = ["Override", "plan", "plan_sites"]


@dataclass(frozen=True)
class Override:
    """A per-layer change to what the target would choose.

    Attributes:
        block_shape: use this block shape (must divide the view); bypasses the target's
            eligible kinds and ``min_weights``, since the user asked for it explicitly.
        sparsity: use this sparsity instead of the plan-wide one; 0 excludes the weight.
        skip: leave the weight dense.

    Example:
        >>> Override(block_shape=(4, 1), sparsity=0.5)
        Override(block_shape=(4, 1), sparsity=0.5, skip=False)
    """

    block_shape: tuple[int, int] | None = None
    sparsity: float | None = None
    skip: bool = False

    @classmethod
    def parse(cls, value: "Override | Mapping[str, Any] | str", pattern: str) -> "Override":
        """An ``Override`` from itself, a dict, or the CLI spelling ``skip`` / ``block=4x1,sparsity=0.5``."""
        if isinstance(value, Override):
            return cls(value.block_shape and check_block_shape(value.block_shape, f"override {pattern!r}"),
                       None if value.sparsity is None else check_sparsity(value.sparsity, f"override {pattern!r}"),
                       bool(value.skip))
        if isinstance(value, str):
            return cls.parse(_parse_override_spec(value, pattern), pattern)
        if isinstance(value, Mapping):
            unknown = set(value) - {"block_shape", "sparsity", "skip"}
            if unknown:
                raise ValueError(f"override {pattern!r}: unknown keys {sorted(unknown)} "
                                 "(expected block_shape, sparsity, skip)")
            return cls.parse(cls(value.get("block_shape"), value.get("sparsity"), bool(value.get("skip", False))),
                             pattern)
        raise TypeError(f"override {pattern!r} must be an Override, a dict or a string, got {type(value).__name__}")


def _parse_override_spec(spec: str, pattern: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part == "skip":
            out["skip"] = True
            continue
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"override {pattern!r}: cannot read {part!r} (expected skip, block=RxC or sparsity=S)")
        if key == "block":
            rows, x, cols = val.lower().partition("x")
            if not (x and rows.isdigit() and cols.isdigit()):
                raise ValueError(f"override {pattern!r}: block={val!r} is not of the form RxC, e.g. 4x1")
            out["block_shape"] = (int(rows), int(cols))
        elif key == "sparsity":
            try:
                out["sparsity"] = float(val)
            except ValueError:
                raise ValueError(f"override {pattern!r}: sparsity={val!r} is not a number") from None
        else:
            raise ValueError(f"override {pattern!r}: unknown key {key!r} (expected skip, block or sparsity)")
    if not out:
        raise ValueError(f"override {pattern!r} is empty (expected skip, block=RxC or sparsity=S)")
    return out


def _compile_overrides(overrides: Mapping[str, Any] | None) -> list[tuple[str, re.Pattern, Override]]:
    compiled = []
    for pattern, value in (overrides or {}).items():
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"override keys must be non-empty layer names or regexes, got {pattern!r}")
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"override {pattern!r} is not a valid regular expression: {e}") from None
        compiled.append((pattern, rx, Override.parse(value, pattern)))
    return compiled


def _matching_override(site, compiled) -> tuple[str, Override] | None:
    names = (site.layer, f"{site.layer}/{site.weight}")
    for pattern, _, ov in compiled:  # an exact name wins over any regex
        if pattern in names:
            return pattern, ov
    for pattern, rx, ov in compiled:
        if any(rx.fullmatch(n) for n in names):
            return pattern, ov
    return None


def _plan_one(site, target: TargetDescriptor, sparsity: float, match, predictor: Predictor) -> LayerPlan:
    def _skip(code: str, reason: str, source: str = "target") -> LayerPlan:
        # A skipped weight still costs its dense time; the model-wide estimate counts it.
        dense_us = None
        if site.view is not None:
            dense_us = cost.estimate(site.view.view_shape, (1, 1), 0.0, target, positions=site.positions).dense_us
        return LayerPlan.of(site, block_shape=None, sparsity=0.0, skip_code=code, skip_reason=reason, source=source,
                            est_dense_us=dense_us, est_sparse_us=dense_us)

    where = f"Layer '{site.layer}' weight '{site.weight}'"
    if site.not_prunable or site.view is None:
        if match and (match[1].block_shape or match[1].sparsity):
            raise ValueError(f"{where}: override {match[0]!r} asks to prune a weight that cannot be pruned for "
                             f"target '{target.name}': {site.not_prunable}")
        return _skip("not_prunable", site.not_prunable or "no [in, out] view")
    ov = match[1] if match else None
    source = "override" if ov and (ov.block_shape or ov.sparsity is not None) else "target"
    if ov and (ov.skip or ov.sparsity == 0):
        why = "skip" if ov.skip else "sparsity=0"
        return _skip("excluded", f"excluded by the user (override {match[0]!r}: {why})", "override")
    s = ov.sparsity if ov and ov.sparsity is not None else sparsity
    view_shape = site.view.view_shape
    if ov and ov.block_shape:
        block = ov.block_shape
        if not fits(view_shape, block):
            raise ValueError(f"Layer '{site.layer}': block_shape={block} does not divide the [in, out] view "
                             f"{view_shape} of weight '{site.weight}' for target '{target.name}' "
                             f"(override {match[0]!r}; its rows must divide {view_shape[0]})")
    else:
        if site.kind not in target.layer_kinds:
            return _skip("kind_not_eligible",
                         f"{site.kind} layers are not eligible for target '{target.name}' "
                         f"(it speeds up: {', '.join(target.layer_kinds)})")
        if not target.large_enough(site):
            n, macs = site.n_weights, site.n_weights * site.positions
            also = f" and {macs} multiply-adds per sample < min_macs={target.min_macs}" if target.min_macs else ""
            return _skip("too_small", f"{n} weights < min_weights={target.min_weights}{also} of target '{target.name}'")
        view, dividing = target.pattern(site)
        if not dividing:
            tried = ", ".join(f"({b[0]}, {b[1]})" for b in target.block_shapes)
            if view is not site.view:
                tried = f"channel blocks of {', '.join(map(str, target.channel_blocks))} output channels"
            return _skip("no_block_divides",
                         f"no block shape of target '{target.name}' ({tried}) divides the view {view.view_shape}")
        if view != site.view:  # a KxK convolution in channel blocks: planned over its channel-major view
            site = replace(site.ref(), view=view)
        block = dividing[0]
        if predictor.measured is not None:
            _, fastest = predictor.fastest(site, dividing, s)
            if predictor.measured.latency(site, fastest, s) is not None:  # ties go to the target's order
                block, source = fastest, "profile"
    rows = site.view.view_shape[0] // block[0]  # block rows divide the view's rows (``fits``)
    if target.balanced and kept_blocks(rows, s) < 1:
        why = (f"sparsity={s:g} keeps none of the {rows} blocks of a block-column of its view "
               f"{site.view.view_shape} in ({block[0]}, {block[1]}) blocks")
        if source == "override":
            raise ValueError(f"{where}: {why} for target '{target.name}' (override {match[0]!r}); lower the sparsity")
        return _skip("too_few_blocks", f"{why} for target '{target.name}'")
    lp = LayerPlan.of(site, block_shape=block, sparsity=s, skip_code=None, skip_reason=None, source=source)
    return predictor.layer_plan(lp, block, s)


def _check_sensitivity(sensitivity, *budgets) -> None:
    if sensitivity is not None and all(b is None for b in budgets):
        raise ValueError("a sensitivity guides an allocation: give it with a latency budget, a speedup or an "
                         "overall sparsity")


def plan_sites(sites: Iterable, target: str | os.PathLike | TargetDescriptor, sparsity: float = 0.9,
               overrides: Mapping[str, Any] | None = None, model_name: str = "model",
               model_kind: str = "functional", profile=None, runtime: str | None = None, batch: int = 1,
               threads: int = 1, latency_budget_us: float | None = None,
               speedup: float | None = None, overall_sparsity: float | None = None,
               sensitivity=None) -> SparsityPlan:
    """Plans a list of ``WeightSite``-like records (no Keras needed; ``plan`` walks the model).

    Args and Raises: as for ``plan``.
    """
    target = load_target(target)
    _check_sensitivity(sensitivity, latency_budget_us, speedup, overall_sparsity)
    sparsity = check_sparsity(sparsity, f"target '{target.name}'")
    if sum(v is not None for v in (latency_budget_us, speedup, overall_sparsity)) > 1:
        raise ValueError("give one of a latency budget, a speedup or an overall sparsity, not several")
    if speedup is not None and (isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or speedup < 1):
        raise ValueError(f"speedup={speedup!r} must be a number >= 1 for target '{target.name}'")
    if latency_budget_us is not None and not latency_budget_us > 0:
        raise ValueError(f"latency_budget_us={latency_budget_us!r} must be positive for target '{target.name}'")
    if overall_sparsity is not None:
        overall_sparsity = check_sparsity(overall_sparsity, f"target '{target.name}'", "overall_sparsity")
        if overall_sparsity > sparsity:
            raise ValueError(f"overall_sparsity={overall_sparsity} is above the per-weight ceiling "
                             f"sparsity={sparsity} for target '{target.name}' (give a sparsity above it, e.g. "
                             f"{min(0.99, overall_sparsity + 0.05):.2f})")
    runtime = runtime or (fast_runtimes(target) or ["tflite"])[0]
    measured = None
    if profile is not None:
        if profile.target != target.name:
            raise ValueError(f"the profile was measured for target '{profile.target}', not '{target.name}'")
        measured = ProfileReader(profile, runtime, batch, threads)
    predictor = Predictor(target, runtime, measured)
    compiled = _compile_overrides(overrides)
    sites = list(sites)
    whole = None  # (key, runtime, batch, threads) of this model's whole-model measurements in the profile
    if profile is not None:
        from ..profile import model_key

        candidate = (model_key(model_name, sites), runtime, batch, threads)
        whole = candidate if profile.model_points(*candidate) else None

    def model_us(layers_) -> tuple[float, float]:
        p = SparsityPlan(model_name, model_kind, target, sparsity, tuple(layers_))
        dense_matmul, sparse_matmul, _ = p.predicted_us
        return (profile.model_latency(*whole, dense_matmul, p.dense_weight_bytes),
                profile.model_latency(*whole, sparse_matmul, p.weight_bytes))
    used: set[str] = set()
    layers = []
    for site in sites:
        match = _matching_override(site, compiled)
        if match:
            used.add(match[0])
        layers.append(_plan_one(site, target, sparsity, match, predictor))
    unused = [p for p, _, _ in compiled if p not in used]
    if unused:
        known = ", ".join(f"{s.layer}/{s.weight}" for s in sites) or "none"
        raise ValueError(f"override {unused[0]!r} matches no weight of model '{model_name}' "
                         f"(weights: {known})")
    notes = []
    budget = None
    if latency_budget_us is not None or speedup is not None or overall_sparsity is not None:
        # Measured levels, plus 1% steps between them (the profile interpolates), so the allocation
        # can land close to the budget instead of jumping between coarse levels.
        measured_levels = profile.sparsities() if profile is not None and profile.sparsities() else SPARSITY_LADDER
        levels = sorted(set(measured_levels) | {round(0.01 * k, 2) for k in range(1, 100)})
        table = LevelTable.build(layers, predictor, sparsity, levels)
        if whole and (latency_budget_us is not None or speedup is not None):
            layers, budget, note = allocate_for_model(layers, predictor, table, model_us, latency_budget_us, speedup,
                                                      sensitivity=sensitivity)
        else:
            layers, budget, note = allocate(layers, predictor, table, budget_us=latency_budget_us,
                                             speedup=speedup, overall=overall_sparsity, sensitivity=sensitivity)
        if note:
            notes.append(note)
        if sensitivity is not None:
            notes.append(f"sparsity allocated where it costs the least held-out loss per microsecond saved "
                         f"(each weight pruned alone, one shot, on {sensitivity.samples} samples of "
                         f"'{sensitivity.data}')")

    slow = sorted({lp.kind for lp in layers if lp.pruned and not predictor.runs_sparse(lp)})
    if slow:
        notes.append(f"{', '.join(slow)} weights are pruned but run dense on {runtime} (no lowering for them): "
                     "pruning them saves size, not time")
    if model_kind == "subclassed":
        notes.append("subclassed model: planned through its tracked layers; pruning needs a Sequential or "
                     "functional model (rebuild it with keras.Input)")
    if not any(lp.pruned for lp in layers):
        notes.append(f"nothing is pruned: no weight of this model fits target '{target.name}'")
    return SparsityPlan(model_name, model_kind, target, sparsity, tuple(layers), tuple(notes), budget,
                        overall_sparsity, model_us(layers) if whole else None)


def plan(model, target: str | os.PathLike | TargetDescriptor, sparsity: float = 0.9,
         overrides: Mapping[str, Any] | None = None, profile=None, runtime: str | None = None, batch: int = 1,
         threads: int = 1, latency_budget_us: float | None = None, speedup: float | None = None,
         overall_sparsity: float | None = None, sensitivity=None) -> SparsityPlan:
    """Chooses a block shape and sparsity for every prunable weight of a Keras model.

    Args:
        model: a built Keras 3 model: Sequential, functional, nested, or subclassed (planned
            through its tracked layers).
        target: a shipped target name, a path to a ``.toml`` descriptor, or a descriptor.
        sparsity: fraction of blocks to zero in each planned weight, in ``[0, 1)`` (with a
            latency budget or an overall sparsity: the highest sparsity any weight may get).
        overrides: ``{pattern: Override | dict | "block=4x1,sparsity=0.5" | "skip"}``. A pattern
            is a layer name, ``layer/weight``, or a regex matched in full against either; an
            exact name wins over a regex, and among regexes the first listed wins. Every
            pattern must match some weight.
        profile: a ``blockprune.profile.Profile`` from ``blockprune tune``: each weight gets the
            allowed block shape with the lowest measured latency, and the table shows measured
            latencies.
        runtime: which runtime's measurements to use (default: the target's first fast one).
        batch, threads: the measurement conditions to read from the profile.
        latency_budget_us: allocate per-weight sparsity so the predicted matmul latency (from
            the profile, else the cost model) meets this budget, pruning as few weights as possible.
        speedup: the budget as a speedup over dense (``--speedup 3``).
        overall_sparsity: allocate per-weight sparsity (each at most ``sparsity``) so this
            fraction of the weights the target can prune is zero, at the lowest predicted
            latency: weights whose sparsity buys the most time get the most (with a profile,
            each at its fastest measured block shape there).
        sensitivity: with a budget, a speedup or an overall sparsity: a
            ``blockprune.sensitivity.Sensitivity``, or a ``blockprune.data.Dataset`` to measure
            one on (its test split): sparsity then goes where it costs the least held-out loss
            per microsecond saved.

    Returns:
        A ``SparsityPlan`` with one ``LayerPlan`` per matrix-like weight.

    Raises:
        TypeError: ``model`` is not a Keras model, or an argument has the wrong type.
        ValueError: sparsity outside ``[0, 1)``, a bad override (unknown pattern, block shape
            that does not divide), a profile for another target, or an unbuilt model.
        blockprune.targets.TargetError: unknown or invalid target.

    Example:
        >>> p = plan(model, "simd-4x1", sparsity=0.9, overrides={"dense_2": "skip"})  # doctest: +SKIP
        >>> print(p.summary())                                                     # doctest: +SKIP
    """
    from ..modelwalk import find_weights, model_kind

    target = load_target(target)
    sites = find_weights(model)
    common = dict(model_name=model.name, model_kind=model_kind(model), profile=profile, runtime=runtime,
                  batch=batch, threads=threads)
    _check_sensitivity(sensitivity, latency_budget_us, speedup, overall_sparsity)
    if sensitivity is not None and not hasattr(sensitivity, "cost"):  # a dataset: measure on the target's choice
        from ..sensitivity import measure_sensitivity

        sensitivity = measure_sensitivity(model, plan_sites(sites, target, sparsity, overrides, **common), sensitivity)
    return plan_sites(sites, target, sparsity, overrides, latency_budget_us=latency_budget_us, speedup=speedup,
                      overall_sparsity=overall_sparsity, sensitivity=sensitivity, **common)

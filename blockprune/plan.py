"""The planning pass: choose a block shape and sparsity for every prunable weight of a model.

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
allocated by a greedy knapsack over the predicted latencies (``_allocate``).

Example:
    >>> import keras
    >>> m = keras.Sequential([keras.Input((256,)), keras.layers.Dense(512), keras.layers.Dense(10)])
    >>> p = plan(m, "cpu-wide", sparsity=0.9)
    >>> [(lp.layer, lp.block_shape, lp.skip_code) for lp in p.layers]
    [('dense', (1, 64), None), ('dense_1', None, 'too_small')]
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from . import cost
from ._text import text_table
from ._atomic import atomic_path
from .targets import TargetDescriptor, fast_runtimes, load_target, parse_target, runs_sparse
from .views import WeightView

__all__ = ["LayerPlan", "Override", "SparsityPlan", "SKIP_CODES", "plan", "plan_sites", "check_sparsity",
           "check_block_shape"]

PLAN_FORMAT_VERSION = 1

#: Why a weight is left dense.
SKIP_CODES = {
    "not_prunable": "the weight is not a matmul over an [in, out] view",
    "excluded": "excluded by the user",
    "kind_not_eligible": "the layer kind is not eligible for this target",
    "too_small": "fewer weights than the target's min_weights",
    "no_block_divides": "no allowed block shape divides the [in, out] view",
    "budget_dense": "the latency budget or the overall sparsity is met without pruning it",
}

#: Sparsity levels the latency budget allocates from when no profile gives its own.
BUDGET_LEVELS = (0.5, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class _Measured:
    """How to read a tuning profile for one plan."""

    profile: Any
    runtime: str
    batch: int
    threads: int

    def latency(self, lp_or_site, block, sparsity) -> float | None:
        view = lp_or_site.view.view_shape
        rows = self.batch * lp_or_site.positions
        return self.profile.latency(self.runtime, view, rows, self.threads, block, sparsity)


def check_sparsity(value: Any, where: str = "", name: str = "sparsity") -> float:
    """Validates a sparsity in ``[0, 1)`` (for plans, overrides and schedules alike).

    Args:
        value: the sparsity given.
        where: what it belongs to, for the message (e.g. ``"target 'cpu-wide'"``).
        name: the argument's name in the message (e.g. ``"final_sparsity"``).

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


def check_block_shape(value: Any, where: str = "", name: str = "block_shape") -> tuple[int, int]:
    """Validates a ``(rows, cols)`` block shape of two positive integers (for plans and wrappers).

    Raises:
        ValueError: anything else; the message names ``where``.
    """
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        suffix = f" for {where}" if where else ""
        raise ValueError(f"{name}={value!r} is not two positive integers (rows, cols){suffix}")
    return (int(value[0]), int(value[1]))


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


@dataclass(frozen=True)
class LayerPlan:
    """The plan for one matrix-like weight.

    Attributes:
        layer: path of the graph-node layer owning the weight (what a pruning wrapper wraps).
        weight: the weight's name relative to ``layer``.
        layer_class: class of the layer that holds the weight.
        kind: layer kind (``dense``, ``conv1x1``, ``conv``, ``einsum_dense``, ``custom``, ``other``).
        kernel_shape: the weight's shape as Keras stores it.
        view: its ``[in, out]`` view (axis permutation and split), None if it has none.
        block_shape: chosen ``(rows, cols)`` block, None when skipped.
        sparsity: target fraction of zero blocks (0.0 when skipped).
        skip_code: one of ``SKIP_CODES`` when skipped, else None.
        skip_reason: a sentence saying why it is skipped, else None.
        source: ``"target"`` or ``"override"``: who chose the block shape and sparsity.
        positions: matmul rows per sample, used by the estimate.
        est_dense_us: cost-model estimate of the dense matmul (microseconds, batch 1).
        est_sparse_us: cost-model estimate of the block-sparse matmul.
        measured_dense_us, measured_sparse_us: latencies from a tuning profile, when planned
            with one (``source == "profile"``).
    """

    layer: str
    weight: str
    layer_class: str
    kind: str
    kernel_shape: tuple[int, ...]
    view: WeightView | None
    block_shape: tuple[int, int] | None
    sparsity: float
    skip_code: str | None
    skip_reason: str | None
    source: str = "target"
    positions: int = 1
    est_dense_us: float | None = None
    est_sparse_us: float | None = None
    measured_dense_us: float | None = None
    measured_sparse_us: float | None = None

    @property
    def name(self) -> str:
        """``layer/weight``, unique within a plan."""
        return f"{self.layer}/{self.weight}"

    @property
    def pruned(self) -> bool:
        return self.skip_code is None

    @property
    def view_shape(self) -> tuple[int, int] | None:
        return self.view.view_shape if self.view else None

    @property
    def n_weights(self) -> int:
        return math.prod(self.kernel_shape)

    @property
    def est_speedup(self) -> float | None:
        if self.est_dense_us is None or not self.est_sparse_us:
            return None
        return self.est_dense_us / self.est_sparse_us

    def latency_us(self) -> tuple[float | None, float | None, str]:
        """``(dense, sparse, "measured" | "estimate")`` for this weight."""
        if self.measured_dense_us is not None:
            sparse = self.measured_sparse_us if self.pruned else self.measured_dense_us
            return self.measured_dense_us, sparse, "measured"
        return self.est_dense_us, self.est_sparse_us if self.pruned else self.est_dense_us, "estimate"

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "weight": self.weight,
            "layer_class": self.layer_class,
            "kind": self.kind,
            "kernel_shape": list(self.kernel_shape),
            "view_shape": list(self.view_shape) if self.view_shape else None,
            "view_perm": list(self.view.perm) if self.view else None,
            "view_in_axes": self.view.n_in_axes if self.view else None,
            "block_shape": list(self.block_shape) if self.block_shape else None,
            "sparsity": self.sparsity,
            "skip_code": self.skip_code,
            "skip_reason": self.skip_reason,
            "source": self.source,
            "positions": self.positions,
            "estimate": None if self.est_dense_us is None else {
                "kind": "cost-model estimate, batch 1",
                "dense_us": self.est_dense_us,
                "sparse_us": self.est_sparse_us,
                "speedup": self.est_speedup,
            },
            "measured": None if self.measured_dense_us is None else {
                "kind": "tuning profile",
                "dense_us": self.measured_dense_us,
                "sparse_us": self.measured_sparse_us,
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerPlan":
        kernel_shape = tuple(int(v) for v in d["kernel_shape"])
        view = None
        if d.get("view_perm") is not None:
            view = WeightView(kernel_shape, tuple(d["view_perm"]), int(d["view_in_axes"]))
        est = d.get("estimate")
        measured = d.get("measured")
        return cls(
            layer=d["layer"], weight=d["weight"], layer_class=d["layer_class"], kind=d["kind"],
            kernel_shape=kernel_shape, view=view,
            block_shape=tuple(d["block_shape"]) if d.get("block_shape") else None,
            sparsity=float(d["sparsity"]), skip_code=d.get("skip_code"), skip_reason=d.get("skip_reason"),
            source=d.get("source", "target"), positions=int(d.get("positions", 1)),
            est_dense_us=est["dense_us"] if est else None, est_sparse_us=est["sparse_us"] if est else None,
            measured_dense_us=measured["dense_us"] if measured else None,
            measured_sparse_us=measured["sparse_us"] if measured else None,
        )


@dataclass(frozen=True)
class SparsityPlan:
    """A per-weight block-sparsity plan for one model and one target.

    Attributes:
        model: the model's name.
        model_kind: ``sequential``, ``functional`` or ``subclassed``.
        target: the target descriptor the plan was made for (saved inside the plan).
        sparsity: the plan-wide sparsity requested.
        layers: one ``LayerPlan`` per matrix-like weight, in layer order.
        notes: remarks a person should read (e.g. about a subclassed model).

    Example:
        >>> p2 = SparsityPlan.from_json(p.to_json())   # doctest: +SKIP
        >>> p2 == p                                     # doctest: +SKIP
        True
    """

    model: str
    model_kind: str
    target: TargetDescriptor
    sparsity: float
    layers: tuple[LayerPlan, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    budget_us: float | None = None
    overall_target: float | None = None
    model_us: tuple[float, float] | None = None

    @property
    def predicted_us(self) -> tuple[float, float, str] | None:
        """``(dense, sparse, kind)``: predicted latency of all matmuls with a view, from the
        tuning profile where the plan used one (``"measured"``), else the cost model."""
        dense = sparse = 0.0
        kinds = set()
        for lp in self.layers:
            d, sp, kind = lp.latency_us()
            if d is None:
                continue
            dense, sparse = dense + d, sparse + sp
            kinds.add(kind)
        if not kinds:
            return None
        return dense, sparse, "measured" if kinds == {"measured"} else ("estimate" if kinds == {"estimate"} else "mixed")

    @property
    def pruned_layers(self) -> list[LayerPlan]:
        return [lp for lp in self.layers if lp.pruned]

    @property
    def skipped_layers(self) -> list[LayerPlan]:
        return [lp for lp in self.layers if not lp.pruned]

    def get(self, layer: str, weight: str | None = None) -> LayerPlan:
        """The plan entry for ``layer`` (and ``weight``, when the layer has several)."""
        matches = [lp for lp in self.layers if lp.layer == layer and (weight is None or lp.weight == weight)]
        if len(matches) != 1:
            known = ", ".join(lp.name for lp in self.layers)
            what = f"{layer}/{weight}" if weight else layer
            raise KeyError(f"{len(matches)} plan entries match {what!r} (entries: {known})")
        return matches[0]

    @property
    def overall_sparsity(self) -> float:
        """Fraction of all matrix-like weights planned to be zero."""
        total = sum(lp.n_weights for lp in self.layers)
        zero = sum(lp.n_weights * lp.sparsity for lp in self.pruned_layers)
        return zero / total if total else 0.0

    @property
    def weight_bytes(self) -> float:
        """Bytes of the matrix-like weights' values the plan keeps (indices not counted)."""
        return sum(lp.n_weights * (1 - lp.sparsity) for lp in self.layers if lp.view) * self.target.dtype_bytes

    @property
    def dense_weight_bytes(self) -> float:
        """Bytes of the matrix-like weights' values, all kept (the dense model)."""
        return sum(lp.n_weights for lp in self.layers if lp.view) * self.target.dtype_bytes

    @property
    def eligible_sparsity(self) -> float:
        """Fraction zero of the weights the target can prune (pruned ones and those an allocation kept dense)."""
        pool = [lp for lp in self.layers if lp.pruned or lp.skip_code == "budget_dense"]
        total = sum(lp.n_weights for lp in pool)
        return sum(lp.n_weights * lp.sparsity for lp in pool) / total if total else 0.0

    @property
    def est_speedup(self) -> float | None:
        """Cost-model estimate over all matrix-like weights (skipped ones count as dense)."""
        dense = sparse = 0.0
        for lp in self.layers:
            if lp.est_dense_us is None:
                continue
            dense += lp.est_dense_us
            sparse += lp.est_sparse_us if lp.pruned else lp.est_dense_us
        return dense / sparse if sparse else None

    def to_dict(self) -> dict[str, Any]:
        target = self.target.to_dict()
        target.pop("source", None)
        return {
            "format": "blockprune-plan",
            "version": PLAN_FORMAT_VERSION,
            "model": self.model,
            "model_kind": self.model_kind,
            "target": self.target.name,
            "target_descriptor": target,
            "sparsity": self.sparsity,
            "overall_sparsity": self.overall_sparsity,
            "estimated_speedup": self.est_speedup,
            "budget_us": self.budget_us,
            "overall_target": self.overall_target,
            "predicted_model_us": None if self.model_us is None else dict(zip(("dense", "sparse"), self.model_us)),
            "eligible_sparsity": self.eligible_sparsity,
            "predicted_us": None if self.predicted_us is None else dict(zip(("dense", "sparse", "kind"),
                                                                           self.predicted_us)),
            "notes": list(self.notes),
            "layers": [lp.to_dict() for lp in self.layers],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The plan as JSON text (see ``from_json``)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str, source: str = "<plan json>") -> "SparsityPlan":
        """Reads a plan written by ``to_json``.

        Raises:
            ValueError: the text is not a blockprune plan, or a field is missing or invalid.
        """
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON: {e}") from None
        if not isinstance(d, dict) or d.get("format") != "blockprune-plan":
            raise ValueError(f"{source}: not a blockprune plan (missing \"format\": \"blockprune-plan\")")
        if d.get("version") != PLAN_FORMAT_VERSION:
            raise ValueError(f"{source}: plan format version {d.get('version')!r} is not supported "
                             f"(this blockprune reads version {PLAN_FORMAT_VERSION})")
        try:
            target = parse_target(d["target_descriptor"], f"{source} (target_descriptor)")
            return cls(model=d["model"], model_kind=d["model_kind"], target=target, sparsity=float(d["sparsity"]),
                       layers=tuple(LayerPlan.from_dict(x) for x in d["layers"]), notes=tuple(d.get("notes", ())),
                       budget_us=d.get("budget_us"), overall_target=d.get("overall_target"),
                       model_us=(d["predicted_model_us"]["dense"], d["predicted_model_us"]["sparse"])
                       if d.get("predicted_model_us") else None)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: malformed plan: missing or invalid field {e}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the plan as JSON atomically (a temporary file, then a rename)."""
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SparsityPlan":
        """Reads a plan file written by ``save``."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"{path}: cannot read plan: {e.strerror or e}") from None
        return cls.from_json(text, str(path))

    def summary(self) -> str:
        """A table a person can read: one row per weight, skipped ones with their reason."""
        t = self.target
        head = [
            f"Plan for model '{self.model}' ({self.model_kind}) on target '{t.name}': {t.description}",
            f"  {len(self.pruned_layers)} of {len(self.layers)} matrix-like weights pruned; "
            f"{'per-weight ceiling' if self.overall_target is not None else 'requested sparsity'} "
            f"{self.sparsity:.0%}, overall {self.overall_sparsity:.1%} of all their weights zero",
        ]
        if self.overall_target is not None:
            head.append(f"  allocated for {self.overall_target:.0%} overall of the weights the target can prune "
                        f"(reached {self.eligible_sparsity:.1%}), at most {self.sparsity:.0%} per weight, "
                        "at the lowest predicted latency")
        if self.est_speedup is not None:
            head.append(f"  estimated speedup of all matmuls {self.est_speedup:.2f}x on {t.hardware} "
                        "(cost-model ESTIMATE, batch 1; `blockprune bench` measures)")
        predicted = self.predicted_us
        budget = f" for a budget of {self.budget_us:.0f} us" if self.budget_us is not None else ""
        if self.model_us is not None:
            head.append(f"  predicted model latency {self.model_us[1]:.0f} us vs {self.model_us[0]:.0f} us dense "
                        f"({self.model_us[0] / self.model_us[1]:.2f}x, from whole-model measurements){budget}")
            budget = ""
        if predicted and (budget or self.overall_target is not None or predicted[2] != "estimate"):
            head.append(f"  predicted matmul latency {predicted[1]:.0f} us vs {predicted[0]:.0f} us dense "
                        f"({predicted[0] / predicted[1]:.2f}x, {predicted[2]}){budget}")
        head.extend(f"  note: {n}" for n in self.notes)
        measured = any(lp.measured_dense_us is not None for lp in self.layers)
        speed_head = "measured us (dense->sparse)" if measured else "est. speedup"
        rows = [("layer/weight", "kind", "view [in,out]", "block", "sparsity", speed_head, "note")]
        for lp in self.layers:
            view = "x".join(map(str, lp.view_shape)) if lp.view_shape else "x".join(map(str, lp.kernel_shape))
            if lp.pruned:
                block = f"({lp.block_shape[0]}, {lp.block_shape[1]})"
                speed = f"~{lp.est_speedup:.1f}x" if lp.est_speedup else "-"
                if measured:
                    speed = (f"{lp.measured_dense_us:.0f}->{lp.measured_sparse_us:.0f}"
                             if lp.measured_sparse_us is not None else "not measured")
                note = {"override": "override", "profile": "fastest measured", "budget": "budget",
                        "allocated": "allocated"}.get(lp.source, "")
                rows.append((lp.name, lp.kind, view, block, f"{lp.sparsity:.0%}", speed, note))
            else:
                rows.append((lp.name, lp.kind, view, "-", "dense", "-", f"skipped: {lp.skip_reason}"))
        return "\n".join(head + ["", text_table(rows, rule=True)])


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# --------------------------------------------------------------------------- planning

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


def _divides(view_shape: tuple[int, int], block: tuple[int, int]) -> bool:
    return view_shape[0] % block[0] == 0 and view_shape[1] % block[1] == 0


@dataclass(frozen=True)
class _Predictor:
    """Predicted latency of one weight's matmul: the profile where it measured one, else the cost
    model. A weight whose kind the runtime's lowering leaves dense costs its dense time."""

    target: TargetDescriptor
    runtime: str
    measured: _Measured | None = None

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


def _plan_one(site, target: TargetDescriptor, sparsity: float, match, predictor: _Predictor) -> LayerPlan:
    def _skip(code: str, reason: str, source: str = "target") -> LayerPlan:
        # A skipped weight still costs its dense time; the model-wide estimate counts it.
        dense_us = None
        if site.view is not None:
            dense_us = cost.estimate(site.view.view_shape, (1, 1), 0.0, target, positions=site.positions).dense_us
        return LayerPlan(site.layer, site.weight, site.layer_class, site.kind, site.kernel_shape, site.view,
                         None, 0.0, code, reason, source, site.positions, dense_us, dense_us)

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
        if not _divides(view_shape, block):
            raise ValueError(f"Layer '{site.layer}': block_shape={block} does not divide the [in, out] view "
                             f"{view_shape} of weight '{site.weight}' for target '{target.name}' "
                             f"(override {match[0]!r})")
    else:
        if site.kind not in target.layer_kinds:
            return _skip("kind_not_eligible",
                         f"{site.kind} layers are not eligible for target '{target.name}' "
                         f"(it speeds up: {', '.join(target.layer_kinds)})")
        n = math.prod(site.kernel_shape)
        if n < target.min_weights:
            return _skip("too_small", f"{n} weights < min_weights={target.min_weights} of target '{target.name}'")
        dividing = _dividing_blocks(view_shape, target)
        if not dividing:
            tried = ", ".join(f"({b[0]}, {b[1]})" for b in target.block_shapes)
            return _skip("no_block_divides",
                         f"no block shape of target '{target.name}' ({tried}) divides the view {view_shape}")
        block = dividing[0]
        if predictor.measured is not None:
            _, fastest = predictor.fastest(site, dividing, s)
            if predictor.measured.latency(site, fastest, s) is not None:  # ties go to the target's order
                block, source = fastest, "profile"
    lp = LayerPlan(site.layer, site.weight, site.layer_class, site.kind, site.kernel_shape, site.view,
                   block, s, None, None, source, site.positions)
    return predictor.layer_plan(lp, block, s)


def _dividing_blocks(view_shape, target) -> list[tuple[int, int]]:
    return [b for b in target.block_shapes if _divides(view_shape, b)]


@dataclass(frozen=True)
class _Levels:
    """What an allocation chooses from: the weights it may change (``free``), the sparsity
    levels (0 first, the ceiling last), each weight's candidate blocks, and per weight and level
    the predicted ``(us, block)``. Independent of the budget, so a search over budgets builds it once."""

    free: list[int]
    levels: list[float]
    blocks: dict
    options: dict

    @classmethod
    def build(cls, layers: list[LayerPlan], predictor: _Predictor, ceiling: float, levels) -> "_Levels":
        free = [i for i, lp in enumerate(layers) if lp.pruned and lp.source != "override"]
        levels = [0.0] + sorted({lv for lv in levels if 0 < lv < ceiling} | {ceiling})
        if predictor.measured is None:  # the cost model does not rank block shapes: keep the target's choice
            blocks = {i: [layers[i].block_shape] for i in free}
        else:
            blocks = {i: _dividing_blocks(layers[i].view_shape, predictor.target) or [layers[i].block_shape]
                      for i in free}
        options = {i: [(predictor.latency(layers[i], None, 0.0), None)]
                   + [predictor.fastest(layers[i], blocks[i], lv) for lv in levels[1:]] for i in free}
        return cls(free, levels, blocks, options)


def _allocate(layers: list[LayerPlan], predictor: _Predictor, table: _Levels, *,
              budget_us: float | None = None, speedup: float | None = None, overall: float | None = None):
    """Chooses per-weight sparsities (a greedy knapsack over the weights the target chose).

    With a latency budget (``budget_us`` or ``speedup``), the predicted latency must meet it while
    pruning as few weights as possible; with an ``overall`` sparsity, that fraction of the
    eligible weights must be zero at the lowest predicted latency. Each step takes the move (one
    weight, to any higher sparsity level) with the largest predicted saving per extra pruned
    weight: looking past the next level lets a lowering that is slow at low sparsity and fast at
    high sparsity be chosen. With a profile, each level uses the fastest measured block there.

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
                ratio = (options[i][cur][0] - options[i][j][0]) / (n * (levels[j] - levels[cur]))
                # Among equal savings the lower sparsity wins, so weights that buy no time share evenly.
                if best is None or ratio > best[0] + 1e-9 * abs(best[0]) or (
                        ratio >= best[0] - 1e-9 * abs(best[0]) and levels[j] < levels[best[2]]):
                    best = (ratio, i, j)
        if best is None or (by_budget and best[0] <= 0):
            break
        _, i, j = best
        cur, n = level[i], layers[i].n_weights
        if by_budget:  # go no further along this weight than the budget needs
            j = next(k for k in range(cur + 1, j + 1)
                     if k == j or met(total - options[i][cur][0] + options[i][k][0], zeros))
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


def _allocate_for_model(layers, predictor, table: _Levels, model_us, budget_us, speedup, steps: int = 14):
    """A latency budget on the whole model's predicted latency (``model_us(layers)[1]``): the
    largest matmul budget whose allocation's predicted model latency meets it, by bisection (the
    model-to-matmul ratio depends on the weight bytes an allocation keeps)."""
    dense_model, _ = model_us(layers)
    model_budget = budget_us if budget_us is not None else dense_model / speedup
    ceiling = table.levels[-1]
    dense_matmul = SparsityPlan("model", "functional", predictor.target, ceiling, tuple(layers)).predicted_us[0]

    def allocation(matmul_budget):
        out = _allocate(layers, predictor, table, budget_us=max(matmul_budget, 1e-9))[0]
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


def plan_sites(sites: Iterable, target: str | os.PathLike | TargetDescriptor, sparsity: float = 0.9,
               overrides: Mapping[str, Any] | None = None, model_name: str = "model",
               model_kind: str = "functional", profile=None, runtime: str | None = None, batch: int = 1,
               threads: int = 1, latency_budget_us: float | None = None,
               speedup: float | None = None, overall_sparsity: float | None = None) -> SparsityPlan:
    """Plans a list of ``WeightSite``-like records (no Keras needed; ``plan`` walks the model).

    Args and Raises: as for ``plan``.
    """
    target = load_target(target)
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
        measured = _Measured(profile, runtime, batch, threads)
    predictor = _Predictor(target, runtime, measured)
    compiled = _compile_overrides(overrides)
    sites = list(sites)
    whole = None  # (key, runtime, batch, threads) of this model's whole-model measurements in the profile
    if profile is not None:
        from .profile import model_key

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
        measured_levels = profile.sparsities() if profile is not None and profile.sparsities() else BUDGET_LEVELS
        levels = sorted(set(measured_levels) | {round(0.01 * k, 2) for k in range(1, 100)})
        table = _Levels.build(layers, predictor, sparsity, levels)
        if whole and (latency_budget_us is not None or speedup is not None):
            layers, budget, note = _allocate_for_model(layers, predictor, table, model_us, latency_budget_us, speedup)
        else:
            layers, budget, note = _allocate(layers, predictor, table, budget_us=latency_budget_us,
                                             speedup=speedup, overall=overall_sparsity)
        if note:
            notes.append(note)
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
         overall_sparsity: float | None = None) -> SparsityPlan:
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
    from .modelwalk import find_weights, model_kind

    target = load_target(target)
    sites = find_weights(model)
    return plan_sites(sites, target, sparsity, overrides, model_name=model.name, model_kind=model_kind(model),
                      profile=profile, runtime=runtime, batch=batch, threads=threads,
                      latency_budget_us=latency_budget_us, speedup=speedup, overall_sparsity=overall_sparsity)

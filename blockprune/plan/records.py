"""Plan records: ``LayerPlan`` (one weight) and ``SparsityPlan`` (a model), with their JSON form
and the summary table. The planner (``rules``) and the allocator (``allocate``) make them; every
later stage reads them. This module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .._atomic import write_text_atomic
from .._text import text_table
from ..targets import TargetDescriptor, parse_target
from ..views import WeightRef, WeightView

__all__ = ["LayerPlan", "SparsityPlan", "SKIP_CODES", "PLAN_FORMAT_VERSION"]

PLAN_FORMAT_VERSION = 1

#: Why a weight is left dense.
SKIP_CODES = {
    "not_prunable": "the weight is not a matmul over an [in, out] view",
    "excluded": "excluded by the user",
    "kind_not_eligible": "the layer kind is not eligible for this target",
    "too_small": "fewer weights than the target's min_weights (and fewer multiply-adds than its min_macs)",
    "too_few_blocks": "the sparsity would zero every block of a block-column",
    "no_block_divides": "no allowed block shape divides the [in, out] view",
    "budget_dense": "the latency budget or the overall sparsity is met without pruning it",
}

_REF_FIELDS = tuple(f.name for f in dataclasses.fields(WeightRef))


@dataclass(frozen=True, kw_only=True)
class LayerPlan(WeightRef):
    """The plan for one matrix-like weight: its ``WeightRef`` fields (layer, weight, layer class,
    kind, kernel shape, view, positions) and what the planner decided.

    Attributes:
        block_shape: chosen ``(rows, cols)`` block, None when skipped.
        sparsity: target fraction of zero blocks (0.0 when skipped).
        skip_code: one of ``SKIP_CODES`` when skipped, else None.
        skip_reason: a sentence saying why it is skipped, else None.
        source: ``"target"`` or ``"override"``: who chose the block shape and sparsity.
        est_dense_us: cost-model estimate of the dense matmul (microseconds, batch 1).
        est_sparse_us: cost-model estimate of the block-sparse matmul.
        measured_dense_us, measured_sparse_us: latencies from a tuning profile, when planned
            with one (``source == "profile"``).
    """

    block_shape: tuple[int, int] | None
    sparsity: float
    skip_code: str | None
    skip_reason: str | None
    source: str = "target"
    est_dense_us: float | None = None
    est_sparse_us: float | None = None
    measured_dense_us: float | None = None
    measured_sparse_us: float | None = None

    @classmethod
    def of(cls, ref: WeightRef, **fields) -> "LayerPlan":
        """The plan entry for the weight ``ref`` (a site or another entry), with ``fields`` set."""
        return cls(**{f: getattr(ref, f) for f in _REF_FIELDS}, **fields)

    @property
    def pruned(self) -> bool:
        return self.skip_code is None

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


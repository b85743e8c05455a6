"""Latency profiles: measured per-layer latencies that the planner can choose block shapes from.

A profile holds, for one target, measurements of single-layer models: for a layer's
``[in, out]`` view and matmul rows per inference, the median latency of each candidate block
shape at each sparsity (and dense), per runtime and thread count. It may also hold whole-model
measurements (dense and uniformly pruned) beside the sum of their per-layer measurements: a
model runs slower or faster than its layers alone (other operators, caches shared between
layers), and these points give the ratio of the two as a function of the weight bytes a plan keeps. ``blockprune tune``
measures them on this machine; a profile measured on a device can be loaded anywhere to plan
for that device. This module does not import TensorFlow.

Example:
    >>> p = Profile(target="cpu-wide", machine={}, versions={}, measurements=[
    ...     Measurement("tflite", (2048, 2048), 1, 1, None, 0.0, 600.0),
    ...     Measurement("tflite", (2048, 2048), 1, 1, (1, 64), 0.9, 70.0)])
    >>> p.latency("tflite", (2048, 2048), 1, 1, (1, 64), 0.9)
    70.0
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._atomic import atomic_path

__all__ = ["Measurement", "ModelMeasurement", "Profile", "ProfileError", "model_key"]

PROFILE_FORMAT = "blockprune-profile"
PROFILE_VERSION = 1


class ProfileError(ValueError):
    """A profile file that cannot be read."""


@dataclass(frozen=True)
class Measurement:
    """The median latency of one single-layer model.

    Attributes:
        runtime: the export output it was timed as: ``tflite`` (LiteRT), ``onnx`` (ONNX Runtime)
            or ``openvino``.
        view_shape: ``(in, out)`` of the layer.
        rows: matmul rows per inference (batch x positions).
        threads: runtime threads.
        block_shape: the block shape, or None for the dense layer.
        sparsity: fraction of zero blocks (0 for dense).
        median_us: median latency in microseconds.
        lowering: how the sparse layer was lowered, as export records name it
            (``gather-matmul``, ``gather-matmul (feature-major)``; ``dense`` for the dense layer).
    """

    runtime: str
    view_shape: tuple[int, int]
    rows: int
    threads: int
    block_shape: tuple[int, int] | None
    sparsity: float
    median_us: float
    lowering: str = "gather-matmul"

    def key(self) -> tuple:
        return (self.runtime, tuple(self.view_shape), self.rows, self.threads,
                tuple(self.block_shape) if self.block_shape else None, round(self.sparsity, 4),
                self.lowering if self.block_shape else "dense")


@dataclass(frozen=True)
class ModelMeasurement:
    """The median latency of one whole exported model, beside its plan's per-layer sum.

    Attributes:
        model: ``model_key`` of the model.
        runtime, batch, threads: the measurement conditions.
        sparsity: the uniform sparsity of the plan it was pruned to (0: dense).
        matmul_us: the plan's predicted matmul latency (sum over its weights, from this profile).
        weight_bytes: bytes of the matrix weights the plan keeps (what the model streams per call).
        median_us: the whole model's measured median latency.
    """

    model: str
    runtime: str
    batch: int
    threads: int
    sparsity: float
    matmul_us: float
    weight_bytes: float
    median_us: float


def model_key(name: str, sites) -> str:
    """``name:digest``: a model's name and a digest of its weights' names, shapes and rows."""
    text = json.dumps([[s.layer, s.weight, list(s.kernel_shape), s.positions] for s in sites])
    return f"{name}:{hashlib.sha1(text.encode()).hexdigest()[:12]}"


@dataclass
class Profile:
    """Measurements for one target, with the machine and runtime versions they came from."""

    target: str
    machine: dict
    versions: dict
    measurements: list[Measurement] = field(default_factory=list)
    models: list[ModelMeasurement] = field(default_factory=list)

    def __post_init__(self):
        self._index = {m.key(): m for m in self.measurements}

    def add(self, m: Measurement) -> None:
        self.measurements = [x for x in self.measurements if x.key() != m.key()] + [m]
        self._index[m.key()] = m

    def has(self, runtime, view_shape, rows, threads, block_shape, sparsity, lowering: str = "gather-matmul") -> bool:
        key = (runtime, tuple(view_shape), rows, threads, tuple(block_shape) if block_shape else None,
               round(sparsity, 4), lowering if block_shape else "dense")
        return key in self._index

    def lowerings(self) -> list[str]:
        """The lowerings measured in this profile (sparse layers)."""
        return sorted({m.lowering for m in self.measurements if m.block_shape})

    def latency(self, runtime, view_shape, rows, threads, block_shape, sparsity, lowering: str | None = None
                ) -> float | None:
        """The measured median (us), or None. Dense: ``block_shape=None``, ``sparsity=0``.

        A sparsity that was not measured is interpolated linearly between the nearest
        measured ones of the same block shape and lowering (dense counts as sparsity 0). Without
        ``lowering``, the fastest measured lowering (what export would choose).
        """
        if block_shape is None or sparsity == 0:
            m = self._index.get((runtime, tuple(view_shape), rows, threads, None, 0.0, "dense"))
            return m.median_us if m else None
        if lowering is None:
            times = [t for low in self.lowerings()
                     if (t := self.latency(runtime, view_shape, rows, threads, block_shape, sparsity, low)) is not None]
            return min(times) if times else None
        exact = self._index.get((runtime, tuple(view_shape), rows, threads, tuple(block_shape), round(sparsity, 4),
                                 lowering))
        if exact:
            return exact.median_us
        points = sorted((m.sparsity, m.median_us) for m in self.measurements
                        if (m.runtime, tuple(m.view_shape), m.rows, m.threads) == (runtime, tuple(view_shape), rows,
                                                                                    threads)
                        and m.block_shape and tuple(m.block_shape) == tuple(block_shape) and m.lowering == lowering)
        dense = self.latency(runtime, view_shape, rows, threads, None, 0.0)
        if dense is not None:
            points = [(0.0, dense)] + points
        below = [p for p in points if p[0] <= sparsity]
        above = [p for p in points if p[0] >= sparsity]
        if not below or not above:
            return None
        (s0, t0), (s1, t1) = below[-1], above[0]
        return t0 if s1 == s0 else t0 + (t1 - t0) * (sparsity - s0) / (s1 - s0)

    def add_model(self, m: ModelMeasurement) -> None:
        same = (m.model, m.runtime, m.batch, m.threads, round(m.sparsity, 4))
        self.models = [x for x in self.models
                       if (x.model, x.runtime, x.batch, x.threads, round(x.sparsity, 4)) != same] + [m]

    def model_points(self, model, runtime, batch, threads) -> list[tuple[float, float]]:
        """``(weight_bytes, model_us / matmul_us)`` of the whole-model measurements, by bytes."""
        return sorted((m.weight_bytes, m.median_us / m.matmul_us) for m in self.models
                      if (m.model, m.runtime, m.batch, m.threads) == (model, runtime, batch, threads) and m.matmul_us)

    def model_latency(self, model, runtime, batch, threads, matmul_us: float, weight_bytes: float) -> float | None:
        """The whole model's latency predicted from a plan's matmul sum and kept weight bytes.

        The ratio of whole-model to summed per-layer latency (other operators; layers evicting
        each other's weights from the caches) is interpolated linearly in weight bytes between
        the measured points, held at the end values beyond them. None with no point.
        """
        points = self.model_points(model, runtime, batch, threads)
        if not points:
            return None
        below = [p for p in points if p[0] <= weight_bytes] or points[:1]
        above = [p for p in points if p[0] >= weight_bytes] or points[-1:]
        (w0, r0), (w1, r1) = below[-1], above[0]
        ratio = r0 if w1 == w0 else r0 + (r1 - r0) * (weight_bytes - w0) / (w1 - w0)
        return matmul_us * ratio

    def sparsities(self) -> list[float]:
        return sorted({m.sparsity for m in self.measurements if m.block_shape})

    def to_json(self) -> str:
        return json.dumps({"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "target": self.target,
                           "machine": self.machine, "versions": self.versions,
                           "measurements": [asdict(m) for m in self.measurements],
                           "models": [asdict(m) for m in self.models]}, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "<profile>") -> "Profile":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProfileError(f"{source}: not valid JSON: {e}") from None
        if not isinstance(d, dict) or d.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{source}: not a blockprune profile")
        if d.get("version") != PROFILE_VERSION:
            raise ProfileError(f"{source}: profile version {d.get('version')!r} is not supported")
        try:
            ms = [Measurement(m["runtime"], tuple(m["view_shape"]), int(m["rows"]), int(m["threads"]),
                              tuple(m["block_shape"]) if m["block_shape"] else None, float(m["sparsity"]),
                              float(m["median_us"]), str(m.get("lowering", "gather-matmul")))
                  for m in d["measurements"]]
            models = [ModelMeasurement(str(m["model"]), m["runtime"], int(m["batch"]), int(m["threads"]),
                                       float(m["sparsity"]), float(m["matmul_us"]), float(m["weight_bytes"]),
                                       float(m["median_us"]))
                      for m in d.get("models", [])]
            return cls(d["target"], d.get("machine", {}), d.get("versions", {}), ms, models)
        except (KeyError, TypeError, ValueError) as e:
            raise ProfileError(f"{source}: malformed measurement: {e}") from None

    def save(self, path: str | os.PathLike) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(self.to_json() + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ProfileError(f"{path}: cannot read profile: {e.strerror or e}") from None
        return cls.from_json(text, str(path))


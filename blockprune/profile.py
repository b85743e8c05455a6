"""Latency profiles: measured per-layer latencies that the planner can choose block shapes from.

A profile holds, for one target, measurements of single-layer models: for a layer's
``[in, out]`` view and matmul rows per inference, the median latency of each candidate block
shape at each sparsity (and dense), per runtime and thread count. ``blockprune tune``
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

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._atomic import atomic_path

__all__ = ["Measurement", "Profile", "ProfileError"]

PROFILE_FORMAT = "blockprune-profile"
PROFILE_VERSION = 1


class ProfileError(ValueError):
    """A profile file that cannot be read."""


@dataclass(frozen=True)
class Measurement:
    """The median latency of one single-layer model.

    Attributes:
        runtime: ``tflite`` or ``onnx``.
        view_shape: ``(in, out)`` of the layer.
        rows: matmul rows per inference (batch x positions).
        threads: runtime threads.
        block_shape: the block shape, or None for the dense layer.
        sparsity: fraction of zero blocks (0 for dense).
        median_us: median latency in microseconds.
    """

    runtime: str
    view_shape: tuple[int, int]
    rows: int
    threads: int
    block_shape: tuple[int, int] | None
    sparsity: float
    median_us: float

    def key(self) -> tuple:
        return (self.runtime, tuple(self.view_shape), self.rows, self.threads,
                tuple(self.block_shape) if self.block_shape else None, round(self.sparsity, 4))


@dataclass
class Profile:
    """Measurements for one target, with the machine and runtime versions they came from."""

    target: str
    machine: dict
    versions: dict
    measurements: list[Measurement] = field(default_factory=list)

    def __post_init__(self):
        self._index = {m.key(): m for m in self.measurements}

    def add(self, m: Measurement) -> None:
        self.measurements = [x for x in self.measurements if x.key() != m.key()] + [m]
        self._index[m.key()] = m

    def has(self, runtime, view_shape, rows, threads, block_shape, sparsity) -> bool:
        key = (runtime, tuple(view_shape), rows, threads, tuple(block_shape) if block_shape else None,
               round(sparsity, 4))
        return key in self._index

    def latency(self, runtime, view_shape, rows, threads, block_shape, sparsity) -> float | None:
        """The measured median (us), or None. Dense: ``block_shape=None``, ``sparsity=0``.

        A sparsity that was not measured is interpolated linearly between the nearest
        measured ones of the same block shape (dense counts as sparsity 0).
        """
        if block_shape is None or sparsity == 0:
            m = self._index.get((runtime, tuple(view_shape), rows, threads, None, 0.0))
            return m.median_us if m else None
        exact = self._index.get((runtime, tuple(view_shape), rows, threads, tuple(block_shape), round(sparsity, 4)))
        if exact:
            return exact.median_us
        points = sorted((m.sparsity, m.median_us) for m in self.measurements
                        if (m.runtime, tuple(m.view_shape), m.rows, m.threads) == (runtime, tuple(view_shape), rows,
                                                                                    threads)
                        and m.block_shape and tuple(m.block_shape) == tuple(block_shape))
        dense = self.latency(runtime, view_shape, rows, threads, None, 0.0)
        if dense is not None:
            points = [(0.0, dense)] + points
        below = [p for p in points if p[0] <= sparsity]
        above = [p for p in points if p[0] >= sparsity]
        if not below or not above:
            return None
        (s0, t0), (s1, t1) = below[-1], above[0]
        return t0 if s1 == s0 else t0 + (t1 - t0) * (sparsity - s0) / (s1 - s0)

    def sparsities(self) -> list[float]:
        return sorted({m.sparsity for m in self.measurements if m.block_shape})

    def to_json(self) -> str:
        return json.dumps({"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "target": self.target,
                           "machine": self.machine, "versions": self.versions,
                           "measurements": [asdict(m) for m in self.measurements]}, indent=1)

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
                              float(m["median_us"])) for m in d["measurements"]]
            return cls(d["target"], d.get("machine", {}), d.get("versions", {}), ms)
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

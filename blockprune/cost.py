"""Roofline latency estimate of one weight, dense vs block-sparse, from a target's cost model.

This is an *estimate*: it is what blockprune reports where the hardware is absent, and every
table that shows it says so. Measured latencies come from ``blockprune bench``.

The model: a layer takes ``max(compute, memory)`` time. Compute is ``2 * MACs`` at the
target's peak rate, scaled down when the block shape leaves vector lanes idle (a block 1 wide
along the lane axis uses one lane of ``vector_lanes``). Memory is the bytes of weight values
plus, for the sparse layer, one index per kept block and one offset per block-column.
This module does not import TensorFlow.

Example:
    >>> from blockprune.targets import load_target
    >>> e = estimate((2048, 2048), (1, 64), 0.9, load_target("cpu-wide"))
    >>> round(e.speedup)
    10
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .targets import TargetDescriptor

__all__ = ["Estimate", "estimate", "roofline_us", "index_dtype_bytes", "ideal_speedup", "prediction_error",
           "calibrate"]


@dataclass(frozen=True)
class Estimate:
    """Estimated per-inference latency of one weight's matmul, in microseconds."""

    dense_us: float
    sparse_us: float

    @property
    def speedup(self) -> float:
        return self.dense_us / self.sparse_us if self.sparse_us > 0 else float("inf")


def index_dtype_bytes(max_value: int) -> int:
    """Bytes of the narrowest unsigned integer type that holds ``max_value``."""
    for nbytes in (1, 2, 4):
        if max_value < 2 ** (8 * nbytes):
            return nbytes
    return 8


def _lane_use(block_shape: tuple[int, int], lanes: int, lane_axis: str) -> float:
    bh, bw = block_shape
    extent = {"in": bh, "out": bw, "both": bh * bw}[lane_axis]
    return min(extent, lanes) / lanes


def estimate(view_shape: tuple[int, int], block_shape: tuple[int, int], sparsity: float,
             target: TargetDescriptor, positions: int = 1, batch: int = 1) -> Estimate:
    """Estimates dense and block-sparse latency of ``x @ W`` for one weight.

    Args:
        view_shape: ``(in, out)`` of the weight's 2-D view.
        block_shape: ``(rows, cols)`` block in the same view.
        sparsity: fraction of blocks that are zero, in ``[0, 1)``.
        target: supplies the cost model and the value dtype.
        positions: rows of ``x`` per sample (spatial positions of a conv, sequence length).
        batch: samples per inference.

    Returns:
        An ``Estimate`` (microseconds).
    """
    cm = target.cost_model
    n_in, n_out = view_shape
    bh, bw = block_shape
    m = max(1, positions) * max(1, batch)
    value_bytes = target.dtype_bytes
    peak = cm.peak_gflops * 1e9
    bandwidth = cm.memory_gbps * 1e9

    dense_compute = 2.0 * m * n_in * n_out / peak
    dense_memory = n_in * n_out * value_bytes / bandwidth
    dense = max(dense_compute, dense_memory)

    n_blocks = (n_in // bh) * (n_out // bw)
    kept_blocks = n_blocks - round(sparsity * n_blocks)
    kept = kept_blocks * bh * bw
    # Dense vector code keeps every lane busy; the sparse kernel only fills lanes its block covers.
    sparse_compute = 2.0 * m * kept / (peak * _lane_use(block_shape, cm.vector_lanes, cm.lane_axis))
    idx_bytes = index_dtype_bytes(max(n_in // bh, n_out // bw, kept_blocks))
    sparse_bytes = kept * value_bytes + kept_blocks * idx_bytes + (n_out // bw + 1) * idx_bytes
    sparse_memory = sparse_bytes / bandwidth
    sparse = max(sparse_compute, sparse_memory)
    return Estimate(dense_us=dense * 1e6, sparse_us=sparse * 1e6)


def roofline_us(flops: float, nbytes: float, target: TargetDescriptor) -> float:
    """Microseconds of an op doing ``flops`` and moving ``nbytes`` on the target, at its peak
    rate or bandwidth, whichever binds (for the ops around the matmuls: elementwise, pooling,
    depthwise convolutions, attention's products)."""
    cm = target.cost_model
    return max(flops / (cm.peak_gflops * 1e9), nbytes / (cm.memory_gbps * 1e9)) * 1e6


def ideal_speedup(sparsity: float) -> float:
    """``1 / (1 - sparsity)``: the speedup if time scaled with kept weights."""
    return math.inf if sparsity >= 1 else 1.0 / (1.0 - sparsity)


def prediction_error(measurements, target: TargetDescriptor) -> dict:
    """Relative error of the estimated latency against measured ones.

    Args:
        measurements: ``blockprune.profile.Measurement`` records (dense and sparse).
        target: whose cost model predicts.

    Returns:
        ``{"n", "median", "p90"}`` of ``|predicted - measured| / measured``.
    """
    errors = []
    for m in measurements:
        block = m.block_shape or (1, 1)
        e = estimate(tuple(m.view_shape), tuple(block), m.sparsity if m.block_shape else 0.0, target, positions=m.rows)
        predicted = e.sparse_us if m.block_shape else e.dense_us
        errors.append(abs(predicted - m.median_us) / m.median_us)
    if not errors:
        return {"n": 0, "median": None, "p90": None}
    errors.sort()
    return {"n": len(errors), "median": errors[len(errors) // 2], "p90": errors[min(len(errors) - 1, int(0.9 * len(errors)))]}


def calibrate(measurements, target: TargetDescriptor) -> TargetDescriptor:
    """Fits the cost model's ``peak_gflops`` and ``memory_gbps`` to measured latencies.

    A grid search (log-spaced) minimizing the median relative error of the predicted latency;
    the lanes and lane axis stay as the descriptor says.

    Returns:
        A copy of ``target`` with the fitted cost model.
    """
    import dataclasses

    measurements = list(measurements)
    if not measurements:
        raise ValueError(f"no measurements to calibrate target '{target.name}' with")
    best = None
    for i in range(41):
        peak = 10 ** (0.5 + 2.5 * i / 40)
        for j in range(41):
            bw = 10 ** (0.0 + 2.5 * j / 40)
            cm = dataclasses.replace(target.cost_model, peak_gflops=peak, memory_gbps=bw)
            err = prediction_error(measurements, dataclasses.replace(target, cost_model=cm))["median"]
            if best is None or err < best[0]:
                best = (err, cm)
    return dataclasses.replace(target, cost_model=best[1])

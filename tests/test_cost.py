"""The cost-model estimate behaves like a roofline."""

import pytest

from blockprune.cost import estimate, ideal_speedup, index_dtype_bytes
from blockprune.targets import load_target


def test_index_dtype_is_the_narrowest_unsigned():
    assert index_dtype_bytes(255) == 1
    assert index_dtype_bytes(256) == 2
    assert index_dtype_bytes(65535) == 2
    assert index_dtype_bytes(65536) == 4


def test_more_sparsity_is_never_slower():
    t = load_target("cpu-wide")
    speedups = [estimate((2048, 2048), (1, 64), s, t).speedup for s in (0.0, 0.5, 0.8, 0.9, 0.95)]
    assert speedups == sorted(speedups)
    assert speedups[0] == pytest.approx(1.0, rel=0.05)


def test_memory_bound_speedup_is_near_ideal_but_below_it():
    t = load_target("cpu-wide")
    e = estimate((2048, 2048), (1, 64), 0.9, t)
    assert 0.8 * ideal_speedup(0.9) < e.speedup <= ideal_speedup(0.9)


def test_blocks_narrower_than_the_lanes_cost_compute():
    t = load_target("cpu-wide")  # 8 lanes along the output axis
    wide = estimate((2048, 2048), (1, 64), 0.9, t, positions=256)
    narrow = estimate((2048, 2048), (16, 1), 0.9, t, positions=256)
    assert narrow.sparse_us > 4 * wide.sparse_us
    assert narrow.dense_us == wide.dense_us


def test_int8_halves_nothing_but_weight_bytes():
    f32 = estimate((2048, 2048), (16, 1), 0.9, load_target("simd-4x1"))
    i8 = estimate((2048, 2048), (16, 1), 0.9, load_target("tflite-int8-16x1"))
    assert i8.dense_us < f32.dense_us

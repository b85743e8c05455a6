"""Accuracy sensitivity, and the allocation it guides."""

import numpy as np
import pytest

import blockprune
from blockprune.sensitivity import Sensitivity, measure_sensitivity
from conftest import trained_digits_mlp


def _trained():
    return trained_digits_mlp(epochs=5)


def test_measured_sensitivity_rises_with_sparsity_and_leaves_the_model_as_it_was(tmp_path):
    model, data = _trained()
    plan = blockprune.plan(model, "simd-4x1", sparsity=0.9)
    weights = [w.numpy().copy() for w in model.weights]
    sens = measure_sensitivity(model, plan, data, levels=(0.5, 0.95))
    assert set(sens.increase) == {"a/kernel", "b/kernel"} and sens.samples == len(data.x_test)
    assert all(sorted(v) == [0.5, 0.9, 0.95] for v in sens.increase.values())  # and at the planned 90%
    for name in sens.increase:
        assert sens.increase[name][0.95] > sens.increase[name][0.5]
        assert sens.cost(name, 0.0) == 0.0 and sens.cost(name, 0.95) == pytest.approx(max(0, sens.increase[name][0.95]))
    assert all(np.array_equal(w, v.numpy()) for w, v in zip(weights, model.weights))
    again = Sensitivity.load(sens.save(tmp_path / "sens.json"))
    assert again == sens


def test_an_allocation_spends_sparsity_where_it_costs_the_least_loss():
    model, _ = _trained()

    def allocated(sensitivity):
        p = blockprune.plan(model, "simd-4x1", sparsity=0.95, overall_sparsity=0.6, sensitivity=sensitivity)
        zeros = sum(lp.sparsity * lp.n_weights for lp in p.pruned_layers) / sum(
            lp.n_weights for lp in p.layers if lp.name in ("a/kernel", "b/kernel"))
        assert zeros == pytest.approx(0.6, abs=0.005)  # the same overall sparsity either way
        return p, p.get("a").sparsity, p.get("b").sparsity

    # By latency alone, b (256 x 256) buys the most time per pruned weight: a (64 x 256) stays dense.
    _, a, b = allocated(None)
    assert a == 0.0 and b == pytest.approx(0.75, abs=0.01)
    # Said to be nearly free to prune while b is costly, a takes most of the sparsity.
    cheap_a = Sensitivity("made up", 100, 1.0, {"a/kernel": {0.5: 0.01, 0.95: 0.02}, "b/kernel": {0.5: 1.0, 0.95: 3.0}})
    plan, a, b = allocated(cheap_a)
    assert a > 0.9 and b < 0.55
    assert any("least held-out loss per microsecond" in n for n in plan.notes)
    with pytest.raises(ValueError, match="give it with a latency budget, a speedup or an overall sparsity"):
        blockprune.plan(model, "simd-4x1", sensitivity=cheap_a)

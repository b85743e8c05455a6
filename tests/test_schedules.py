"""Schedules: tfmot's semantics at chosen steps, validation, serialization."""

import keras
import pytest

from blockprune import ConstantSparsity, PolynomialDecay, PruningSchedule


def test_constant_sparsity_steps():
    s = ConstantSparsity(0.8, begin_step=10, end_step=50, frequency=20)
    assert s(0) == (False, 0.8)
    assert s(10) == (True, 0.8)
    assert s(20) == (False, 0.8)
    assert s(30) == (True, 0.8)
    assert s(50) == (True, 0.8)
    assert s(70) == (False, 0.8)  # past end_step


def test_constant_sparsity_without_end():
    s = ConstantSparsity(0.5, begin_step=0)
    assert s(0) == (True, 0.5) and s(100_000)[0] and not s(150)[0]


def test_polynomial_decay_values():
    s = PolynomialDecay(0.1, 0.9, begin_step=100, end_step=300, power=3, frequency=50)
    assert s(0) == (False, pytest.approx(0.1))
    assert s(100) == (True, pytest.approx(0.1))
    # p = 0.5: 0.9 + (0.1 - 0.9) * 0.5**3 = 0.8
    assert s(200) == (True, pytest.approx(0.8))
    assert s(225)[0] is False
    assert s(300) == (True, pytest.approx(0.9))
    assert s(350) == (False, pytest.approx(0.9))
    linear = PolynomialDecay(0.0, 0.5, 0, 10, power=1, frequency=1)
    assert [round(linear(i)[1], 3) for i in (0, 2, 5, 10)] == [0.0, 0.1, 0.25, 0.5]


def test_retargeting_keeps_timing():
    s = PolynomialDecay(0.2, 0.9, 0, 100, frequency=10).for_sparsity(0.5)
    assert s.final_sparsity == 0.5 and s.initial_sparsity == 0.2 and s.end_step == 100
    assert PolynomialDecay(0.7, 0.9, 0, 100).for_sparsity(0.5).initial_sparsity == 0.5
    assert ConstantSparsity(0.9, 5, frequency=3).for_sparsity(0.4) == ConstantSparsity(0.4, 5, frequency=3)


@pytest.mark.parametrize("make, error, message", [
    (lambda: ConstantSparsity(1.0, 0), ValueError, r"target_sparsity=1.0 is outside \[0, 1\)"),
    (lambda: ConstantSparsity(-0.1, 0), ValueError, "outside"),
    (lambda: ConstantSparsity("0.5", 0), TypeError, "must be a number"),
    (lambda: ConstantSparsity(0.5, -1), ValueError, "begin_step=-1 must be >= 0"),
    (lambda: ConstantSparsity(0.5, 10, end_step=5), ValueError, "end_step=5 must be -1 or >= begin_step=10"),
    (lambda: ConstantSparsity(0.5, 0, frequency=0), ValueError, "frequency=0"),
    (lambda: ConstantSparsity(0.5, 0.5), TypeError, "begin_step must be an integer"),
    (lambda: PolynomialDecay(0.0, 1.2, 0, 10), ValueError, "final_sparsity=1.2"),
    (lambda: PolynomialDecay(0.0, 0.9, 10, 10), ValueError, "end_step=10 must be greater than begin_step=10"),
    (lambda: PolynomialDecay(0.0, 0.9, 0, 10, power=0), ValueError, "power=0"),
])
def test_bad_schedule_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_schedules_serialize_through_keras():
    for s in (ConstantSparsity(0.3, 2, 40, 7), PolynomialDecay(0.1, 0.9, 5, 105, power=2, frequency=10)):
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
        assert again == s and again is not s


def test_custom_schedule_subclass():
    class EveryStep(PruningSchedule):
        def __call__(self, step):
            return True, min(0.9, step / 10)

        def get_config(self):
            return {}

    s = EveryStep()
    assert s(5) == (True, 0.5) and s.for_sparsity(0.1) is s
    with pytest.raises(TypeError):
        PruningSchedule()

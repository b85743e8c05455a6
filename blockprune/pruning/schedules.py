"""Pruning schedules with tfmot's semantics and argument names.

A schedule is a pure function of the training step: ``schedule(step) -> (should_prune,
sparsity)``. The step is a Python integer (``UpdatePruningStep`` evaluates the schedule in
Python, outside the compiled train step, so schedules never constrain graph mode or XLA).

Example:
    >>> s = PolynomialDecay(initial_sparsity=0.0, final_sparsity=0.9, begin_step=0, end_step=1000,
    ...                     frequency=100)
    >>> s(0), s(50)[0], round(s(500)[1], 4), s(1000)
    ((True, 0.0), False, 0.7875, (True, 0.9))
"""

from __future__ import annotations

import abc
import math

import keras

from ..checks import check_sparsity

__all__ = ["PruningSchedule", "ConstantSparsity", "PolynomialDecay"]


def _check_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


class PruningSchedule(abc.ABC):
    """Base class: when to update masks, and to what sparsity.

    Subclasses implement ``__call__(step) -> (should_prune, sparsity)`` and ``get_config()``,
    and are registered with ``keras.saving.register_keras_serializable`` so that pruned
    models save and load.
    """

    @abc.abstractmethod
    def __call__(self, step: int) -> tuple[bool, float]:
        """Returns ``(should_prune, sparsity)`` at training step ``step`` (0-based)."""

    @abc.abstractmethod
    def get_config(self) -> dict:
        """The constructor arguments, for saving."""

    @classmethod
    def from_config(cls, config: dict) -> "PruningSchedule":
        return cls(**config)

    def for_sparsity(self, sparsity: float) -> "PruningSchedule":
        """This schedule retargeted to end at ``sparsity`` (used when a plan gives per-layer
        sparsities). A custom schedule that does not override it is used as given."""
        return self

    @staticmethod
    def _should_prune_in_step(step: int, begin_step: int, end_step: int, frequency: int) -> bool:
        in_range = step >= begin_step and (end_step < 0 or step <= end_step)
        return in_range and (step - begin_step) % frequency == 0

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="blockprune")
class ConstantSparsity(PruningSchedule):
    """Prunes to a constant sparsity every ``frequency`` steps from ``begin_step`` to ``end_step``.

    Args:
        target_sparsity: fraction of blocks to zero, in ``[0, 1)``.
        begin_step: first step at which masks are updated.
        end_step: last step at which masks are updated; -1 means until training ends.
        frequency: update masks every this many steps.

    Example:
        >>> ConstantSparsity(0.5, begin_step=10, frequency=5)(15)
        (True, 0.5)
    """

    def __init__(self, target_sparsity: float, begin_step: int, end_step: int = -1, frequency: int = 100):
        self.target_sparsity = check_sparsity(target_sparsity, name="target_sparsity")
        self.begin_step = _check_int("begin_step", begin_step, 0)
        self.end_step = _check_int("end_step", end_step, -1)
        self.frequency = _check_int("frequency", frequency, 1)
        if self.end_step != -1 and self.end_step < self.begin_step:
            raise ValueError(f"end_step={end_step} must be -1 or >= begin_step={begin_step}")

    def __call__(self, step: int) -> tuple[bool, float]:
        return self._should_prune_in_step(int(step), self.begin_step, self.end_step, self.frequency), \
            self.target_sparsity

    def get_config(self) -> dict:
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}

    def for_sparsity(self, sparsity: float) -> "ConstantSparsity":
        return ConstantSparsity(sparsity, self.begin_step, self.end_step, self.frequency)


@keras.saving.register_keras_serializable(package="blockprune")
class PolynomialDecay(PruningSchedule):
    """Gradual pruning: sparsity rises from ``initial_sparsity`` to ``final_sparsity``.

    ``sparsity(step) = final + (initial - final) * (1 - p) ** power`` with
    ``p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`` (Zhu & Gupta, 2017),
    and masks are updated every ``frequency`` steps between ``begin_step`` and ``end_step``.

    Args:
        initial_sparsity: sparsity at ``begin_step``, in ``[0, 1)``.
        final_sparsity: sparsity from ``end_step`` on, in ``[0, 1)``.
        begin_step: first step at which masks are updated.
        end_step: step at which ``final_sparsity`` is reached; must exceed ``begin_step``.
        power: exponent of the decay (3: prune fast early, slowly late).
        frequency: update masks every this many steps.
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 power: float = 3, frequency: int = 100):
        self.initial_sparsity = check_sparsity(initial_sparsity, name="initial_sparsity")
        self.final_sparsity = check_sparsity(final_sparsity, name="final_sparsity")
        self.begin_step = _check_int("begin_step", begin_step, 0)
        self.end_step = _check_int("end_step", end_step, 0)
        self.frequency = _check_int("frequency", frequency, 1)
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power <= 0:
            raise ValueError(f"power={power!r} must be a positive number")
        self.power = power
        if self.end_step <= self.begin_step:
            raise ValueError(f"end_step={end_step} must be greater than begin_step={begin_step}")

    def __call__(self, step: int) -> tuple[bool, float]:
        step = int(step)
        p = min(1.0, max(0.0, (step - self.begin_step) / (self.end_step - self.begin_step)))
        sparsity = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - p) ** self.power
        return self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency), sparsity

    def get_config(self) -> dict:
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step, "power": self.power,
                "frequency": self.frequency}

    def for_sparsity(self, sparsity: float) -> "PolynomialDecay":
        return PolynomialDecay(min(self.initial_sparsity, sparsity), sparsity, self.begin_step, self.end_step,
                               self.power, self.frequency)

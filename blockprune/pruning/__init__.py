"""Training with block masks on Keras 3: tfmot's pruning API, on every prunable layer kind.

Example:
    >>> import blockprune
    >>> p = blockprune.plan(model, "simd-4x1", sparsity=0.9)                       # doctest: +SKIP
    >>> pruned = blockprune.prune(model, p, blockprune.PolynomialDecay(0.0, 0.9, 0, 2000))  # doctest: +SKIP
    >>> pruned.compile("adam", "sparse_categorical_crossentropy")                  # doctest: +SKIP
    >>> pruned.fit(x, y, epochs=10, callbacks=[blockprune.UpdatePruningStep()])    # doctest: +SKIP
    >>> final = blockprune.strip_pruning(pruned)                                  # doctest: +SKIP
"""

from .api import (
    LayerCheck,
    Verification,
    prune,
    prune_low_magnitude,
    prune_once,
    save_model_atomic,
    strip_pruning,
    verify,
)
from .callbacks import PruningSummaries, UpdatePruningStep
from .schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from .wrapper import PruneLowMagnitude

__all__ = [
    "ConstantSparsity",
    "LayerCheck",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "PruningSchedule",
    "PruningSummaries",
    "UpdatePruningStep",
    "Verification",
    "prune",
    "prune_low_magnitude",
    "prune_once",
    "save_model_atomic",
    "strip_pruning",
    "verify",
]

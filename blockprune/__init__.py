"""blockprune: a hardware-aware block-sparsity compiler pass for Keras 3 models.

Pick a hardware target, plan a block shape and sparsity for every prunable weight, train
with block masks, export packed sparse weights to TFLite and ONNX, and measure.

Block shapes are always ``(rows, cols)`` over the 2-D view ``[in, out]`` of a kernel as Keras
stores it (see ``blockprune.views``).

Importing ``blockprune`` imports Keras and registers the pruning wrapper and schedules, so
``keras.models.load_model("pruned.keras")`` works with no custom-object scope. The modules
``blockprune.targets``, ``blockprune.plan``, ``blockprune.views``, ``blockprune.cost`` and
``blockprune.masks`` themselves do not import TensorFlow.

Example:
    >>> import blockprune
    >>> [t.name for t in blockprune.list_targets()][:2]
    ['cpu-wide', 'dsp-1x8']
"""

from ._quiet import filtered_stderr as _filtered_stderr
from .plan import LayerPlan, Override, SparsityPlan, plan
from .prunable import PrunableLayer
from .targets import TargetDescriptor, TargetError, list_targets, load_target
from .views import WeightView

# TensorFlow prints start-up lines from native code on import; only those are dropped.
with _filtered_stderr():
    from .pruning import (
        ConstantSparsity,
        PolynomialDecay,
        PruneLowMagnitude,
        PruningSchedule,
        PruningSummaries,
        UpdatePruningStep,
        prune,
        prune_low_magnitude,
        strip_pruning,
        verify,
    )

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity",
    "LayerPlan",
    "Override",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneLowMagnitude",
    "PruningSchedule",
    "PruningSummaries",
    "SparsityPlan",
    "TargetDescriptor",
    "TargetError",
    "UpdatePruningStep",
    "WeightView",
    "list_targets",
    "load_target",
    "plan",
    "prune",
    "prune_low_magnitude",
    "strip_pruning",
    "verify",
]

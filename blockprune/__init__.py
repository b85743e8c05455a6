"""blockprune: a hardware-aware block-sparsity compiler pass for Keras 3 models.

Pick a hardware target, plan a block shape and sparsity for every prunable weight, train
with block masks, export packed sparse weights to TFLite and ONNX, and measure.

Block shapes are always ``(rows, cols)`` over the 2-D view ``[in, out]`` of a kernel as Keras
stores it (see ``blockprune.views``). Importing this package does not import TensorFlow.

Example:
    >>> import blockprune
    >>> [t.name for t in blockprune.list_targets()][:2]
    ['cpu-wide', 'dsp-1x8']
"""

from .plan import LayerPlan, Override, SparsityPlan, plan
from .prunable import PrunableLayer
from .targets import TargetDescriptor, TargetError, list_targets, load_target
from .views import WeightView

__version__ = "0.1.0"

__all__ = [
    "LayerPlan",
    "Override",
    "PrunableLayer",
    "SparsityPlan",
    "TargetDescriptor",
    "TargetError",
    "WeightView",
    "list_targets",
    "load_target",
    "plan",
]

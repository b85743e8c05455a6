"""The planning pass: a block shape and sparsity for every prunable weight of a model.

- ``records``: ``LayerPlan`` and ``SparsityPlan``, their JSON and summary table.
- ``rules``: ``plan()`` / ``plan_sites()``, the rules per weight, and ``Override`` parsing.
- ``allocate``: per-weight sparsities for a latency budget or an overall sparsity.

The package does not import TensorFlow; ``plan()`` walks a live Keras model through
``blockprune.modelwalk``, imported only when it runs.

Example:
    >>> import keras
    >>> m = keras.Sequential([keras.Input((256,)), keras.layers.Dense(512), keras.layers.Dense(10)])
    >>> [(lp.layer, lp.block_shape) for lp in plan(m, "cpu-wide", sparsity=0.9).pruned_layers]
    [('dense', (1, 64))]
"""

from .records import PLAN_FORMAT_VERSION, SKIP_CODES, LayerPlan, SparsityPlan
from .rules import Override, plan, plan_sites

__all__ = ["LayerPlan", "Override", "SparsityPlan", "SKIP_CODES", "PLAN_FORMAT_VERSION", "plan", "plan_sites"]

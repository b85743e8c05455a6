"""An optimizer's per-weight slots, and the two Keras internals the wrapper needs.

Keras 3 optimizers create a weight's slots (Adam's momentum and velocity, SGD's momentum,
gradient accumulators, EMA copies) with ``add_variable_from_reference``, which names each
``<weight path with '/' as '_'>_<slot>`` and gives it the weight's shape. That is the only
link from a weight to its slots that every optimizer shares.
"""

from __future__ import annotations

# Keras exports StatelessScope but not the accessor of the active scope, nor its test for
# symbolic (KerasTensor) arguments.
from keras.src.backend import any_symbolic_tensors
from keras.src.backend.common.stateless_scope import get_stateless_scope

__all__ = ["optimizer_slots", "get_stateless_scope", "any_symbolic_tensors"]


def optimizer_slots(optimizer, variable) -> list:
    """The variables of ``optimizer`` that hold per-element state of ``variable``."""
    if optimizer is None:
        return []
    prefix = variable.path.replace("/", "_") + "_"
    shape = tuple(variable.shape)
    return [v for v in optimizer.variables if v.name.startswith(prefix) and tuple(v.shape) == shape]

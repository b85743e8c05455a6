"""The ``PrunableLayer`` interface: a custom layer names the weights blockprune may prune.

Same meaning as tfmot's ``PrunableLayer``: a layer that subclasses it (or simply defines a
``get_prunable_weights()`` method) is planned through the weights that method returns. Each
returned weight is viewed as ``[all axes but the last, last axis]`` (``[in, out]``).
This module does not import TensorFlow.

Example:
    >>> import keras
    >>> class Scale(keras.layers.Layer, PrunableLayer):
    ...     def build(self, input_shape):
    ...         self.w = self.add_weight(shape=(input_shape[-1], 64), name="w")
    ...     def call(self, x):
    ...         return x @ self.w
    ...     def get_prunable_weights(self):
    ...         return [self.w]
"""

from __future__ import annotations

import abc

__all__ = ["PrunableLayer", "is_prunable_layer"]


class PrunableLayer(abc.ABC):
    """Mixin for custom Keras layers that expose their prunable weights."""

    @abc.abstractmethod
    def get_prunable_weights(self):
        """Returns the list of weight variables to prune (each of rank 2 or more)."""
        raise NotImplementedError


def is_prunable_layer(layer) -> bool:
    """True when ``layer`` implements the ``PrunableLayer`` interface (by subclass or method)."""
    return isinstance(layer, PrunableLayer) or callable(getattr(layer, "get_prunable_weights", None))

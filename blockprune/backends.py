"""Which Keras backend is running, and what needs TensorFlow's.

Planning, pruning and training work on every Keras 3 backend (TensorFlow, JAX, PyTorch).
Converting to ``.tflite`` and ``.onnx`` goes through TensorFlow's converters (the TFLite
converter, tf2onnx), which trace the model as TensorFlow ops, so export, tune, bench and run
need Keras on its TensorFlow backend. A ``.keras`` file written on any backend loads there.
"""

from __future__ import annotations

import keras

__all__ = ["BackendError", "backend", "require_tensorflow"]


class BackendError(ValueError):
    """Work that needs another Keras backend than the one this process runs."""


def backend() -> str:
    """The name of the Keras backend this process runs (``"tensorflow"``, ``"jax"``, ``"torch"``)."""
    return keras.backend.backend()


def require_tensorflow(what: str) -> None:
    """Raises ``BackendError`` saying how to run ``what`` when Keras is not on TensorFlow."""
    name = backend()
    if name != "tensorflow":
        raise BackendError(
            f"{what} converts models with TensorFlow's converters, but Keras runs on the '{name}' backend "
            f"in this process: run it with KERAS_BACKEND=tensorflow (a .keras file pruned on '{name}' "
            "loads there unchanged)")

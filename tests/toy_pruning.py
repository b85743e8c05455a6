"""The small pruned model the distribution tests train in their worker interpreters (which
import this module: the tests put this folder on their PYTHONPATH)."""

import keras
import numpy as np

import blockprune


def pruned_toy_model():
    """``(pruned, plan)``: 32 -> 64 (``h``, 75% in (1, 16) blocks over 8 steps) -> 4."""
    inputs = keras.Input((32,))
    x = keras.layers.Dense(64, activation="relu", name="h")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(x))
    plan = blockprune.plan(model, "cpu-wide", sparsity=0.75, overrides={"h": "block=1x16", "out": "skip"})
    return blockprune.prune(model, plan, blockprune.PolynomialDecay(0.0, 0.75, 0, 8, frequency=2)), plan


def toy_data(seed: int = 0):
    """128 random regression samples for the toy model."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(128, 32)).astype("float32"), rng.normal(size=(128, 4)).astype("float32")

"""Shared fixtures. TensorFlow is imported quietly and only by tests that need it."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def worker_env(backend: str = "tensorflow", **extra) -> dict:
    """The environment of a test's worker interpreter: Keras on ``backend``, TensorFlow quiet,
    and this folder importable (its helper modules, e.g. ``toy_pruning``)."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": path, **extra}


def pytest_collection_modifyitems(config, items):
    """Skips tests marked ``tensorflow`` (they convert models) on another Keras backend: CI runs
    the pruning tests again with KERAS_BACKEND=jax."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"converts models, which needs the TensorFlow backend (KERAS_BACKEND={backend})")
    for item in items:
        if "tensorflow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def write_toml(tmp_path):
    """Writes a descriptor file from text and returns its path."""

    def write(text: str, name: str = "custom.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


VALID_TOML = """
name = "my-target"
description = "a test target"
hardware = "a test machine"
dtype = "float32"
block_shapes = [[4, 1], [2, 2]]
balanced = false
min_weights = 64
layer_kinds = ["dense", "conv1x1"]
native = true

[lowering]
tflite = "builtin-sparse"
onnx = "dense"

[runtime.tflite]
default_delegates = false

[runtime.onnx]
opset = 18

[cost_model]
vector_lanes = 4
lane_axis = "in"
peak_gflops = 10.0
memory_gbps = 5
"""


@pytest.fixture
def valid_toml() -> str:
    return VALID_TOML


def trained_digits_mlp(epochs: int):
    """``(model, data)``: a 64 -> 256 (``a``) -> 256 (``b``) -> 10 MLP trained on digits for ``epochs``."""
    import keras

    from blockprune.data import digits

    data = digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, activation="relu", name="a")(inputs)
    x = keras.layers.Dense(256, activation="relu", name="b")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="out")(x), name="mlp")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, epochs=epochs, verbose=0)
    return model, data

"""Built-in example models, so every command has something to run on without a download.

Example:
    >>> m = example_model("mlp")   # doctest: +SKIP
    >>> m.input_shape              # doctest: +SKIP
    (None, 64)
"""

from __future__ import annotations

__all__ = ["EXAMPLES", "example_model", "train_dense"]

#: Name -> one-line description of each built-in model.
EXAMPLES = {
    "mlp": "digits MLP 64 -> 512 -> 512 -> 10 (scikit-learn's 8x8 digits), docs/DESIGN.md section 5",
    "digits1024": "digits MLP 64 -> 1024 -> 1024 -> 10, wide enough for sparsity to matter (blockprune run)",
    "animal1024": "animal-shapes MLP 784 -> 1024 -> 1024 -> 10 (28x28 images; blockprune run --data animal-shapes)",
    "mlp2048": "MLP 2048 -> 2048 -> 2048 -> 10, the width where sparse kernels pay off",
    "mobilenetv2": "keras.applications.MobileNetV2(weights=None), 224x224x3 input",
    "transformer": "one transformer encoder block: MultiHeadAttention + feed-forward, 64 tokens of 256",
    "resnet": "ResNet-style CNN of 3x3 convolutions: 32x32x3 input, residual stages of 64, 128 and 256 channels",
}


def example_model(name: str = "mlp", seed: int = 0):
    """Builds a built-in example model with freshly initialized weights (no network).

    Args:
        name: one of ``EXAMPLES``.
        seed: seed for the weight initializers.

    Returns:
        A built, uncompiled ``keras.Model``.

    Raises:
        ValueError: unknown name.
    """
    if name not in EXAMPLES:
        raise ValueError(f"unknown example model {name!r} (known: {', '.join(EXAMPLES)})")
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    mlps = {"mlp": (64, 512, "digits_mlp"), "digits1024": (64, 1024, "digits_mlp1024"),
            "animal1024": (784, 1024, "animal_mlp1024"), "mlp2048": (2048, 2048, "mlp2048")}
    if name in mlps:
        n_in, width, model_name = mlps[name]
        inputs = keras.Input((n_in,), name="features")
        x = layers.Dense(width, activation="relu", name="hidden_1")(inputs)
        x = layers.Dense(width, activation="relu", name="hidden_2")(x)
        outputs = layers.Dense(10, name="logits")(x)
        return keras.Model(inputs, outputs, name=model_name)
    if name == "mobilenetv2":
        return keras.applications.MobileNetV2(weights=None)
    if name == "resnet":
        return _resnet(layers)
    inputs = keras.Input((64, 256), name="tokens")
    attn = layers.MultiHeadAttention(num_heads=4, key_dim=64, name="attention")(inputs, inputs)
    x = layers.LayerNormalization(name="norm_1")(layers.Add()([inputs, attn]))
    ff = layers.Dense(1024, activation="relu", name="ff_1")(x)
    ff = layers.Dense(256, name="ff_2")(ff)
    outputs = layers.LayerNormalization(name="norm_2")(layers.Add()([x, ff]))
    return keras.Model(inputs, outputs, name="transformer_block")


def _resnet(layers):
    """Stem, then per stage a strided 3x3 convolution (none in the first) and a residual block of
    two 3x3 convolutions; global pooling and a classifier."""
    import keras

    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="stem")(inputs)
    for stage, width in enumerate((64, 128, 256), start=1):
        if stage > 1:
            x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name=f"down_{stage}")(x)
        y = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv_{stage}a")(x)
        y = layers.Conv2D(width, 3, padding="same", name=f"conv_{stage}b")(y)
        x = layers.ReLU(name=f"relu_{stage}")(layers.Add(name=f"add_{stage}")([x, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="resnet_cnn")


def train_dense(model, data, epochs: int = 30, batch_size: int = 32, learning_rate: float = 1e-3,
                seed: int = 0, verbose: int = 0, decay: bool = True):
    """Trains a built-in classification example densely (Adam, cross-entropy on logits).

    The learning rate decays to zero on a cosine over the run by default: the dense model is the
    baseline every pruned model is compared with and the teacher of distillation, and at a
    constant rate its test accuracy swings between epochs (animal-shapes MLP 1024, 30 epochs:
    89.4-92.5% over the last ten at a constant 1e-3, 92.6% with the decay; docs/DESIGN.md section 5).

    Args:
        model: a model whose outputs are logits, e.g. ``example_model("mlp")``.
        data: a ``blockprune.data.Dataset`` with integer labels.
        epochs, batch_size, learning_rate, seed, verbose: as for ``keras.Model.fit``.
        decay: decay ``learning_rate`` to zero on a cosine over the ``epochs`` (else constant).

    Returns:
        The same model, trained and compiled.
    """
    import math

    import keras

    keras.utils.set_random_seed(seed)
    rate = learning_rate
    if decay:
        steps = epochs * math.ceil(len(data.x_train) / batch_size)
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps))
    model.compile(keras.optimizers.Adam(rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=verbose)
    return model

"""The pruning wrapper contract over every supported layer kind, and the entry points."""

import numpy as np
import pytest

import keras

import blockprune
from blockprune import (
    ConstantSparsity,
    PolynomialDecay,
    PrunableLayer,
    PruneLowMagnitude,
    UpdatePruningStep,
    prune,
    prune_low_magnitude,
    strip_pruning,
    verify,
)


@keras.saving.register_keras_serializable("blockprune_tests")
class Bilinear(keras.layers.Layer, PrunableLayer):
    """A custom layer with one rank-3 prunable weight."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 2, self.units), name="w")

    def call(self, x):
        return keras.ops.einsum("bi,iku->bu", x, self.w)

    def get_prunable_weights(self):
        return [self.w]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _model(kind):
    """(model, x, y) for one layer kind; every prunable view is divisible by (4, 4)."""
    rng = np.random.default_rng(0)
    if kind == "dense":
        inputs = keras.Input((32,))
        x = keras.layers.Dense(64, activation="relu", name="target")(inputs)
        data = rng.normal(size=(64, 32))
    elif kind == "conv2d":
        inputs = keras.Input((8, 8, 8))
        x = keras.layers.Conv2D(16, 3, padding="same", name="target")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        data = rng.normal(size=(64, 8, 8, 8))
    elif kind == "conv1d":
        inputs = keras.Input((12, 8))
        x = keras.layers.Conv1D(16, 2, name="target")(inputs)
        x = keras.layers.GlobalAveragePooling1D()(x)
        data = rng.normal(size=(64, 12, 8))
    elif kind == "einsum_dense":
        inputs = keras.Input((6, 16))
        x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(6, 32), name="target")(inputs)
        x = keras.layers.Flatten()(x)
        data = rng.normal(size=(64, 6, 16))
    elif kind == "mha":
        inputs = keras.Input((6, 16))
        x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, name="target")(inputs, inputs)
        x = keras.layers.Flatten()(x)
        data = rng.normal(size=(64, 6, 16))
    elif kind == "custom":
        inputs = keras.Input((16,))
        x = Bilinear(16, name="target")(inputs)
        data = rng.normal(size=(64, 16))
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs, name=f"{kind}_model")
    y = rng.integers(0, 3, size=(64,))
    return model, data.astype("float32"), y


def _compile(model, **kwargs):
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  **kwargs)
    return model


KINDS = ["dense", "conv2d", "conv1d", "einsum_dense", "mha", "custom"]


@pytest.mark.parametrize("kind", KINDS)
def test_wrapper_contract(kind, tmp_path):
    model, x, y = _model(kind)
    p = blockprune.plan(model, "tensor-core-2x2", sparsity=0.75, overrides={"target": "block=4x4"})
    planned = [lp for lp in p.pruned_layers if lp.layer == "target"]
    assert planned, p.summary()
    pruned = _compile(prune(model, p, PolynomialDecay(0.0, 0.75, begin_step=0, end_step=6, frequency=2)))
    wrapper = pruned.get_layer("prune_low_magnitude_target")
    assert isinstance(wrapper, PruneLowMagnitude)
    assert {t["name"] for t in wrapper.targets} == {lp.weight for lp in planned}
    # The original model is untouched and keeps its weights.
    assert not (model.get_layer("target").weights[0].numpy() == 0).any()

    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])  # 8 steps
    check = verify(pruned, p)
    assert check.ok, check.summary()
    for c in check.layers:
        assert c.block_sparsity == pytest.approx(0.75, abs=0.03) and c.partial_blocks == 0

    path = tmp_path / "pruned.keras"
    pruned.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    w2 = again.get_layer("prune_low_magnitude_target")
    assert int(w2.pruning_step.numpy()) == 7
    for a, b in zip(w2.targets, wrapper.targets):
        np.testing.assert_array_equal(a["mask"].numpy(), b["mask"].numpy())

    stripped = strip_pruning(pruned)
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in stripped._flatten_layers())
    assert len(stripped.weights) == len(model.weights)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert verify(stripped, p).ok


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
    "sgd-momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01, momentum=0.5),
    "adam-ema": lambda: keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.5),
    "amsgrad": lambda: keras.optimizers.Adam(0.01, amsgrad=True),
    "adagrad": lambda: keras.optimizers.Adagrad(0.05),
    "adamax": lambda: keras.optimizers.Adamax(0.01),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_optimizer_state_does_not_resurrect_pruned_weights(optimizer):
    model, x, y = _model("dense")
    # Train dense for a few steps so the optimizer's slots hold momentum everywhere.
    warm = prune_low_magnitude(model, ConstantSparsity(0.5, begin_step=4, end_step=4), block_size=(4, 1))
    warm.compile(OPTIMIZERS[optimizer](), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # One mask update at step 4, then 12 steps with no mask update.
    warm.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    wrapper = warm.get_layer("prune_low_magnitude_target")
    kernel, mask = wrapper.layer.kernel.numpy(), wrapper.targets[0]["mask"].numpy()
    assert (mask == 0).mean() == 0.5
    assert (kernel[mask == 0] == 0).all()
    assert (kernel[mask == 1] != 0).all()


def test_a_mask_update_zeroes_momentum_and_fills_divisor_slots_at_pruned_positions():
    """Adam's momentum is zeroed where the mask drops a weight; its velocity (a divisor of the
    step) is filled with a large number there, since PyTorch's square root is slow on zeros;
    both keep their values elsewhere."""
    model, x, y = _model("dense")
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, begin_step=8, end_step=8), block_size=(4, 1))
    optimizer = keras.optimizers.Adam(0.01, amsgrad=True)
    pruned.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])  # steps 0..7
    wrapper = pruned.get_layer("prune_low_magnitude_target")
    prefix = wrapper.layer.kernel.path.replace("/", "_") + "_"
    slots = {v.name[len(prefix):]: v for v in optimizer.variables if v.name.startswith(prefix)}
    before = {name: keras.ops.convert_to_numpy(v) for name, v in slots.items()}
    assert set(before) == {"momentum", "velocity", "velocity_hat"} and (before["velocity"] > 0).all()

    assert wrapper.update_masks(8, optimizer)
    kept = wrapper.targets[0]["mask"].numpy() == 1
    after = {name: keras.ops.convert_to_numpy(v) for name, v in slots.items()}
    assert kept.mean() == 0.5
    for name in before:
        np.testing.assert_array_equal(after[name][kept], before[name][kept])
    assert (after["momentum"][~kept] == 0).all()
    assert (after["velocity"][~kept] > 1e18).all() and (after["velocity_hat"][~kept] > 1e18).all()


@pytest.mark.parametrize("view, block", [
    (blockprune.views.WeightView.for_dense((16, 24)), (4, 1)),
    (blockprune.views.WeightView.for_dense((16, 24)), (1, 8)),
    (blockprune.views.WeightView.channel_major((3, 3, 4, 16)), (9, 8)),
    (blockprune.views.einsum_view("abc,cde->abde", (8, 2, 6)), (4, 3)),
    (blockprune.views.einsum_view("abc,dc->abd", (12, 8)), (4, 3)),
])
def test_the_mask_on_jax_is_rebuilt_from_one_element_per_block(view, block):
    """``_one_per_block`` returns, everywhere in a block of the [in, out] view, that block's
    first element: the mask itself for a block mask, read from a quarter of the memory for (4, 1)."""
    from blockprune.pruning.wrapper import _one_per_block

    values = np.random.default_rng(0).normal(size=view.kernel_shape).astype("float32")
    got = keras.ops.convert_to_numpy(_one_per_block(keras.ops.convert_to_tensor(values), view, block))
    first = view.to_2d(values)[::block[0], ::block[1]]
    np.testing.assert_array_equal(got, view.from_2d(np.repeat(np.repeat(first, block[0], 0), block[1], 1)))


def test_a_mask_with_ragged_blocks_is_kept_whole_on_jax():
    """A head of 10 outputs in (1, 8) blocks (MobileNetV2's on dsp-1x8) has a short last block."""
    from blockprune.pruning.wrapper import _one_per_block

    values = np.random.default_rng(0).normal(size=(16, 10)).astype("float32")
    view = blockprune.views.WeightView.for_dense((16, 10))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(_one_per_block(values, view, (1, 8))), values)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_fit_modes(mode):
    model, x, y = _model("dense")
    pruned = prune_low_magnitude(model, ConstantSparsity(0.9, 0, frequency=3), block_size=(4, 1), balanced=True)
    _compile(pruned, run_eagerly=mode == "eager", jit_compile=mode == "xla")
    pruned.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    kernel = pruned.get_layer("prune_low_magnitude_target").layer.kernel.numpy()
    from blockprune.masks import block_structure

    st = block_structure(kernel, (4, 1))
    assert st["partial_blocks"] == 0 and st["kept_per_block_column"] == (1, 1)  # 8 block rows, 90% -> 7 zero


def test_missing_update_pruning_step_callback_is_a_clear_error():
    model, x, y = _model("dense")
    pruned = _compile(prune_low_magnitude(model, block_size=(4, 1)))
    with pytest.raises(ValueError, match="needs the UpdatePruningStep callback"):
        pruned.fit(x, y, epochs=1, verbose=0)


def test_resume_continues_the_schedule(tmp_path):
    model, x, y = _model("dense")
    schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=16, frequency=4)
    pruned = _compile(prune_low_magnitude(model, schedule, block_size=(4, 1)))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])  # steps 0..7
    wrapper = pruned.get_layer("prune_low_magnitude_target")
    half = (wrapper.layer.kernel.numpy() == 0).mean()
    assert 0.3 < half < 0.9  # schedule(4) = 0.9 - 0.9 * 0.75**3
    pruned.save(tmp_path / "ckpt.keras")

    resumed = keras.models.load_model(tmp_path / "ckpt.keras")
    assert resumed.optimizer is not None and int(resumed.optimizer.iterations.numpy()) == 8
    resumed.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])  # steps 8..15
    w2 = resumed.get_layer("prune_low_magnitude_target")
    assert int(w2.pruning_step.numpy()) == 15
    assert int(resumed.optimizer.iterations.numpy()) == 16
    later = (w2.layer.kernel.numpy() == 0).mean()
    assert later == pytest.approx(schedule(12)[1], abs=0.02)  # last update at step 12, not restarted
    assert later > half


def test_prune_low_magnitude_accepts_layer_list_and_model():
    layer = prune_low_magnitude(keras.layers.Dense(8), block_size=(1, 4))
    assert isinstance(layer, PruneLowMagnitude) and layer.block_size == (1, 4)
    layers = prune_low_magnitude([keras.layers.Dense(8), keras.layers.Conv2D(4, 1)])
    assert all(isinstance(w, PruneLowMagnitude) for w in layers)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(16), keras.layers.BatchNormalization(),
                              keras.layers.Dense(4)])
    pruned = prune_low_magnitude(model, block_size=(4, 4))
    kinds = [type(layer).__name__ for layer in pruned.layers]
    assert kinds == ["PruneLowMagnitude", "BatchNormalization", "PruneLowMagnitude"]
    np.testing.assert_allclose(pruned.predict(np.ones((2, 16)), verbose=0), model.predict(np.ones((2, 16)), verbose=0),
                               rtol=1e-6)


def test_wrapped_layer_in_a_new_model():
    inputs = keras.Input((16,))
    outputs = prune_low_magnitude(keras.layers.Dense(8, name="d"), ConstantSparsity(0.5, 0), block_size=(4, 1))(inputs)
    model = _compile(keras.Model(inputs, outputs))
    model.fit(np.ones((8, 16)), np.zeros((8,)), verbose=0, callbacks=[UpdatePruningStep()])
    assert (model.layers[1].layer.kernel.numpy() == 0).mean() == 0.5


def test_nested_model_layers_are_wrapped_in_place():
    inner = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, name="a")], name="encoder")
    inputs = keras.Input((16,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(inner(inputs)))
    p = blockprune.plan(model, "simd-4x1", overrides={"encoder/a": "block=4x1,sparsity=0.5"})
    pruned = _compile(prune(model, p))
    encoder = pruned.get_layer("encoder")
    assert isinstance(encoder.layers[0], PruneLowMagnitude)
    pruned.fit(np.ones((8, 16)), np.zeros((8,)), verbose=0, callbacks=[UpdatePruningStep()])
    assert verify(pruned, p).ok and verify(strip_pruning(pruned), p).ok


@pytest.mark.parametrize("make, error, message", [
    (lambda m: prune_low_magnitude(m, block_size=(3, 1)), ValueError,
     r"Layer 'target' weight 'kernel': block_shape=\(3, 1\) does not divide the \[in, out\] view \(32, 64\)"),
    (lambda m: prune_low_magnitude(m, block_size=(0, 1)), ValueError, "not two positive integers"),
    (lambda m: prune_low_magnitude(m, block_pooling_type="MIN"), ValueError, "block_pooling_type='MIN'"),
    (lambda m: prune_low_magnitude(m, pruning_schedule=0.5), TypeError, "must be a PruningSchedule"),
    (lambda m: prune_low_magnitude(m, ConstantSparsity(1.0, 0)), ValueError, r"outside \[0, 1\)"),
    (lambda m: prune_low_magnitude("model"), TypeError, "expects a Keras layer"),
    (lambda m: prune(m, "plan.json"), TypeError, "plan must be a SparsityPlan"),
])
def test_bad_input(make, error, message):
    model, _, _ = _model("dense")
    with pytest.raises(error, match=message):
        make(model)


def test_a_layer_with_nothing_to_prune():
    inputs = keras.Input((8,))
    with pytest.raises(ValueError, match="has nothing to prune"):
        PruneLowMagnitude(keras.layers.LayerNormalization(name="ln"))(inputs)
    model = keras.Model(inputs, keras.layers.LayerNormalization()(inputs))
    with pytest.raises(ValueError, match="has no prunable layer"):
        prune_low_magnitude(model)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.a = keras.layers.Dense(8, name="a")

        def call(self, x):
            return self.a(x)

    net = Net()
    net(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="Model 'net' is a subclassed model"):
        prune_low_magnitude(net)
    with pytest.raises(ValueError, match="subclassed"):
        prune(net, blockprune.plan(net, "simd-4x1", overrides={"a": "block=4x1"}))


def test_plan_for_another_model_is_refused():
    model, _, _ = _model("dense")
    p = blockprune.plan(model, "simd-4x1", overrides={"target": "block=4x1"})
    inputs = keras.Input((16,))
    other = keras.Model(inputs, keras.layers.Dense(64, name="target")(inputs))
    with pytest.raises(ValueError, match=r"has shape \(16, 64\) in model .* but \(32, 64\) in the plan"):
        prune(other, p)
    with pytest.raises(ValueError, match="prunes no weight"):
        prune(model, blockprune.plan(model, "simd-4x1"))


def test_pruning_summaries_write_sparsity_scalars(tmp_path):
    import tensorflow as tf

    model, x, y = _model("dense")
    pruned = _compile(prune_low_magnitude(model, ConstantSparsity(0.5, 0), block_size=(4, 1)))
    pruned.fit(x, y, batch_size=16, epochs=2, verbose=0,  # 4 steps per epoch
               callbacks=[UpdatePruningStep(), blockprune.PruningSummaries(str(tmp_path), update_freq=2)])
    values, steps = {}, {}
    for event_file in tmp_path.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for v in event.summary.value:
                values.setdefault(v.tag, []).append(float(tf.make_ndarray(v.tensor)))
                steps.setdefault(v.tag, []).append(event.step)
    # every 2 batches and at each epoch's end, at the step just run
    assert steps["pruning/target/kernel/sparsity"] == [1, 3, 3, 5, 7, 7]
    assert values["pruning/target/kernel/sparsity"][-1] == pytest.approx(0.5)
    assert values["pruning/target/kernel/threshold"][-1] > 0
    assert "pruning/head/kernel/sparsity" in values
    with pytest.raises(ValueError, match="update_freq"):
        blockprune.PruningSummaries(str(tmp_path), update_freq=0)


def test_prune_once_reaches_the_plan_without_training():
    from blockprune.pruning import prune_once

    model, x, _ = _model("conv2d")
    p = blockprune.plan(model, "tensor-core-2x2", sparsity=0.5, overrides={"target": "block=4x4"})
    once = prune_once(model, p)
    assert verify(once, p).ok
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in once.layers)
    assert not (model.get_layer("target").kernel.numpy() == 0).any()  # the input model is untouched


def _fake_quant_reference(a, lo, hi, levels):
    """NumPy reference of fake quantization to ``levels`` steps over ``[lo, hi]`` (TensorFlow's
    nudging: the range is shifted so that zero is exactly a level)."""
    scale = (hi - lo) / (levels - 1)
    zero = np.clip(np.round(-lo / scale), 0, levels - 1)
    lo, hi = -zero * scale, (levels - 1 - zero) * scale
    return np.round((np.clip(a, lo, hi) - lo) / scale) * scale + lo


@pytest.mark.parametrize("kind", ["dense", "conv2d"])
def test_quantize_aware_training_keeps_masks_and_simulates_int8(kind, tmp_path):
    model, x, y = _model(kind)
    pruned = _compile(prune_low_magnitude(model, ConstantSparsity(0.75, 0, frequency=2), block_size=(4, 1),
                                          quantize_aware=True))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])  # 8 steps
    wrapper = pruned.get_layer("prune_low_magnitude_target")
    kernel = wrapper.layer.kernel.numpy()
    mask = wrapper.targets[0]["mask"].numpy()
    assert (mask == 0).mean() == 0.75 and (kernel[mask == 0] == 0).all()
    lo, hi, seen = wrapper.output_range.numpy()
    assert seen == 8 and lo < hi

    # In inference the layer runs on its int8-rounded weight and rounds its output to 256 levels.
    bound = np.abs(kernel).max()
    rounded = _fake_quant_reference(kernel, -bound, bound, 255)
    assert (rounded[mask == 0] == 0).all()
    plain = strip_pruning(pruned).get_layer("target")
    float_out = keras.ops.convert_to_numpy(plain(x))
    plain.kernel.assign(rounded)
    want = _fake_quant_reference(keras.ops.convert_to_numpy(plain(x)), min(lo, 0.0), max(hi, 0.0), 256)
    got = keras.ops.convert_to_numpy(wrapper(x))
    # A value within float rounding of a level boundary may land one level apart (the matmul's
    # summation order depends on the thread pool): allow that for a few outputs, never more.
    step = (max(hi, 0.0) - min(lo, 0.0)) / 255
    off = np.abs(got - want) > 1e-4 * np.abs(want).max()
    assert off.mean() <= 0.02 and (np.abs(got - want)[off] <= step * 1.01).all()
    assert np.abs(got - float_out).max() > 1e-3 * np.abs(float_out).max()  # really quantized

    path = tmp_path / "qat.keras"
    pruned.save(path)
    again = keras.models.load_model(path).get_layer("prune_low_magnitude_target")
    assert again.quantize_aware
    np.testing.assert_allclose(again.output_range.numpy(), wrapper.output_range.numpy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x)), got, rtol=1e-5, atol=1e-6)

"""Channel permutation before masking, and distillation while pruning."""

import keras
import numpy as np
import pytest

import blockprune
from blockprune.permute import output_grouping, permute_channels, retained
from blockprune.pruning.finetune import Distillation, DistillationLoss, finetune
from conftest import trained_digits_mlp


def _hidden_groups(n_in=64, n_out=64, kinds=8, seed=0):
    """A kernel whose outputs come in ``kinds`` kinds, each reading its own inputs, shuffled."""
    rng = np.random.default_rng(seed)
    kind_of_out = rng.permutation(np.arange(n_out) % kinds)
    rows_of_kind = np.arange(n_in) % kinds
    kernel = rng.normal(scale=0.01, size=(n_in, n_out))
    for j, k in enumerate(kind_of_out):
        kernel[rows_of_kind == k, j] += rng.normal(size=int(np.sum(rows_of_kind == k)))
    return kernel, kind_of_out


def test_output_grouping_puts_outputs_that_read_the_same_inputs_together():
    kernel, kind_of_out = _hidden_groups()
    order, gain = output_grouping(kernel, cols=8, sparsity=7 / 8)
    assert sorted(order) == list(range(64))
    groups = kind_of_out[order].reshape(8, 8)
    assert all(len(set(g)) == 1 for g in groups)  # each block column: one kind of output
    blocks = np.arange(64) // 8
    ideal = np.argsort(kind_of_out, kind="stable")
    shuffled = retained(np.abs(kernel), blocks, 8, 8)
    assert gain == pytest.approx(retained(np.abs(kernel[:, ideal]), blocks, 8, 8) / shuffled)
    assert gain > 2  # the shuffled order keeps little of the magnitude; grouped, the blocks hold it
    assert retained(np.abs(kernel[:, order]), blocks, 8, 8) == pytest.approx(gain * shuffled)


def test_output_grouping_leaves_a_kernel_alone_when_nothing_is_gained():
    kernel = np.ones((16, 32))
    order, gain = output_grouping(kernel, cols=8, sparsity=0.5)
    assert gain == 1.0 and list(order) == list(range(32))
    order, gain = output_grouping(np.random.default_rng(0).normal(size=(16, 30)), cols=8, sparsity=0.5)
    assert gain == 1.0  # 8 does not divide 30


def _mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, name="a")(inputs)
    x = keras.layers.Activation("relu", name="act")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    x = keras.layers.Dense(256, activation="relu", name="b")(x)
    x = keras.layers.Dense(256, activation="relu", name="c")(x)
    return keras.Model(inputs, [x], name="mlp")


def test_permuting_channels_keeps_the_function_and_the_outputs_of_the_model():
    model = _mlp()
    for name in ("a", "b", "c"):  # give each layer's outputs a grouping worth finding
        kernel, _ = _hidden_groups(*model.get_layer(name).kernel.shape, kinds=4, seed=len(name))
        model.get_layer(name).kernel.assign(kernel.astype("float32"))
    plan = blockprune.plan(model, "cpu-wide", sparsity=0.9, overrides={"a|b|c": "block=1x64,sparsity=0.9"})
    x = np.random.default_rng(1).normal(size=(8, 64)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x))
    kernels = {n: model.get_layer(n).kernel.numpy() for n in ("a", "b", "c")}
    done = permute_channels(model, plan)
    assert [(q.layer, q.reader) for q in done] == [("a", "b"), ("b", "c")]  # through Activation and Dropout
    assert all(q.gain > 1.001 for q in done)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), before, rtol=1e-5, atol=1e-4)
    assert not np.array_equal(model.get_layer("a").kernel.numpy(), kernels["a"])
    # c's outputs are the model's: its columns keep their order (only its rows follow b's regrouping)
    np.testing.assert_array_equal(np.sort(model.get_layer("c").kernel.numpy(), axis=0), np.sort(kernels["c"], axis=0))


def test_distillation_loss_is_the_weighted_sum_of_label_and_teacher_terms():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    y_true = np.concatenate([labels[:, None], teacher], axis=1).astype("float32")

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    hard = -log_softmax(student)[np.arange(5), labels]
    soft = -(np.exp(log_softmax(teacher / 2)) * log_softmax(student / 2)).sum(axis=1) * 4
    loss = DistillationLoss(temperature=2.0, alpha=0.25)
    assert float(loss(y_true, student.astype("float32"))) == pytest.approx(np.mean(0.75 * hard + 0.25 * soft),
                                                                             rel=1e-5)
    restored = DistillationLoss.from_config(loss.get_config())
    assert (restored.temperature, restored.alpha, restored.from_logits) == (2.0, 0.25, True)
    with pytest.raises(ValueError, match="alpha=1.5 must be in"):
        Distillation(alpha=1.5)


def test_finetune_permutes_and_distils_and_keeps_the_planned_blocks():
    model, data = trained_digits_mlp(epochs=3)
    original = model.get_layer("a").kernel.numpy()
    plan = blockprune.plan(model, "cpu-wide", sparsity=0.9)
    result = finetune(model, plan, data, epochs=2, verbose=0, distill=Distillation())
    assert [q.layer for q in result.permutations] == ["a", "b"] and result.distillation == Distillation()
    assert result.verification.ok
    np.testing.assert_array_equal(model.get_layer("a").kernel.numpy(), original)  # the caller's model is untouched
    assert result.sparse_metrics["accuracy"] > 0.5


def test_permuting_convolution_channels_keeps_the_function_through_batch_norm_and_pooling():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 32))
    x = keras.layers.Conv2D(128, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="out")(x), name="cnn")
    rng = np.random.default_rng(0)
    for name in ("c1", "c2"):  # each tap of a kernel: outputs in 2 hidden kinds of input channels
        kernel = model.get_layer(name).kernel
        cin, cout = kernel.shape[-2:]
        grouped, _ = _hidden_groups(cin, cout, kinds=2, seed=len(name))
        kernel.assign((rng.normal(size=(3, 3, 1, 1)) * grouped).astype("float32"))
    bn = model.get_layer("bn")
    for w in bn.weights:
        w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype("float32"))
    plan = blockprune.plan(model, "cpu-wide", sparsity=0.5)
    assert plan.get("c1").block_shape == (9, 64)  # one input channel (its 9 taps) x 64 outputs
    x = rng.normal(size=(2, 12, 12, 32)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x))
    gamma = bn.weights[0].numpy().copy()
    done = permute_channels(model, plan)
    assert [(q.layer, q.reader) for q in done] == [("c1", "c2"), ("c2", "out")]
    assert all(q.gain > 1.01 for q in done)
    assert not np.array_equal(bn.weights[0].numpy(), gamma)  # batch norm's channels follow
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), before, rtol=1e-4, atol=1e-4)

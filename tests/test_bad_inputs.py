"""Bad models and weights: each is refused with one clear error that names what is wrong."""

import keras
import numpy as np
import pytest

import blockprune
from blockprune.export import export
from blockprune.pruning import prune_low_magnitude, prune_once


def _mlp(name="mlp"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((256,))
    x = keras.layers.Dense(256, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, name="out")(x), name=name)


def _poisoned(value):
    model = _mlp()
    kernel = model.get_layer("hidden").kernel
    k = kernel.numpy()
    k[3, 7] = value
    kernel.assign(k)
    return model


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_weights_are_refused_at_plan_prune_and_export(value, tmp_path):
    message = r"weight 'hidden/kernel' holds 1 NaN or infinite value\(s\)"
    model = _poisoned(value)
    with pytest.raises(ValueError, match=message):
        blockprune.plan(model, "cpu-wide")
    with pytest.raises(ValueError, match=message):
        prune_low_magnitude(model)
    plan = blockprune.plan(_mlp(), "cpu-wide", sparsity=0.9)
    sparse = prune_once(_mlp(), plan)
    k = sparse.get_layer("hidden").kernel.numpy()
    k[np.flatnonzero(k)[0] // k.shape[1], np.flatnonzero(k)[0] % k.shape[1]] = value
    sparse.get_layer("hidden").kernel.assign(k)
    with pytest.raises(ValueError, match=message):
        export(sparse, "cpu-wide", tmp_path / "out", plan=plan, select="target", check=False)
    assert not (tmp_path / "out").exists()


def test_a_model_with_no_weights_is_not_told_to_build_itself():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Activation("relu")(inputs), name="no_weights")
    with pytest.raises(ValueError, match="'no_weights' has no weights: its layers"):
        blockprune.plan(model, "cpu-wide")


def _tree(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_export_leaves_the_previous_export_as_it_was(tmp_path, monkeypatch):
    plan = blockprune.plan(_mlp(), "cpu-wide", sparsity=0.9)
    out = tmp_path / "export"
    export(prune_once(_mlp(), plan), "cpu-wide", out, formats=("tflite",), plan=plan, select="target", check=False)
    before = _tree(out)
    assert {"export.json", "mlp.tflite", "mlp.dense.tflite", "mlp.keras"} <= set(before)
    import blockprune.export as export_module

    real = export_module.export_file

    def onnx_fails(model, target, path, output="tflite", *args, **kwargs):  # after the .tflite is written
        if output == "onnx":
            raise RuntimeError("No Op registered for Erfc")
        return real(model, target, path, output, *args, **kwargs)

    other = prune_once(_mlp(), blockprune.plan(_mlp(), "cpu-wide", sparsity=0.8))
    monkeypatch.setattr(export_module, "export_file", onnx_fails)
    with pytest.raises(RuntimeError, match="Erfc"):
        export(other, "cpu-wide", out, formats=("tflite", "onnx"), select="target", check=False)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no partial folder left beside it


def test_a_model_with_integer_inputs_exports_and_verifies(tmp_path):
    keras.utils.set_random_seed(1)
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(100, 32, name="embed")(tokens)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dense(256, activation="relu", name="hidden_1")(x)
    x = keras.layers.Dense(256, activation="relu", name="hidden_2")(x)
    model = keras.Model(tokens, keras.layers.Dense(4, name="out")(x), name="embedder")
    plan = blockprune.plan(model, "cpu-wide", sparsity=0.9)
    records = export(prune_once(model, plan), "cpu-wide", tmp_path, formats=("tflite", "onnx"), plan=plan,
                     select="target", check=False)  # export runs every file against Keras
    assert all(r.rel_error < 1e-3 for r in records)


def test_corrupt_records_name_their_file(tmp_path):
    from blockprune.bench import bench
    from blockprune.runtimes import make_runner

    plan = blockprune.plan(_mlp(), "cpu-wide", sparsity=0.9)
    export(prune_once(_mlp(), plan), "cpu-wide", tmp_path, formats=("tflite",), plan=plan, select="target",
           check=False)
    (tmp_path / "mlp.tflite.runtime.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"mlp.tflite.runtime.json: not a runtime options file"):
        make_runner(tmp_path / "mlp.tflite")
    (tmp_path / "export.json").write_text('{"records": ')
    with pytest.raises(ValueError, match=r"export.json: not an export manifest"):
        bench(tmp_path)


@keras.saving.register_keras_serializable(package="blockprune_tests")
class ApproximateGelu(keras.layers.Layer):
    def call(self, x):
        return keras.activations.gelu(x, approximate=True)


@pytest.mark.parametrize("after", ["gelu", "approximate_gelu", "swish", "silu", "hard_swish", "softplus", "elu", "selu",
                                   "mish", "LayerNormalization", "BatchNormalization", "GroupNormalization"])
def test_common_activations_and_normalizations_export_and_verify(after, tmp_path):
    """Each as the lowered layer's own activation (activations) or as the next layer; export runs
    every file (.tflite, .onnx, OpenVINO) against Keras and refuses a file that disagrees."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((256,))
    if after[0].isupper():
        x = keras.layers.Dense(256, name="hidden")(inputs)
        x = getattr(keras.layers, after)(**({"groups": 8} if after == "GroupNormalization" else {}))(x)
    elif after == "approximate_gelu":
        x = ApproximateGelu()(keras.layers.Dense(256, name="hidden")(inputs))
    else:
        x = keras.layers.Dense(256, activation=after, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(x), name="m")
    plan = blockprune.plan(model, "cpu-wide", sparsity=0.9)
    records = export(prune_once(model, plan), "cpu-wide", tmp_path, plan=plan, select="target", check=False)
    assert {r.format for r in records} >= {"tflite", "onnx"}
    assert all(r.rel_error < 1e-3 for r in records)
    assert all(lay["format"] == "gather-matmul" for r in records if r.variant == "sparse" for lay in r.layers
               if lay["name"] == "hidden/kernel")


def _two_outputs():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(256, activation="relu", name="hidden")(inputs)
    h = keras.layers.Dense(256, activation="relu", name="hidden_2")(h)
    return keras.Model(inputs, [keras.layers.Dense(10, name="a")(h), keras.layers.Dense(3, name="b")(h)], name="two")


def test_every_output_of_a_multi_output_model_is_verified(tmp_path):
    from blockprune.runtimes import compare, keras_outputs, make_runner, outputs_of

    model = _two_outputs()
    plan = blockprune.plan(model, "cpu-wide", sparsity=0.9)
    sparse = prune_once(model, plan)
    records = export(sparse, "cpu-wide", tmp_path, plan=plan, select="target", check=False)
    x = [np.random.default_rng(5).normal(size=(3, 64)).astype("float32")]
    reference = keras_outputs(sparse, x)
    for r in records:
        got = outputs_of(make_runner(r.path), sparse, x)
        assert len(got) == 2 and compare(reference, got)[1] < 1e-3
        # a file whose second output were wrong would be caught: compare checks each output
        assert compare(reference, [got[0], got[1] + 1.0] if got[0].shape == (3, 10) else [got[0] + 1.0, got[1]])[1] > 0.01


def test_fine_tuning_a_multi_output_model_from_one_dataset_says_why_it_cannot(tmp_path):
    from blockprune.data import Dataset
    from blockprune.pruning.finetune import finetune

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 64)).astype("float32"), rng.integers(0, 10, 40)
    data = Dataset(x, y, x, y, name="pairs")
    model = _two_outputs()
    with pytest.raises(ValueError, match=r"model 'two' has 1 input\(s\) and 2 output\(s\)"):
        finetune(model, blockprune.plan(model, "cpu-wide", sparsity=0.9), data, epochs=1)


def test_a_fully_connected_is_credited_to_its_own_layer_only():
    from blockprune.lower.builtin_sparse import match_fully_connected

    fcs = [{"tensor": "m_1/other_1/MatMul", "shape": (256, 256), "encoding": "dense"},
           {"tensor": "m_1/third_1/MatMul", "shape": (256, 256), "encoding": "builtin-sparse"}]
    assert match_fully_connected("hidden", (256, 256), fcs) is None  # ambiguous: not credited
    assert match_fully_connected("third", (256, 256), fcs)["encoding"] == "builtin-sparse"
    assert match_fully_connected("other", (256, 256), fcs)["encoding"] == "dense"
    assert match_fully_connected("alone", (128, 64), fcs + [{"tensor": "x", "shape": (64, 128),
                                                             "encoding": "dense"}])["tensor"] == "x"


class _Eigenvalues(keras.layers.Layer):
    """An op neither TFLite nor ONNX has (TensorFlow's SelfAdjointEigV2)."""

    def call(self, x):
        return keras.ops.linalg.eigh(keras.ops.reshape(x, (-1, 4, 4)))[0]


@pytest.mark.parametrize("fmt, what", [("tflite", "TFLite builtin"), ("onnx", "ONNX")])
def test_a_converter_failure_is_one_line_naming_format_model_layer_and_target(fmt, what, tmp_path):
    inputs = keras.Input((16,))
    model = keras.Model(inputs, _Eigenvalues(name="eig")(keras.layers.Dense(16, name="d")(inputs)), name="eigm")
    with pytest.raises(ValueError) as info:
        export(model, "cpu-wide", tmp_path / "out", formats=(fmt,), allow_dense=True, check=False)
    message = str(info.value)
    assert message == (f"cannot convert model 'eigm' to .{fmt} for target 'cpu-wide' at layer 'eig': op "
                       f"SelfAdjointEigV2 has no {what} equivalent")
    if fmt == "tflite":
        assert "SelfAdjointEigV2" in str(info.value.__cause__)  # the converter's own text, for BLOCKPRUNE_DEBUG=1
    assert not (tmp_path / "out").exists()


def test_a_file_the_runtime_cannot_load_is_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    from blockprune.runtimes import OnnxRuntime

    def refuse(self, model_bytes, options=None, num_threads=None):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : This is an invalid model.\nmore detail")

    monkeypatch.setattr(OnnxRuntime, "runner", refuse)
    with pytest.raises(ValueError, match=r"^mlp\.onnx for target 'cpu-wide': ONNX Runtime cannot load it: "
                                         r"\[ONNXRuntimeError\] : 10 : INVALID_GRAPH : This is an invalid model\.; "
                                         "nothing was written$"):
        export(_mlp(), "cpu-wide", tmp_path / "out", formats=("onnx",), allow_dense=True, check=False)
    assert not (tmp_path / "out").exists()


def test_an_unknown_quantization_stops_a_run_before_any_training(tmp_path):
    from blockprune.run import run

    with pytest.raises(ValueError, match=r"'int4'.*target 'cpu-wide'"):
        run(tmp_path / "report", quantize="dynamic,int4", verbose=False)
    assert list(tmp_path.iterdir()) == []

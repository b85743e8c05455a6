"""Quantized exports: float16, dynamic-range and full-integer files, sparse and dense alike,
verified against Keras with their mode's tolerance."""

import json

import numpy as np
import pytest

from blockprune.export import ExportError, export
from blockprune.quantize import TOLERANCE, Quantization, calibration_samples
from blockprune.runtimes import make_runner
from test_export import _mlp

pytestmark = pytest.mark.tensorflow


def _tflite_weights(path) -> dict[str, int]:
    """{dtype: count} of the tensors of at least 1024 values of a .tflite file at batch 1 (its
    weights; its activations are smaller)."""
    from ai_edge_litert.interpreter import Interpreter

    kinds: dict = {}
    for t in Interpreter(model_content=path.read_bytes()).get_tensor_details():
        if np.prod(t["shape"]) >= 1024:
            name = np.dtype(t["dtype"]).name
            kinds[name] = kinds.get(name, 0) + 1
    return kinds


def _onnx_ops(path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(path).graph.node]


def _calibration(n=64):
    return (np.random.default_rng(7).normal(size=(n, 256)).astype("float32"),)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    out = {}
    for mode in ("float16", "dynamic", "int8"):
        folder = tmp_path_factory.mktemp(mode)
        q = Quantization(mode, _calibration() if mode == "int8" else None)
        out[mode] = folder, export(_mlp((1, 64)), "cpu-wide", folder, formats=("tflite", "onnx", "openvino"),
                                   select="target", check=False, quantize=q)
    return out


@pytest.mark.parametrize("mode", ["float16", "dynamic", "int8"])
def test_quantized_files_match_keras_within_their_tolerance(quantized, mode):
    folder, records = quantized[mode]
    model = _mlp((1, 64))
    x = _calibration(5)[0]
    expected = model.predict(x, verbose=0)
    scale = np.abs(expected).max()
    for r in records:
        assert r.runtime_options["quantize"] == mode
        assert r.rel_error <= TOLERANCE[mode]
        got = make_runner(r.path)(x)
        assert np.abs(got - expected).max() / scale <= TOLERANCE[mode]
        assert np.abs(got - expected).max() / scale > 1e-6  # really quantized: not the float file
    assert json.loads((folder / "export.json").read_text())["quantize"] == mode
    assert [r.runtime_options["runtime"] for r in records[:3]] == ["litert", "onnxruntime", "openvino"]
    sparse, dense = records[0], records[3]
    assert [lay["format"] for lay in sparse.layers][:2] == ["gather-matmul", "gather-matmul"]
    assert sparse.bytes < dense.bytes


def test_tflite_weights_take_the_modes_precision(quantized):
    for mode, dtype in (("float16", "float16"), ("dynamic", "int8"), ("int8", "int8")):
        folder, _ = quantized[mode]
        for name in ("mlp.tflite", "mlp.dense.tflite"):  # the dense baseline is quantized alike
            kinds = _tflite_weights(folder / name)
            assert kinds.get(dtype, 0) >= 2, (mode, name, kinds)
            if mode != "float16":  # (float16 weights are dequantized into float32 tensors at load)
                assert kinds.get("float32", 0) == 0, (mode, name, kinds)


def test_onnx_files_are_quantized_by_onnx_runtime(quantized):
    dyn = _onnx_ops(quantized["dynamic"][0] / "mlp.onnx")
    assert "DynamicQuantizeLinear" in dyn and ("MatMulInteger" in dyn or "DynamicQuantizeMatMul" in dyn)
    static = _onnx_ops(quantized["int8"][0] / "mlp.dense.onnx")
    assert static.count("QuantizeLinear") >= 2 and static.count("DequantizeLinear") >= 2
    import onnx

    half = onnx.load(quantized["float16"][0] / "mlp.onnx").graph
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    weights = [i.data_type for i in half.initializer if i.data_type in floats and np.prod(i.dims) >= 1024]
    assert len(weights) >= 3 and set(weights) == {onnx.TensorProto.FLOAT16}
    assert half.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out


def test_dynamic_range_onnx_of_a_wide_layer_does_not_overflow_in_onnx_runtime():
    """2048 products per output: with 8-bit weights, ONNX Runtime's u8s8 kernel on a CPU without
    VNNI saturated (relative error 0.19 on the MLP 2048); its weights are quantized to 7 bits."""
    import keras

    from blockprune.convert import to_onnx
    from blockprune.quantize import quantize_onnx
    from blockprune.runtimes import RUNTIMES, compare

    keras.utils.set_random_seed(21)
    inputs = keras.Input((2048,))
    x = keras.layers.Dense(2048, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(64)(x))
    proto = quantize_onnx(to_onnx(model, 17), Quantization("dynamic"), model)
    x = np.random.default_rng(2).normal(size=(4, 2048)).astype("float32")
    _, rel = compare(model.predict(x, verbose=0), RUNTIMES["onnxruntime"].runner(proto.SerializeToString())(x))
    assert 1e-6 < rel <= TOLERANCE["dynamic"]


def test_an_int8_file_is_checked_on_the_data_it_was_calibrated_for(tmp_path):
    # Image-like inputs in [0, 1]: random normal check inputs (negative, wider) fall outside
    # the calibrated ranges, so the file must be checked on its own data.
    images = (np.random.default_rng(3).random(size=(64, 256)) > 0.7).astype("float32")
    records = export(_mlp((1, 64)), "cpu-wide", tmp_path / "out", formats=("tflite", "onnx"), select="target",
                     check=False, quantize=Quantization("int8", (images,)))
    assert all(r.rel_error <= TOLERANCE["int8"] for r in records)
    model = _mlp((1, 64))
    expected = model.predict(images[:16], verbose=0)
    got = make_runner(records[0].path)(images[:16])
    assert np.abs(got - expected).max() / np.abs(expected).max() <= TOLERANCE["int8"]


def test_a_file_beyond_its_modes_tolerance_is_refused_and_nothing_written(tmp_path, monkeypatch):
    import blockprune.quantize

    monkeypatch.setitem(blockprune.quantize.TOLERANCE, "int8", 1e-6)
    with pytest.raises(ExportError, match=r"disagrees with Keras: relative error .* > 1e-06 \(int8 weights\)"):
        export(_mlp((1, 64)), "cpu-wide", tmp_path / "out", formats=("tflite",), select="target", check=False,
               quantize=Quantization("int8", _calibration()))
    assert not (tmp_path / "out").exists()


def test_calibration_data_must_fit_the_model():
    from blockprune.data import digits

    model = _mlp((1, 64))
    with pytest.raises(ValueError, match=r"shaped like the input of model 'mlp' \(None, 256\), but digits has samples "
                                         r"of shape \(64,\) \(exporting for target 'cpu-wide'\)"):
        calibration_samples(model, digits(), "cpu-wide")
    with pytest.raises(ValueError, match="quantize='int4' is not one of: none, float16, dynamic, int8"):
        Quantization("int4")


def test_cli_export_quantize(tmp_path, capsys):
    from blockprune.cli import main

    model_path = tmp_path / "mlp.keras"
    _mlp((1, 64)).save(model_path)
    assert main(["export", str(model_path), "--target", "cpu-wide", "--quantize", "int8", "-o",
                 str(tmp_path / "o")]) != 0
    assert "digits has samples of shape (64,)" in capsys.readouterr().err
    assert main(["export", str(model_path), "--target", "cpu-wide", "--data", "digits", "-o", str(tmp_path / "o")]) != 0
    assert "--data 'digits' is used only by --quantize int8" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    np.savez(tmp_path / "calib.npz", x_train=_calibration()[0], y_train=np.zeros(64, "int64"))
    assert main(["export", str(model_path), "--target", "cpu-wide", "--quantize", "int8", "--data",
                 str(tmp_path / "calib.npz"), "--format", "tflite", "--select", "target", "-o",
                 str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "int8 weights (the dense baselines too)" in out
    assert json.loads((tmp_path / "o" / "mlp.tflite.runtime.json").read_text())["quantize"] == "int8"


def test_bench_compares_with_the_fastest_dense_file_of_any_precision(quantized, tmp_path):
    from blockprune.bench import bench, compare_across, table

    float_dir = tmp_path / "float"
    export(_mlp((1, 64)), "cpu-wide", float_dir, formats=("tflite",), select="target", check=False)
    results = [bench(d, batches=(1,), threads=(1,), rounds=2, reps=5, progress=False)
               for d in (float_dir, quantized["dynamic"][0])]
    compare_across(results)
    configs = [c for r in results for c in r.configs]
    assert sorted(c.precision for c in configs) == ["dynamic"] * 3 + ["float32"]
    fastest = min(configs, key=lambda c: c.dense_median_us)
    for c in configs:
        assert c.fastest_dense == f"{fastest.runtime} {fastest.precision}"
        assert c.vs_fastest_dense == pytest.approx(fastest.dense_median_us / c.sparse_median_us)
    assert "| LiteRT | dynamic |" in table(results[1])

"""Lowering equivalence, and exported files reloaded and compared in their runtimes."""

import json

import keras
import numpy as np
import pytest

from blockprune.export import ExportError, export, export_onnx, export_tflite
from blockprune.runtimes import make_runner
from blockprune.lower import BlockSparseDense, lower
from blockprune.masks import block_mask


def _prune_layers(model, blocks: dict, sparsity=0.9, balanced=True):
    for name, block in blocks.items():
        layer = model.get_layer(name)
        k = layer.kernel.numpy()
        w2 = k.reshape(-1, k.shape[-1])
        layer.kernel.assign((w2 * block_mask(w2, block, sparsity, balanced=balanced)).reshape(k.shape))
    return model


def _mlp(blocks, name="mlp", sparsity=0.9, balanced=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((256,))
    x = keras.layers.Dense(512, activation="relu", name="a")(inputs)
    x = keras.layers.Dense(256, activation="relu", name="b")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="c")(x), name=name)
    return _prune_layers(model, {"a": blocks, "b": blocks}, sparsity, balanced)


def _convnet():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 64))
    x = keras.layers.Conv2D(128, 1, activation="relu", name="pw")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", name="k3")(x)
    x = keras.layers.Conv2D(128, 1, strides=2, name="strided")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="convnet")
    return _prune_layers(model, {"pw": (1, 16), "strided": (1, 16)}, 0.75)


def test_lowering_dense_is_equivalent():
    model = _mlp((1, 64))
    lowered, report = lower(model, "cpu-wide")
    assert [(r.name, r.block_shape, r.blocks_per_column) for r in report] == [("a", (1, 64), 26), ("b", (1, 64), 51)]
    assert isinstance(lowered.get_layer("a"), BlockSparseDense) and isinstance(lowered.get_layer("c"), keras.layers.Dense)
    x = np.random.default_rng(0).normal(size=(7, 256)).astype("float32")
    np.testing.assert_allclose(lowered.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert lowered.get_layer("a").values.shape == (8, 26, 64)  # 10% of 256 block rows kept per block-column


@pytest.mark.parametrize("layout", ["batch", "feature", "rows"])
@pytest.mark.parametrize("block, shape", [((1, 64), (256, 512)), ((2, 8), (96, 40)), ((4, 4), (36, 20)),
                                          ((1, 16), (24, 40))])
def test_block_sparse_dense_matches_the_reference_kernel(block, shape, layout):
    """The lowered layer, in each layout, computes what the NumPy reference kernel computes on the
    same packed arrays (40 outputs in blocks of 16: the last block-column is padded)."""
    from blockprune.formats import BlockedELL
    from blockprune.kernels.reference import ell_matmul

    rng = np.random.default_rng(3)
    w = rng.normal(size=shape).astype("float32")
    w *= block_mask(w, block, 0.75, balanced=True)
    packed = BlockedELL.from_dense(w, block)
    bias = rng.normal(size=shape[1]).astype("float32")
    layer = BlockSparseDense.from_packed(packed, bias, layout=layout)
    x = rng.normal(size=(5, shape[0])).astype("float32")
    expected = ell_matmul(x, packed.shape, packed.block_rows, packed.data) + bias
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)
    # and on a leading token axis, as inside a transformer
    x3 = x.reshape(5, 1, shape[0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x3)).reshape(5, -1), expected, rtol=1e-5, atol=1e-5)


def test_lowering_1x1_conv_is_equivalent_and_leaves_others():
    model = _convnet()
    lowered, report = lower(model, "dsp-1x8", block_shapes={"pw/kernel": (1, 16)})
    assert [r.name for r in report] == ["pw"]  # the strided 1x1 conv has no gather-matmul form
    assert isinstance(lowered.get_layer("k3"), keras.layers.Conv2D)
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 64)).astype("float32")
    np.testing.assert_allclose(lowered.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_lowered_model_saves_and_loads(tmp_path):
    lowered, _ = lower(_mlp((1, 64)), "cpu-wide")
    lowered.save(tmp_path / "l.keras")
    again = keras.models.load_model(tmp_path / "l.keras")
    x = np.ones((2, 256), "float32")
    np.testing.assert_array_equal(again.predict(x, verbose=0), lowered.predict(x, verbose=0))


def test_no_lowering_for_builtin_sparse_targets():
    _, report = lower(_mlp((4, 1), balanced=False), "simd-4x1")
    assert report == []


def _tflite_ops(path):
    from blockprune.runtimes import RUNTIMES

    ops, tensors = RUNTIMES["litert"].ops(path.read_bytes())
    return list(tensors.values()), [op["op_name"] for op in ops]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    # the target's own lowering, as given: what this fixture's tests check is the files' form
    return out, export(_mlp((1, 64)), "cpu-wide", out, formats=("tflite", "onnx", "openvino"), select="target",
                       check=False)


def test_gather_matmul_files_run_in_their_runtimes(exported):
    out, records = exported
    assert [r.path.split("/")[-1] for r in records] == ["mlp.tflite", "mlp.onnx", "mlp.openvino.onnx", "mlp.dense.tflite",
                                                        "mlp.dense.onnx"]
    model = _mlp((1, 64))
    x = np.random.default_rng(5).normal(size=(3, 256)).astype("float32")
    expected = model.predict(x, verbose=0)
    for r in records:
        got = make_runner(r.path)(x)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(make_runner(out / "mlp.dense.onnx", runtime_name="openvino")(x), expected, rtol=1e-4,
                               atol=1e-4)
    assert json.loads((out / "mlp.openvino.onnx.runtime.json").read_text())["runtime"] == "openvino"
    _, ops = _tflite_ops(out / "mlp.tflite")
    assert ops.count("GATHER") == 2 and ops.count("BATCH_MATMUL") == 2 and ops.count("FULLY_CONNECTED") == 1
    import onnx

    # ONNX Runtime's file gathers with GatherElements (its Gather is slow one float at a time);
    # OpenVINO's keeps the Gather
    ops = {name: [n.op_type for n in onnx.load(out / name).graph.node] for name in ("mlp.onnx", "mlp.openvino.onnx")}
    assert ops["mlp.onnx"].count("GatherElements") == 2 and "Gather" not in ops["mlp.onnx"]
    assert ops["mlp.openvino.onnx"].count("Gather") == 2 and "GatherElements" not in ops["mlp.openvino.onnx"]
    sparse = records[0]
    assert [lay["format"] for lay in sparse.layers] == ["gather-matmul", "gather-matmul", "dense"]
    dense = records[3]
    assert sparse.bytes < 0.2 * dense.bytes and sparse.gzip_bytes < sparse.bytes
    manifest = json.loads((out / "export.json").read_text())
    assert len(manifest["records"]) == 5 and manifest["point"] == {"batch": 1, "threads": 1}
    # files by name: the folder can move (blockprune run builds it in a staging folder)
    assert [(m["path"], m["options_path"]) for m in manifest["records"]] == [
        (r.path.split("/")[-1], r.options_path.split("/")[-1]) for r in records]


def test_builtin_sparse_tflite_stores_block_encoded_weights(tmp_path):
    record = export_tflite(_mlp((4, 1), balanced=False), "simd-4x1", tmp_path / "m.tflite", check=False)
    assert [lay["format"] for lay in record.layers] == ["builtin-sparse", "builtin-sparse", "dense"]
    tensors, ops = _tflite_ops(tmp_path / "m.tflite")
    assert "DENSIFY" not in ops
    encoded = [t for t in tensors if t["sparsity_parameters"]]
    assert len(encoded) == 2 and all(len(t["sparsity_parameters"]["block_map"]) == 1 for t in encoded)
    options = json.loads((tmp_path / "m.tflite.runtime.json").read_text())
    assert options["default_delegates"] is True and options["lowering"] == "builtin-sparse"


def test_tfmot_style_1x4_blocks_end_up_behind_densify(tmp_path):
    import blockprune

    model = _mlp((1, 4), balanced=False)  # tfmot's block_size=(1, 4): not TFLite's fast path
    p = blockprune.plan(model, "simd-4x1", overrides={"a|b": "block=1x4"})
    with pytest.raises(ExportError, match="Layer 'a' is 90% sparse in blocks \\(1, 4\\) but TFLite stores it behind a "
                                          "DENSIFY op"):
        export_tflite(model, "simd-4x1", tmp_path / "m.tflite", plan=p)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    record = export_tflite(model, "simd-4x1", tmp_path / "m.tflite", plan=p, allow_dense=True, check=False)
    assert record.warnings and {lay["format"] for lay in record.layers} >= {"densify"}


def test_int8_export_records_delegates_off(tmp_path):
    record = export_tflite(_mlp((16, 1), balanced=False), "tflite-int8-16x1", tmp_path / "q.tflite", check=False)
    assert record.runtime_options["op_resolver_type"] == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    assert record.rel_error < 0.05 and record.layers[0]["format"] == "builtin-sparse"
    got = make_runner(tmp_path / "q.tflite")(np.ones((2, 256), "float32"))
    assert got.shape == (2, 10)


def test_onnx_sparse_initializers_for_runtimes_without_a_sparse_kernel(tmp_path):
    record = export_onnx(_mlp((4, 1), balanced=False), "simd-4x1", tmp_path / "m.onnx", check=False)
    import onnx

    proto = onnx.load(tmp_path / "m.onnx")
    assert len(proto.graph.sparse_initializer) == 2
    assert [lay["format"] for lay in record.layers][:2] == ["sparse-initializer", "sparse-initializer"]
    dense = export_onnx(_mlp((4, 1), balanced=False), "simd-4x1", tmp_path / "d.onnx", dense=True)
    assert record.bytes < 0.5 * dense.bytes


def test_export_refuses_a_model_without_the_targets_blocks(tmp_path):
    with pytest.raises(ExportError, match="no weight with a block shape of target 'cpu-wide'"):
        export(_mlp((4, 1), balanced=False), "cpu-wide", tmp_path / "out")
    with pytest.raises(ValueError, match="format 'tf' is not one of"):
        export(_mlp((1, 64)), "cpu-wide", tmp_path / "out", formats=("tf",))


def test_cli_pack_inspect_export(tmp_path, capsys):
    from blockprune.cli import main

    _mlp((1, 64)).save(tmp_path / "m.keras")
    assert main(["pack", str(tmp_path / "m.keras"), "-t", "cpu-wide", "-o", str(tmp_path / "w.safetensors")]) == 0
    assert main(["inspect", str(tmp_path / "w.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "checksums OK" in out and "blocked-ell" in out and "(1, 64)" in out
    assert main(["export", str(tmp_path / "m.keras"), "-t", "cpu-wide", "--format", "onnx", "--no-dense-baseline",
                 "--select", "target", "-o", str(tmp_path / "exp")]) == 0
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["export.json", "mlp.keras", "mlp.onnx",
                                                                   "mlp.onnx.runtime.json"]
    capsys.readouterr()
    assert main(["export", str(tmp_path / "m.keras"), "--format", "coreml", "-o", str(tmp_path / "x")]) == 2
    assert "--format 'coreml'" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    assert main(["inspect", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.safetensors" in err


@pytest.mark.parametrize("data_shape, axis, indices_shape, rewritten", [
    (("rows", 50), 1, (4, 6), True),        # gather-matmul, batch-major: [rows, in] -> [rows, ncb, k*rows]
    (("rows", 50), -1, (24,), True),
    (("rows", 5, 5, 50), 3, (24,), True),   # channel-gather: NHWC channels
    (("rows", 5, 5, 50), 3, (4, 6), False),
    ((50, "rows"), 0, (24,), False),        # feature-major gathers whole rows: Gather is fast there
    (("rows", 50), 1, (3,), False),         # too few to matter
])
def test_onnx_runtime_files_gather_the_last_axis_with_gather_elements(data_shape, axis, indices_shape, rewritten):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from blockprune.convert import gathers_as_gather_elements

    rng = np.random.default_rng(0)
    size = data_shape[axis]
    indices = numpy_helper.from_array(rng.integers(0, size, indices_shape).astype(np.int32), "indices")
    graph = helper.make_graph([helper.make_node("Gather", ["x", "indices"], ["y"], axis=axis, name="g")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(data_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [indices])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    original = proto.SerializeToString()
    assert gathers_as_gather_elements(proto) == int(rewritten)
    ops = [n.op_type for n in proto.graph.node]
    assert ("GatherElements" in ops) is rewritten and ("Gather" in ops) is not rewritten
    for rows in (1, 3):  # the batch is dynamic
        x = rng.normal(size=[rows if d == "rows" else d for d in data_shape]).astype(np.float32)
        want, got = (ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                     for m in (original, proto.SerializeToString()))
        np.testing.assert_array_equal(got, want)

"""The lowering catalogue: each lowering against the NumPy reference kernels and Keras, on odd
shapes, strides, padding and dilation; exported files verified in every runtime; the selection
by measurement and the never-slower check."""

import json
import re

import keras
import numpy as np
import pytest

import blockprune
from blockprune.export import export, export_file
from blockprune.formats import BlockedELL
from blockprune.kernels.reference import channel_block_conv, ell_matmul
from blockprune.lower import LOWERINGS, candidates, lower
from blockprune.masks import block_mask
from blockprune.pruning import prune_once
from blockprune.runtimes import make_runner
from blockprune.structure import read_structure
from blockprune.targets import load_target
from conftest import REPO


def _np(t):
    return keras.ops.convert_to_numpy(t)


# --------------------------------------------------------------------------- attention

def _attention_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((10, 48), name="tokens")
    attn = keras.layers.MultiHeadAttention(num_heads=3, key_dim=24, name="attention")(inputs, inputs)
    x = keras.layers.Add()([inputs, attn])
    x = keras.layers.Dense(96, activation="relu", name="ff_1")(x)
    return keras.Model(inputs, keras.layers.Dense(48, name="ff_2")(x), name="attn_block")


def _small_blocks_target(write_toml, channel_blocks="[8, 4]"):
    """cpu-wide with blocks small enough for small test layers."""
    toml = (REPO / "targets" / "cpu-wide.toml").read_text().replace('name = "cpu-wide"', 'name = "small-blocks"')
    toml = re.sub(r"^block_shapes = .*$", "block_shapes = [[1, 8]]", toml, flags=re.M)
    toml = toml.replace("min_weights = 16384", "min_weights = 64")
    toml = re.sub(r"^channel_blocks = .*$", f"channel_blocks = {channel_blocks}", toml, flags=re.M)
    return load_target(write_toml(toml, "small-blocks.toml"))


@pytest.fixture
def small_blocks(write_toml):
    return _small_blocks_target(write_toml)


def test_attention_projections_lower_in_every_layout(small_blocks):
    model = _attention_model()
    plan = blockprune.plan(model, small_blocks, sparsity=0.75)
    assert {lp.weight for lp in plan.pruned_layers} >= {"query/kernel", "key/kernel", "value/kernel",
                                                        "attention_output/kernel"}
    sparse = prune_once(model, plan)
    structure = read_structure(sparse, small_blocks, plan)
    x = np.random.default_rng(0).normal(size=(2, 10, 48)).astype("float32")
    expected = sparse.predict(x, verbose=0)
    for variant in ("feature", "batch", "rows"):
        lowered, report = lower(sparse, small_blocks, "tflite", structure=structure,
                                choices={ws.name: ("gather-matmul", variant) for ws in structure})
        assert {r.weight for r in report} >= {"query/kernel", "attention_output/kernel", "kernel"}
        np.testing.assert_allclose(lowered.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)
        # all four projections feature-major: the attention itself is computed feature-major
        fused = type(lowered.get_layer("attention")).__name__ == "FeatureMajorAttention"
        assert fused == (variant == "feature")
        assert ({r.format for r in report if r.name == "attention"}
                == {{"feature": "gather-matmul (feature-major, fused attention)", "batch": "gather-matmul",
                     "rows": "gather-matmul (row-gather)"}[variant]})
    # the query projection's lowered layer computes what the reference kernel computes on its packed arrays
    ws = structure.get("attention/query/kernel")
    packed = BlockedELL.from_dense(ws.matrix, ws.block_shape)
    query = next(s for s in keras.Model(lowered.inputs, lowered.outputs).get_layer("attention")._flatten_layers()
                 if s.name == "query")
    tokens = x.reshape(-1, 48)
    bias = _np(query.bias).reshape(-1)
    got = _np(query(x)).reshape(-1, packed.shape[1])
    np.testing.assert_allclose(got, ell_matmul(tokens, packed.shape, packed.block_rows, packed.data) + bias,
                               rtol=1e-5, atol=1e-5)


def _fused_choices(structure):
    return {ws.name: ("gather-matmul", "feature") for ws in structure}


def test_fused_attention_saves_loads_and_runs_on_several_samples(small_blocks, tmp_path):
    sparse = prune_once(_attention_model(), blockprune.plan(_attention_model(), small_blocks, sparsity=0.75))
    structure = read_structure(sparse, small_blocks)
    lowered, _ = lower(sparse, small_blocks, "tflite", structure=structure, choices=_fused_choices(structure))
    lowered.save(tmp_path / "fused.keras")
    loaded = keras.models.load_model(tmp_path / "fused.keras")
    x = np.random.default_rng(2).normal(size=(5, 10, 48)).astype("float32")
    assert type(loaded.get_layer("attention")).__name__ == "FeatureMajorAttention"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), sparse.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_attention_with_a_mask_is_not_fused(small_blocks):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((10, 48))
    attn = keras.layers.MultiHeadAttention(num_heads=3, key_dim=24, name="attention")(inputs, inputs,
                                                                                      use_causal_mask=True)
    model = keras.Model(inputs, keras.layers.Dense(48, name="out")(attn))
    sparse = prune_once(model, blockprune.plan(model, small_blocks, sparsity=0.75))
    structure = read_structure(sparse, small_blocks)
    lowered, report = lower(sparse, small_blocks, "tflite", structure=structure, choices=_fused_choices(structure))
    assert isinstance(lowered.get_layer("attention"), keras.layers.MultiHeadAttention)
    assert {r.format for r in report} == {"gather-matmul (feature-major)"}
    x = np.random.default_rng(3).normal(size=(2, 10, 48)).astype("float32")
    np.testing.assert_allclose(lowered.predict(x, verbose=0), sparse.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_export_times_the_fused_attention_beside_the_per_layer_choice(small_blocks, tmp_path):
    model = _attention_model()
    plan = blockprune.plan(model, small_blocks, sparsity=0.75)
    sparse = prune_once(model, plan)
    structure = read_structure(sparse, small_blocks, plan)
    record = export_file(sparse, small_blocks, tmp_path / "m.onnx", "onnx", plan=plan, check_rounds=2, check_reps=5,
                         choices={ws.name: ("gather-matmul", "batch") for ws in structure})
    check = record.check
    assert check["fused_us"] > 0 and check["per_layer_us"] > 0
    assert check["attention_fused"] == (check["fused_us"] < check["per_layer_us"])
    if not check["kept_dense"]:  # else the record says why it is dense instead
        why = {lay["name"]: lay.get("why", "") for lay in record.layers}
        assert re.search(r"attention (not )?fused: the fused file ran \d+ us", why["attention/query/kernel"])
        assert "attention" not in why["ff_1/kernel"]
        formats = {lay["format"] for lay in record.layers if lay["name"].startswith("attention/")}
        assert formats == ({"gather-matmul (feature-major, fused attention)"} if check["attention_fused"]
                           else {"gather-matmul"})
    x = np.random.default_rng(4).normal(size=(3, 10, 48)).astype("float32")
    np.testing.assert_allclose(make_runner(tmp_path / "m.onnx")(x), sparse.predict(x, verbose=0), rtol=1e-4,
                               atol=1e-4)


def test_attention_files_run_sparse_in_every_runtime(small_blocks, tmp_path):
    model = _attention_model()
    plan = blockprune.plan(model, small_blocks, sparsity=0.75)
    sparse = prune_once(model, plan)
    records = export(sparse, small_blocks, tmp_path, plan=plan, select="target", check=False,
                     dense_baseline=False)
    x = np.random.default_rng(1).normal(size=(1, 10, 48)).astype("float32")
    expected = sparse.predict(x, verbose=0)
    for r in records:
        assert {lay["format"] for lay in r.layers} == {"gather-matmul"}, r.path
        np.testing.assert_allclose(make_runner(r.path)(x), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- KxK convolutions

@pytest.mark.parametrize("conv, kwargs, shape", [
    (keras.layers.Conv2D, {"kernel_size": 3, "padding": "same"}, (9, 11, 12)),
    (keras.layers.Conv2D, {"kernel_size": (3, 2), "strides": 2, "padding": "valid"}, (9, 11, 12)),
    (keras.layers.Conv2D, {"kernel_size": 3, "dilation_rate": 2, "padding": "same"}, (10, 7, 12)),
    (keras.layers.Conv1D, {"kernel_size": 5, "strides": 2, "padding": "same"}, (17, 12)),
    (keras.layers.Conv2D, {"kernel_size": 1, "strides": 2}, (8, 8, 12)),
])
def test_channel_gather_matches_the_reference_and_keras(small_blocks, conv, kwargs, shape):
    keras.utils.set_random_seed(4)
    inputs = keras.Input(shape)
    layer = conv(16, activation="relu", name="conv", **kwargs)
    model = keras.Model(inputs, layer(inputs), name="convnet")
    plan = blockprune.plan(model, small_blocks, sparsity=0.75, overrides=None)
    lp = plan.get("conv")
    taps = int(np.prod(layer.kernel.shape[:-2]))
    assert lp.block_shape == (taps, 8) and (lp.view.is_channel_major or taps == 1)
    sparse = prune_once(model, plan)
    structure = read_structure(sparse, small_blocks, plan)
    ws = structure.get("conv/kernel")
    assert ws.blocked and ws.balanced and ws.kept_per_block_column == (3, 3)  # 12 channels, 75% pruned
    assert LOWERINGS["channel-gather"].handles(ws) and ("channel-gather", "grouped") in candidates(ws, "tflite")
    x = np.random.default_rng(2).normal(size=(2, *shape)).astype("float32")
    expected = sparse.predict(x, verbose=0)
    packed = BlockedELL.from_dense(ws.matrix, ws.block_shape)
    conv_layer = sparse.get_layer("conv")
    ref = channel_block_conv(x, packed.block_rows, packed.data.reshape(*packed.data.shape[:2], taps, 8),
                             conv_layer.kernel_size, conv_layer.strides, conv_layer.padding, conv_layer.dilation_rate)
    np.testing.assert_allclose(np.maximum(ref + _np(conv_layer.bias), 0), expected, rtol=1e-4, atol=1e-5)
    for variant in ("grouped", "split"):
        lowered, report = lower(sparse, small_blocks, "onnx", structure=structure,
                                choices={"conv/kernel": ("channel-gather", variant)})
        assert [(r.name, r.lowering) for r in report] == [("conv", "channel-gather")]
        np.testing.assert_allclose(lowered.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)


def test_channel_gather_files_verify_in_every_runtime(small_blocks, tmp_path):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((12, 12, 16))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(24, 3, strides=2, name="c2")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="cnn")
    plan = blockprune.plan(model, small_blocks, sparsity=0.75)
    sparse = prune_once(model, plan)
    records = export(sparse, small_blocks, tmp_path, plan=plan, select="target", check=False,
                     dense_baseline=False)
    assert [r.format for r in records] == ["tflite", "onnx", "openvino"]
    x = np.random.default_rng(3).normal(size=(2, 12, 12, 16)).astype("float32")
    for r in records:
        assert [lay["format"] for lay in r.layers] == ["channel-gather", "channel-gather"], r.path
        np.testing.assert_allclose(make_runner(r.path)(x), sparse.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
    from blockprune.runtimes import RUNTIMES

    ops, _ = RUNTIMES["litert"].ops((tmp_path / "cnn.tflite").read_bytes())
    assert [op["op_name"] for op in ops].count("CONV_2D") == 2  # one grouped convolution per layer


# --------------------------------------------------------------------------- layouts

def test_feature_major_chains_leave_out_the_transposes_between_layers(small_blocks):
    keras.utils.set_random_seed(6)
    inputs = keras.Input((40,))
    x = keras.layers.Dense(64, activation="relu", name="a")(inputs)
    x = keras.layers.Dense(64, activation="relu", name="b")(x)
    model = keras.Model(inputs, keras.layers.Dense(16, name="c")(x), name="chain")
    plan = blockprune.plan(model, small_blocks, sparsity=0.75)
    sparse = prune_once(model, plan)
    structure = read_structure(sparse, small_blocks, plan)
    x = np.random.default_rng(4).normal(size=(5, 40)).astype("float32")
    from blockprune.convert import build_file

    transposes, gathers = {}, {}
    for variant in ("batch", "feature", "rows"):
        choices = {ws.name: ("gather-matmul", variant) for ws in structure}
        lowered, _ = lower(sparse, small_blocks, "tflite", structure=structure, choices=choices)
        np.testing.assert_allclose(lowered.predict(x, verbose=0), sparse.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
        if variant == "feature":
            assert [lowered.get_layer(n).output_layout for n in "abc"] == ["feature", "feature", "batch"]
            assert [lowered.get_layer(n).input_layout for n in "abc"] == ["batch", "feature", "feature"]
        from blockprune.runtimes import RUNTIMES

        data = build_file(sparse, small_blocks, "tflite", structure, choices).data
        ops, tensors = RUNTIMES["litert"].ops(data)
        transposes[variant] = [op["op_name"] for op in ops].count("TRANSPOSE")
        # the rank of each GATHER's output: [rows gathered, batch] or [batch, block-columns, rows]
        gathers[variant] = [len(tensors[op["outputs"][0]]["shape"]) for op in ops if op["op_name"] == "GATHER"]
        np.testing.assert_allclose(RUNTIMES["litert"].runner(data)(x), sparse.predict(x, verbose=0), rtol=1e-4,
                                   atol=1e-4)
    assert transposes["feature"] == 2  # one in, one out, for the whole chain of three layers
    # row-gather gathers whole rows of the transposed input, batch-major single values of each row
    assert gathers["rows"] == [2, 2, 2] and gathers["batch"] == [3, 3, 3]


# --------------------------------------------------------------------------- choosing by measurement

def _one_dense(width, block, sparsity, seed, name):
    """A model of one Dense layer ``a`` (width x width) pruned to ``block`` at ``sparsity``."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width,))
    model = keras.Model(inputs, keras.layers.Dense(width, name="a")(inputs), name=name)
    k = model.get_layer("a").kernel.numpy()
    model.get_layer("a").kernel.assign(k * block_mask(k, block, sparsity, balanced=True))
    return model


def _nearly_dense_model():
    """A 1024x1024 layer with only 10% of its (1, 16) blocks zero: every lowering does ~all the
    work of the dense matmul plus gathers, so dense is faster everywhere."""
    return _one_dense(1024, (1, 16), 0.1, 7, "nearly_dense")


def test_selection_keeps_a_layer_dense_where_dense_is_faster(tmp_path):
    record = export_file(_nearly_dense_model(), "cpu-wide", tmp_path / "m.tflite", "tflite")
    layer = record.layers[0]
    assert layer["format"] == "dense" and layer["why"].startswith("kept dense: dense")
    assert "gather-matmul (batch)" in layer["why"] and "gather-matmul (feature)" in layer["why"]
    assert record.runtime_options["variant"] == "sparse"


def test_a_file_slower_than_dense_is_not_written(tmp_path):
    record = export_file(_nearly_dense_model(), "cpu-wide", tmp_path / "m.onnx", "onnx", select="target")
    assert record.check["kept_dense"] and record.check["sparse_us"] > record.check["dense_us"]
    assert record.layers[0]["format"] == "dense" and "kept dense: the lowered file ran" in record.layers[0]["why"]
    assert json.loads((tmp_path / "m.onnx.runtime.json").read_text())["kept_dense"] is True
    import onnx

    assert "Gather" not in [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]


def test_selection_lowers_a_layer_where_it_pays(tmp_path):
    model = _one_dense(2048, (1, 64), 0.9, 8, "wide")
    record = export_file(model, "cpu-wide", tmp_path / "m.tflite", "tflite")
    assert record.layers[0]["format"].startswith("gather-matmul") and "vs dense" in record.layers[0]["why"]
    assert record.check["speedup"] > 1 and not record.check["kept_dense"]


@pytest.mark.parametrize("second, kept", [(0.9, True), (1.25, False)])
def test_a_narrow_win_is_timed_again_and_the_worse_measurement_decides(tmp_path, monkeypatch, second, kept):
    from blockprune import timing

    speedups = iter([1.2, second])
    asked = []

    def timed(files, runtime_name, *args):  # the new process of each whole-file check: 1.2x, then `second`
        asked.append(sorted(files))
        s = next(speedups)
        return {"dense": (100.0 * s, 0.0, 0.0), "sparse": (100.0, 0.0, 0.0)}

    monkeypatch.setattr(timing, "latencies_in_fresh_process", timed)
    model = _one_dense(512, (1, 64), 0.9, 8, "narrow_win")
    record = export_file(model, "cpu-wide", tmp_path / "m.tflite", "tflite", select="target")
    assert record.check["first_speedup"] == 1.2
    assert asked == [["dense", "sparse"]] * 2  # each check timed both files in a process of its own
    assert record.check["speedup"] == min(1.2, second) and record.check["kept_dense"] is kept
    assert (record.layers[0]["format"] == "dense") is kept


def test_selection_reads_a_tuning_profile_where_it_measured_every_candidate(tmp_path):
    from blockprune.profile import Measurement, Profile

    model = _one_dense(512, (1, 128), 0.9, 9, "p")
    sparsity = read_structure(model, load_target("cpu-wide")).get("a/kernel").block_sparsity

    def profile(batch_us, feature_us, rows_us, dense_us=100.0):
        return Profile("cpu-wide", {}, {}, [
            Measurement("tflite", (512, 512), 1, 1, None, 0.0, dense_us, "dense"),
            Measurement("tflite", (512, 512), 1, 1, (1, 128), sparsity, batch_us, "gather-matmul"),
            Measurement("tflite", (512, 512), 1, 1, (1, 128), sparsity, feature_us, "gather-matmul (feature-major)"),
            Measurement("tflite", (512, 512), 1, 1, (1, 128), sparsity, rows_us, "gather-matmul (row-gather)")])

    record = export_file(model, "cpu-wide", tmp_path / "f.tflite", "tflite", profile=profile(50.0, 20.0, 30.0),
                         check=False)
    assert record.layers[0]["format"] == "gather-matmul (feature-major)"
    assert "20 us vs dense 100 us" in record.layers[0]["why"] and "tuning profile" in record.layers[0]["why"]
    record = export_file(model, "cpu-wide", tmp_path / "r.tflite", "tflite", profile=profile(50.0, 40.0, 30.0),
                         check=False)
    assert record.layers[0]["format"] == "gather-matmul (row-gather)"
    record = export_file(model, "cpu-wide", tmp_path / "d.tflite", "tflite", profile=profile(150.0, 120.0, 110.0),
                         check=False)
    assert record.layers[0]["format"] == "dense" and "tuning profile" in record.layers[0]["why"]
    # a runtime the profile did not measure is probed
    record = export_file(model, "cpu-wide", tmp_path / "o.onnx", "onnx", profile=profile(150.0, 120.0, 110.0),
                         check=False)
    assert "(probe)" in record.layers[0]["why"]


# --------------------------------------------------------------------------- widths blocks do not divide

def test_widths_the_blocks_do_not_divide_are_pruned_and_lowered(tmp_path):
    """A 200-200-40 MLP under cpu-wide: (1, 128) leaves a last block-column 72 wide, padded."""
    keras.utils.set_random_seed(10)
    inputs = keras.Input((200,))
    x = keras.layers.Dense(200, activation="relu", name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(200, name="b")(x), name="odd")
    plan = blockprune.plan(model, "cpu-wide", sparsity=0.9)
    assert [lp.block_shape for lp in plan.layers] == [(1, 128), (1, 128)]
    sparse = prune_once(model, plan)
    assert blockprune.verify(sparse, plan).ok
    structure = read_structure(sparse, load_target("cpu-wide"), plan)
    x = np.random.default_rng(5).normal(size=(3, 200)).astype("float32")
    for variant in ("batch", "feature", "rows"):
        lowered, report = lower(sparse, "cpu-wide", "tflite", structure=structure,
                                choices={ws.name: ("gather-matmul", variant) for ws in structure})
        assert len(report) == 2
        np.testing.assert_allclose(lowered.predict(x, verbose=0), sparse.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    records = export(sparse, "cpu-wide", tmp_path, plan=plan, select="target", check=False, dense_baseline=False)
    for r in records:
        assert [lay["format"] for lay in r.layers] == ["gather-matmul", "gather-matmul"], r.path
        np.testing.assert_allclose(make_runner(r.path)(x), sparse.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


def test_a_convolution_whose_channel_blocks_do_not_divide_its_outputs(write_toml):
    small_blocks = _small_blocks_target(write_toml, channel_blocks="[8]")
    keras.utils.set_random_seed(11)
    inputs = keras.Input((7, 7, 12))
    model = keras.Model(inputs, keras.layers.Conv2D(20, 3, padding="same", name="conv")(inputs), name="c20")
    plan = blockprune.plan(model, small_blocks, sparsity=0.75)
    assert plan.get("conv").block_shape == (9, 8)  # 20 outputs: groups of 8, 8 and 4
    sparse = prune_once(model, plan)
    structure = read_structure(sparse, small_blocks, plan)
    x = np.random.default_rng(6).normal(size=(2, 7, 7, 12)).astype("float32")
    for fmt, variant in (("tflite", "grouped"), ("onnx", "split")):
        lowered, report = lower(sparse, small_blocks, fmt, structure=structure,
                                choices={"conv/kernel": ("channel-gather", variant)})
        assert len(report) == 1 and lowered.get_layer("conv").conv.filters == 24
        np.testing.assert_allclose(lowered.predict(x, verbose=0), sparse.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_an_unbalanced_mask_is_lowered_with_its_padding_reported(tmp_path):
    keras.utils.set_random_seed(12)
    inputs = keras.Input((256,))
    model = keras.Model(inputs, keras.layers.Dense(256, name="a")(inputs), name="unbalanced")
    k = model.get_layer("a").kernel.numpy()
    model.get_layer("a").kernel.assign(k * block_mask(k, (1, 128), 0.9, balanced=False))
    record = export_file(model, "cpu-wide", tmp_path / "m.tflite", "tflite", select="target", check=False)
    layer = record.layers[0]
    lo, hi = layer["kept_per_block_column"]
    assert layer["format"] == "gather-matmul" and lo < hi and layer["padding"] > 0
    assert any(f"keep {lo} to {hi} blocks" in w and "pads every one" in w for w in record.warnings)
    x = np.random.default_rng(7).normal(size=(2, 256)).astype("float32")
    np.testing.assert_allclose(make_runner(record.path)(x), model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


def test_feature_major_keeps_a_softmax_on_the_feature_axis(small_blocks):
    """Softmax is not elementwise: applied to the transposed product it would normalise over the
    rows (MobileNetV2's 1280 -> 1000 classifier was exported 499x wrong before the file check caught it)."""
    keras.utils.set_random_seed(13)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(40, activation="relu", name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(20, activation="softmax", name="b")(x), name="cls")
    plan = blockprune.plan(model, small_blocks, sparsity=0.75)
    sparse = prune_once(model, plan)
    structure = read_structure(sparse, small_blocks, plan)
    lowered, _ = lower(sparse, small_blocks, "tflite", structure=structure,
                       choices={ws.name: ("gather-matmul", "feature") for ws in structure})
    assert lowered.get_layer("a").output_layout == "batch"  # no chain into a softmax layer
    x = np.random.default_rng(8).normal(size=(5, 64)).astype("float32")
    np.testing.assert_allclose(lowered.predict(x, verbose=0), sparse.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_openvino_runs_a_feature_major_classifier_head(tmp_path):
    """MobileNetV2's head (pooling -> 1280x1000 softmax classifier, feature-major) is a graph
    OpenVINO 2026.4 refuses to compile with static shapes; the runner falls back to dynamic ones."""
    keras.utils.set_random_seed(14)
    inputs = keras.Input((7, 7, 1280))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1000, activation="softmax", name="p")(x), name="head")
    k = model.get_layer("p").kernel.numpy()
    model.get_layer("p").kernel.assign(k * block_mask(k, (1, 128), 0.5, balanced=True))
    record = export_file(model, "cpu-wide", tmp_path / "h.openvino.onnx", "openvino", check=False,
                         choices={"p/kernel": ("gather-matmul", "feature")})
    x = np.random.default_rng(9).normal(size=(1, 7, 7, 1280)).astype("float32")
    np.testing.assert_allclose(make_runner(record.path)(x), model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_the_planner_counts_every_rewriting_lowering_as_running_a_kind_sparse():
    from blockprune.lower import runs_sparse
    from blockprune.targets import load_target

    wide, simd = load_target("cpu-wide"), load_target("simd-4x1")
    # channel-gather runs KxK convolutions sparse beside gather-matmul; nothing runs recurrent cells sparse
    assert [runs_sparse(wide, k, "tflite") for k in ("dense", "conv", "einsum_dense", "recurrent")] == [
        True, True, True, False]
    assert [runs_sparse(simd, k, "tflite") for k in ("dense", "conv")] == [True, False]  # builtin-sparse: Dense only


# --------------------------------------------------------------------------- Dense as a grouped convolution

@pytest.mark.parametrize("shape", [(40,), (5, 40)])
def test_a_dense_layer_runs_as_a_grouped_convolution_in_files_with_int8_weights(small_blocks, shape):
    from blockprune.convert import build_file
    from blockprune.quantize import Quantization
    from blockprune.runtimes import RUNTIMES, compare

    keras.utils.set_random_seed(13)
    inputs = keras.Input(shape)
    model = keras.Model(inputs, keras.layers.Dense(44, activation="relu", name="fc")(inputs), name="fc44")
    plan = blockprune.plan(model, small_blocks, sparsity=0.75)
    sparse = prune_once(model, plan)
    structure = read_structure(sparse, small_blocks, plan)
    ws = structure.get("fc/kernel")
    assert ws.kind == "dense" and ws.block_shape == (1, 8)  # 44 outputs: 5 groups of 8 and a last one of 4
    # a candidate of .tflite files with int8 weights only (it ties or loses in float32 and in ONNX)
    assert ("channel-gather", "grouped") in candidates(ws, "tflite", quantized=True)
    assert not [c for c in candidates(ws, "tflite") + candidates(ws, "onnx", quantized=True) if c[0] == "channel-gather"]

    x = np.random.default_rng(7).normal(size=(3, *shape)).astype("float32")
    expected = sparse.predict(x, verbose=0)
    packed = BlockedELL.from_dense(ws.matrix, ws.block_shape)
    fc = sparse.get_layer("fc")
    ref = ell_matmul(x.reshape(-1, shape[-1]), ws.matrix.shape, packed.block_rows, packed.data)
    np.testing.assert_allclose(np.maximum(ref + _np(fc.bias), 0).reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)
    choices = {"fc/kernel": ("channel-gather", "grouped")}
    lowered, report = lower(sparse, small_blocks, "tflite", structure=structure, choices=choices)
    assert [(r.name, r.lowering) for r in report] == [("fc", "channel-gather")]
    np.testing.assert_allclose(lowered.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)

    for mode in ("dynamic", "int8"):
        q = Quantization(mode, (np.random.default_rng(8).normal(size=(64, *shape)).astype("float32"),))
        built = build_file(sparse, small_blocks, "tflite", structure, choices=choices, quantization=q)
        ops = [op["op_name"] for op in RUNTIMES["litert"].ops(built.data)[0]]
        assert "CONV_2D" in ops and "BATCH_MATMUL" not in ops and "FULLY_CONNECTED" not in ops, ops
        _, rel = compare(expected, RUNTIMES["litert"].runner(built.data, built.options)(x))
        assert rel < q.tolerance(), (mode, rel)

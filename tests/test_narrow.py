"""Unread outputs: a dense layer whose output only a gathering lowered layer reads computes only
the features that layer gathers (``blockprune.lower.narrow``), in Keras and in the exported
files, and the selection probes it so."""

import keras
import numpy as np
import pytest

import blockprune
from blockprune.export import export_file
from blockprune.lower import lower
from blockprune.lower.narrow import Narrowed, narrow
from blockprune.pruning import prune_once
from blockprune.structure import read_structure
from test_lowerings import _small_blocks_target

pytestmark = pytest.mark.tensorflow


@pytest.fixture
def small_blocks(write_toml):
    return _small_blocks_target(write_toml)


def _chain(activation="relu", second_reader=False, output=False):
    """40 -> a (64, dense: skipped by the plan) -> b (64, pruned to 90% in (1, 8) blocks) -> c."""
    keras.utils.set_random_seed(11)
    inputs = keras.Input((40,))
    a = keras.layers.Dense(64, activation=activation, name="a")(inputs)
    b = keras.layers.Dense(64, activation="relu", name="b")(a)
    outputs = [keras.layers.Dense(16, name="c")(b)]
    if second_reader:
        outputs.append(keras.layers.Dense(4, name="d")(a))
    if output:
        outputs.append(a)
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name="chain")


def _pruned(model, target, a="skip"):
    names = {layer.name for layer in model.layers}
    plan = blockprune.plan(model, target, sparsity=0.9, overrides={n: "skip" for n in ("c", "d") if n in names} | {"a": a})
    sparse = prune_once(model, plan)
    return sparse, read_structure(sparse, target, plan)


def _read_rows(model, name):
    kernel = model.get_layer(name).kernel.numpy()
    return np.flatnonzero(np.any(kernel.reshape(-1, *kernel.shape[-2:]) != 0, axis=(0, 2)))


@pytest.mark.parametrize("variant", ["batch", "feature"])
def test_a_dense_layer_computes_only_the_outputs_its_lowered_reader_gathers(small_blocks, variant):
    sparse, structure = _pruned(_chain(), small_blocks)
    read = _read_rows(sparse, "b")
    assert 0 < len(read) < 64  # 8 block-columns keep 6 of 64 rows each: most of a's outputs go unread
    lowered, _ = lower(sparse, small_blocks, "tflite", structure=structure,
                       choices={"b/kernel": ("gather-matmul", variant)})
    narrowed, records = narrow(lowered)
    assert records == [Narrowed("a", len(read), 64, "b")]
    assert narrowed.get_layer("a").units == len(read) and narrowed.get_layer("b").in_features == len(read)
    np.testing.assert_array_equal(narrowed.get_layer("a").kernel.numpy(), sparse.get_layer("a").kernel.numpy()[:, read])
    x = np.random.default_rng(0).normal(size=(3, 40)).astype("float32")
    np.testing.assert_allclose(narrowed.predict(x, verbose=0), sparse.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"activation": "softmax"}, {"second_reader": True}, {"output": True}])
def test_outputs_are_kept_where_something_else_depends_on_them(small_blocks, kwargs):
    # softmax mixes the outputs; another reader or the model's caller reads the rest
    sparse, structure = _pruned(_chain(**kwargs), small_blocks)
    lowered, _ = lower(sparse, small_blocks, "tflite", structure=structure, choices={"b/kernel": ("gather-matmul", "batch")})
    same, records = narrow(lowered)
    assert same is lowered and records == []


def test_nothing_is_narrowed_before_a_reader_that_runs_dense(small_blocks):
    sparse, structure = _pruned(_chain(), small_blocks)
    lowered, _ = lower(sparse, small_blocks, "tflite", structure=structure, choices={"b/kernel": ("dense", "")})
    assert narrow(lowered) == (lowered, [])


@pytest.mark.parametrize("variant", ["grouped", "split"])
def test_a_convolution_computes_only_the_channels_its_channel_gather_reader_reads(small_blocks, variant):
    keras.utils.set_random_seed(12)
    inputs = keras.Input((9, 9, 6))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, name="c2")(x)
    model = keras.Model(inputs, x, name="convs")
    plan = blockprune.plan(model, small_blocks, sparsity=0.75, overrides={"c1": "skip"})
    sparse = prune_once(model, plan)
    structure = read_structure(sparse, small_blocks, plan)
    read = _read_rows(sparse, "c2")
    assert 0 < len(read) < 16
    lowered, _ = lower(sparse, small_blocks, "onnx", structure=structure, choices={"c2/kernel": ("channel-gather", variant)})
    narrowed, records = narrow(lowered)
    assert records == [Narrowed("c1", len(read), 16, "c2")] and narrowed.get_layer("c1").filters == len(read)
    x = np.random.default_rng(1).normal(size=(2, 9, 9, 6)).astype("float32")
    np.testing.assert_allclose(narrowed.predict(x, verbose=0), sparse.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("output", ["tflite", "onnx"])
def test_exported_files_compute_the_narrowed_layer_and_say_so(small_blocks, tmp_path, output):
    sparse, structure = _pruned(_chain(), small_blocks)
    read = _read_rows(sparse, "b")
    record = export_file(sparse, small_blocks, tmp_path / f"m.{output}", output, structure=structure,
                         choices={"b/kernel": ("gather-matmul", "batch")}, check=False)  # verified against Keras
    a = next(lay for lay in record.layers if lay["name"] == "a/kernel")
    assert a["format"] == "dense" and f"computes {len(read)} of its 64 outputs: the ones 'b' reads" in a["why"]
    if output == "tflite":
        from blockprune.runtimes import RUNTIMES

        ops, tensors = RUNTIMES["litert"].ops((tmp_path / "m.tflite").read_bytes())
        first = next(op for op in ops if op["op_name"] == "FULLY_CONNECTED")
        assert tuple(tensors[first["inputs"][1]]["shape"]) == (len(read), 40)


def test_the_selection_probes_a_dense_producer_at_the_width_its_reader_reads(small_blocks, monkeypatch):
    import blockprune.timing as timing
    from blockprune.select import choose

    widths = {}

    def timed(runners, x, *args, **kwargs):  # every lowering "faster" than dense; records each dense probe's width
        for key, run in runners.items():
            if key[0] == "dense":
                widths.setdefault(len(widths), run.interp.get_output_details()[0]["shape"][-1])
        return {key: (10.0 if key[0] == "dense" else 5.0, 0.0, 0.0) for key in runners}

    monkeypatch.setattr(timing, "interleaved_latencies", timed)
    sparse, structure = _pruned(_chain(), small_blocks, a={"sparsity": 0.5})
    chosen = choose(sparse, small_blocks, "tflite", structure)
    read = _read_rows(sparse, "b")
    assert list(chosen) == ["a/kernel", "b/kernel"]  # in the model's order, though probed last layer first
    assert widths == {0: 64, 1: len(read)}  # b's dense probe is whole; a's computes what b reads
    assert f"computing the {len(read)} of 64 outputs its reader reads" in chosen["a/kernel"].reason

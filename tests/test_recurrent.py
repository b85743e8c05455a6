"""Recurrent layers (LSTM, GRU, SimpleRNN, Bidirectional): planned, pruned and exported."""

import json

import keras
import numpy as np
import pytest

import blockprune
from blockprune.bench import bench
from blockprune.export import export
from blockprune.pruning import UpdatePruningStep, prune, prune_once, strip_pruning, verify
from blockprune.runtimes import make_runner, sample_inputs

RECURRENT = ["rnn/lstm_cell/kernel", "rnn/lstm_cell/recurrent_kernel",
             "bi/forward_gru/gru_cell/kernel", "bi/forward_gru/gru_cell/recurrent_kernel",
             "bi/backward_gru/gru_cell/kernel", "bi/backward_gru/gru_cell/recurrent_kernel",
             "srnn/simple_rnn_cell/kernel", "srnn/simple_rnn_cell/recurrent_kernel"]


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 32))
    x = keras.layers.LSTM(64, return_sequences=True, name="rnn")(inputs)
    x = keras.layers.Bidirectional(keras.layers.GRU(64, return_sequences=True, name="gru"), name="bi")(x)
    x = keras.layers.SimpleRNN(32, name="srnn")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x), name="recurrent")


def test_recurrent_kernels_are_planned_where_the_target_lists_them():
    model = _model()
    plan = blockprune.plan(model, "dsp-1x8", sparsity=0.8)
    by_name = {f"{lp.layer}/{lp.weight}": lp for lp in plan.layers}
    assert [n for n, lp in by_name.items() if lp.kind == "recurrent"] == RECURRENT  # biases are not matmuls
    planned = [n for n in RECURRENT if by_name[n].block_shape == (1, 8)]
    assert planned == RECURRENT[:7]
    assert by_name["srnn/simple_rnn_cell/recurrent_kernel"].skip_code == "too_small"  # 32 x 32
    assert by_name["srnn/simple_rnn_cell/kernel"].positions == 6  # time steps, for the estimate
    cpu = blockprune.plan(model, "cpu-wide", sparsity=0.8)
    skipped = {f"{lp.layer}/{lp.weight}": lp.skip_reason for lp in cpu.layers if lp.kind == "recurrent"}
    assert all("recurrent layers are not eligible for target 'cpu-wide'" in r for r in skipped.values())


def test_a_recurrent_model_trains_with_block_masks_saves_and_strips(tmp_path):
    plan = blockprune.plan(_model(), "dsp-1x8", sparsity=0.8)
    pruned = prune(_model(), plan)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6, 32)).astype("float32"), rng.integers(0, 3, 64)
    pruned.fit(x, y, epochs=2, batch_size=16, callbacks=[UpdatePruningStep()], verbose=0)
    pruned.save(tmp_path / "pruned.keras")
    loaded = keras.models.load_model(tmp_path / "pruned.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)
    checks = verify(strip_pruning(loaded), plan)
    assert [c.name for c in checks.layers] == RECURRENT[:7]
    for c in checks.layers:
        assert c.exact and c.partial_blocks == 0 and c.block_sparsity >= 0.75, c


@pytest.mark.tensorflow
def test_a_recurrent_model_exports_verified_with_its_cells_dense_and_says_why(tmp_path):
    plan = blockprune.plan(_model(), "dsp-1x8", sparsity=0.8)
    sparse = prune_once(_model(), plan)
    export(sparse, "dsp-1x8", tmp_path / "out", plan=plan, formats=("tflite", "onnx"))
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    tflite, onnx = manifest["records"][0], manifest["records"][1]
    for record in (tflite, onnx):
        assert record["rel_error"] < 1e-4
        why = {lay["name"]: lay.get("why", "") for lay in record["layers"]}
        assert all(why[n].startswith("kept dense: no lowering rewrites this recurrent layer") for n in RECURRENT[:7])
    assert tflite["runtime_options"]["fixed_batch"] == 1 and "fixed_batch" not in onnx["runtime_options"]
    runner = make_runner(tmp_path / "out" / "recurrent.tflite")
    runner(*sample_inputs(sparse, 1))
    with pytest.raises(ValueError, match="this .tflite runs only at batch 1, got batch 2: .* export with --batch 2"):
        runner(*sample_inputs(sparse, 2))
    result = bench(tmp_path / "out", batches=(1, 2), threads=(1,), rounds=1, reps=2, warmup=1, progress=False)
    assert sorted((c.format, c.batch) for c in result.configs) == [("onnx", 1), ("onnx", 2), ("tflite", 1)]
    assert result.skipped == ["recurrent.tflite: runs only at batch 1 (a recurrent loop is converted for a fixed "
                              "batch); other batches not measured"]
    assert "matmuls only" in result.estimate["kind"]  # the loop body is not in the file's op list


@pytest.mark.tensorflow
def test_a_recurrent_model_exported_for_batch_4_runs_at_batch_4(tmp_path):
    model = _model()
    export(model, "cpu-wide", tmp_path / "out", formats=("tflite",), allow_dense=True, dense_baseline=False,
           batch=4, check=False)
    record = json.loads((tmp_path / "out" / "export.json").read_text())["records"][0]
    assert record["runtime_options"]["fixed_batch"] == 4
    x = sample_inputs(model, 4)
    np.testing.assert_allclose(make_runner(tmp_path / "out" / "recurrent.tflite")(*x), model(x[0]).numpy(), atol=1e-5)

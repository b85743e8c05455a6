"""`blockprune bench` and `blockprune run`: reports, keys, plots, and interrupted runs."""

import json

import keras
import pytest

from blockprune.bench import bench, write_reports
from blockprune.data import digits
from blockprune.export import export
from blockprune.masks import block_mask
from blockprune.run import run


def _sparse_mlp(sparsity, name="m"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((128,))
    x = keras.layers.Dense(256, activation="relu", name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(256, name="b")(x), name=name)
    for layer_name in ("a", "b"):
        layer = model.get_layer(layer_name)
        k = layer.kernel.numpy()
        layer.kernel.assign(k * block_mask(k, (1, 64), sparsity, balanced=True))
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    dirs = []
    for s in (0.5, 0.875):
        d = root / f"s{s}"
        export(_sparse_mlp(s), "cpu-wide", d, select="target", check=False)
        dirs.append(d)
    return dirs


def test_bench_measures_every_configuration(exports, tmp_path):
    result = bench(exports[1], batches=(1, 4), threads=(1,), rounds=2, reps=5, warmup=2, progress=False)
    assert {(c.runtime, c.batch, c.threads) for c in result.configs} == {
        (rt, b, 1) for rt in ("LiteRT", "ONNX Runtime", "OpenVINO") for b in (1, 4)}
    for c in result.configs:
        assert c.dense_p10_us <= c.dense_median_us <= c.dense_p90_us
        assert c.speedup == pytest.approx(c.dense_median_us / c.sparse_median_us)
        fastest = min(o.dense_median_us for o in result.configs if o.batch == c.batch)
        assert c.vs_fastest_dense == pytest.approx(fastest / c.sparse_median_us)
        assert c.vs_fastest_dense <= c.speedup + 1e-9
        assert c.exported_for == "b1 t1" and "gather-matmul x2" in c.lowering
    assert result.sparsity == pytest.approx(0.875) and result.ideal_speedup == pytest.approx(8.0)
    # each sparse file, and each dense baseline in every runtime it is compared in
    assert len(result.agreement) == 6 and all(a["rel_error"] < 1e-3 for a in result.agreement)
    assert {s["format"] for s in result.sizes} == {"tflite", "onnx", "openvino"}
    assert all(s["sparse_bytes"] < s["dense_bytes"] for s in result.sizes)
    assert result.native and result.estimate is None


def test_reports_json_md_and_plots(exports, tmp_path):
    results = [bench(d, batches=(1,), threads=(1,), rounds=1, reps=3, warmup=1, progress=False) for d in exports]
    written = write_reports(results, tmp_path / "out")
    data = json.loads(written["json"].read_text())
    config = data["configurations"][0]
    for key in ("runtime", "batch", "threads", "dense_median_us", "sparse_median_us", "speedup"):
        assert key in config
    assert {p.name for p in written["plots"]} == {"latency_0.png", "latency_1.png", "speedup_vs_sparsity.png"}
    for p in written["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = written["md"].read_text()
    assert "speedup" in md and "ideal" in md and "max abs error" in md


def test_emulated_targets_show_a_labelled_estimate(tmp_path):
    model = _sparse_mlp(0.75)
    for name in ("a", "b"):  # dsp-1x8 blocks
        layer = model.get_layer(name)
        k = layer.kernel.numpy()
        layer.kernel.assign(k * block_mask(k, (1, 8), 0.75, balanced=True))
    export(model, "dsp-1x8", tmp_path / "dsp", formats=("tflite",), select="target", check=False)
    result = bench(tmp_path / "dsp", batches=(1,), threads=(1,), rounds=1, reps=2, warmup=1, progress=False)
    e = result.estimate
    assert not result.native and e["speedup"] > 1
    assert "ESTIMATE" in e["kind"] and "whole model" in e["kind"]
    # the whole model moves activations too, which sparsity does not shrink
    assert e["dense_us"] > e["matmul_dense_us"] and e["speedup"] < e["matmul_speedup"]
    from blockprune.bench import table

    assert "ESTIMATE" in table(result)


def test_bench_refuses_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(ValueError, match="no export.json"):
        bench(tmp_path)


def _small_run(out, **kwargs):
    d = digits()
    small = type(d)(d.x_train[:256], d.y_train[:256], d.x_test[:128], d.y_test[:128], name="digits-small")
    return run(out, data=small, epochs=2, dense_epochs=2, bench_rounds=1, bench_reps=3, verbose=False, **kwargs)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One run for the report tests: two deployment points, float32 and two quantized exports."""
    root = tmp_path_factory.mktemp("run")
    return _small_run(root / "report", points=[(1, 1), (8, 2)], quantize="dynamic,int8", quantize_aware=True)


def test_run_writes_a_complete_report(full_run):
    out = full_run.out
    for name in ("report.md", "plan.json", "dense.keras", "sparse.keras", "weights.safetensors", "summary.json",
                 "data.npz", "export/b1-t1/export.json", "export/b8-t2/export.json", "bench/bench.json",
                 "bench/latency.png"):
        assert (out / name).is_file(), name
    text = full_run.report.read_text()
    assert "## Accuracy" in text and "block-sparse" in text and "## Plan" in text and "hidden_2/kernel" in text
    assert full_run.dense_accuracy is not None and full_run.sparse_accuracy is not None
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_run_refuses_bad_settings_before_it_trains(tmp_path, monkeypatch):
    import blockprune.examples

    def trains(*args, **kwargs):
        raise AssertionError("the dense model was trained before the settings were checked")

    monkeypatch.setattr(blockprune.examples, "train_dense", trains)
    with pytest.raises(ValueError, match=r"sparsity=1\.5 is outside \[0, 1\) for target 'cpu-wide'"):
        run(tmp_path / "report", sparsity=1.5, verbose=False)
    with pytest.raises(ValueError, match="dense_epochs=0 must be a positive integer"):
        run(tmp_path / "report", dense_epochs=0, verbose=False)
    assert not list(tmp_path.iterdir())


def test_interrupted_run_leaves_the_previous_report_and_no_partial_files(tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("previous report")
    import blockprune.bench

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(blockprune.bench, "bench", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _small_run(out)
    assert (out / "report.md").read_text() == "previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_run_with_a_model_of_attention_and_3x3_convolutions(tmp_path, write_toml):
    from conftest import REPO

    # cpu-wide, with blocks and a minimum size that fit a model small enough for a test
    toml = (REPO / "targets" / "cpu-wide.toml").read_text().replace('name = "cpu-wide"', 'name = "small"')
    toml = toml.replace("min_weights = 16384", "min_weights = 256").replace("[1, 128], [1, 64], [1, 32], ", "")
    target = write_toml(toml, "small.toml")
    keras.utils.set_random_seed(1)
    inputs = keras.Input((64,))
    image = keras.layers.Reshape((8, 8, 1))(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(image)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv")(x)
    tokens = keras.layers.Reshape((64, 32))(x)
    attn = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16, name="attention")(tokens, tokens)
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Add()([tokens, attn]))
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="convattn")
    model.save(tmp_path / "m.keras")
    result = _small_run(tmp_path / "report", model=str(tmp_path / "m.keras"), target=str(target), points=[(1, 1)])
    plan = json.loads((result.out / "plan.json").read_text())
    pruned = {f"{lay['layer']}/{lay['weight']}" for lay in plan["layers"] if lay["skip_code"] is None}
    assert {"conv/kernel", "attention/query/kernel", "attention/attention_output/kernel"} <= pruned
    manifest = json.loads((result.out / "export" / "b1-t1" / "export.json").read_text())
    names = {lay["name"] for r in manifest["records"] for lay in r["layers"]}
    assert {"conv/kernel", "attention/query/kernel", "attention/attention_output/kernel"} <= names
    for r in (r for r in manifest["records"] if r["variant"] == "sparse"):
        for lay in r["layers"]:  # every pruned weight runs lowered or dense, and says why
            assert lay["format"] == "dense" or lay["format"].startswith(("gather-matmul", "channel-gather"))
            assert not lay["block_shape"] or lay["why"]
    assert set(result.speedups) == {"LiteRT b1 t1", "ONNX Runtime b1 t1", "OpenVINO b1 t1"}


def test_run_with_quantized_exports_reports_their_accuracy_and_every_dense_baseline(full_run):
    out = full_run.out
    for point in ("b1-t1", "b8-t2"):
        for mode in ("dynamic", "int8"):
            manifest = json.loads((out / "export" / f"{point}-{mode}" / "export.json").read_text())
            assert manifest["quantize"] == mode
    measured = json.loads((out / "bench" / "bench.json").read_text())["results"][0]["configs"]
    for point in ((1, 1), (8, 2)):
        here = [c for c in measured if (c["batch"], c["threads"]) == point]
        assert {c["precision"] for c in here} == {"float32", "dynamic", "int8"}
        fastest = min(c["dense_median_us"] for c in here)
        for c in here:  # each file against the fastest dense file of any runtime and precision at its point
            assert c["vs_fastest_dense"] == pytest.approx(fastest / c["sparse_median_us"])
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["file_accuracy"]
    assert {(r["runtime"], r["weights"]) for r in rows} >= {("litert", "int8"), ("onnxruntime", "dynamic")}
    for r in rows:  # a quantized MLP keeps its accuracy on digits within a few points
        assert abs(r["accuracy"] - full_run.sparse_accuracy) < 0.05, r
    text = full_run.report.read_text()
    assert "b1-t1-int8/" in text and "| int8 |" in text and "any runtime and precision" in text


def test_run_auto_quantize_reports_a_mode_that_fails_and_a_named_mode_stops_the_run(tmp_path, monkeypatch):
    import blockprune.export as export_module

    real_export = export_module.export

    def int8_fails(*args, quantize=None, **kwargs):  # e.g. a model whose int8 file misses its tolerance
        if getattr(quantize, "mode", None) == "int8":
            raise export_module.ExportError("int8 file disagrees with Keras (injected)")
        return real_export(*args, quantize=quantize, **kwargs)

    monkeypatch.setattr(export_module, "export", int8_fails)
    result = _small_run(tmp_path / "report", points=[(1, 1)], quantize="auto")
    summary = json.loads((result.out / "summary.json").read_text())
    assert summary["not_exported"] == {"int8": "int8 file disagrees with Keras (injected)"}
    assert (result.out / "export" / "b1-t1-dynamic" / "export.json").is_file()
    assert not (result.out / "export" / "b1-t1-int8").exists()
    assert {k.split()[-3] for k in result.speedups} == {"float32", "dynamic"}
    assert "- int8: int8 file disagrees with Keras (injected)" in result.report.read_text()
    with pytest.raises(export_module.ExportError, match="injected"):
        _small_run(tmp_path / "named", points=[(1, 1)], quantize="int8")
    assert not (tmp_path / "named").exists()


def test_run_names_the_configurations_that_kept_the_dense_file(tmp_path, monkeypatch):
    import blockprune.export as export_module

    monkeypatch.setattr(export_module, "CHECK_MARGIN", 50.0)  # no lowering is 50x faster: every file kept dense
    result = _small_run(tmp_path / "report", points=[(1, 1)])
    assert set(result.kept_dense) == set(result.speedups) == {"LiteRT b1 t1", "ONNX Runtime b1 t1", "OpenVINO b1 t1"}
    configs = json.loads((result.out / "bench" / "bench.json").read_text())["results"][0]["configs"]
    assert all(c["same_bytes"] for c in configs)
    text = result.report.read_text()
    assert "3 configurations kept the dense file" in text and "Best speedup" not in text
    assert json.loads((result.out / "summary.json").read_text())["kept_dense"] == result.kept_dense


def test_timing_gives_a_microsecond_file_enough_calls_for_a_steady_median():
    import time

    from blockprune.timing import interleaved_latencies

    calls = {"fast": 0, "slow": 0}

    def fast(x):
        calls["fast"] += 1

    def slow(x):
        calls["slow"] += 1
        time.sleep(0.005)

    stats = interleaved_latencies({"fast": fast, "slow": slow}, 0, rounds=2, reps=5, warmup=2, min_round_s=0.02)
    assert calls["slow"] == 2 + 2 * 5  # warm-up, then reps per round: 5 ms calls fill 20 ms in 4 calls
    assert calls["fast"] > 100 * 2  # a no-op gets thousands of calls per 20 ms round, not 5
    assert stats["slow"][0] >= 5000 > stats["fast"][0]
    calls.update(fast=0)
    interleaved_latencies({"fast": fast}, 0, rounds=2, reps=3, warmup=2)  # without a least round time: as asked
    assert calls["fast"] == 2 + 2 * 3


def test_timing_in_a_new_process_runs_the_files_there(exports):
    import json
    import os

    import numpy as np

    from blockprune.timing import latencies_in_fresh_process

    folder = exports[1]
    files = {kind: ((folder / name).read_bytes(), json.loads((folder / f"{name}.runtime.json").read_text()))
             for kind, name in (("dense", "m.dense.tflite"), ("sparse", "m.tflite"))}
    inputs = [np.ones((2, 128), np.float32)]
    timed = latencies_in_fresh_process(files, "litert", 1, inputs, rounds=2, reps=5)
    assert set(timed) == {"dense", "sparse"}
    assert all(0 < p10 <= median <= p90 for median, p10, p90 in timed.values())
    # the files really ran there: a file the runtime cannot read fails that process, and says so
    with pytest.raises(RuntimeError, match="timing litert files in a new process failed"):
        latencies_in_fresh_process({"bad": (os.urandom(64), files["dense"][1])}, "litert", 1, inputs, 1, 1)


def test_bench_can_time_each_pair_in_a_new_process(exports, monkeypatch):
    from blockprune import timing

    calls = []
    real = timing.latencies_in_fresh_process

    def recorded(files, runtime_name, threads, inputs, rounds, reps, warmup):
        calls.append((sorted(files), runtime_name, threads, inputs[0].shape, warmup))
        return real(files, runtime_name, threads, inputs, rounds, reps, warmup)

    monkeypatch.setattr(timing, "latencies_in_fresh_process", recorded)
    result = bench(exports[1], batches=(2,), threads=(1,), rounds=1, reps=3, warmup=1, progress=False,
                   fresh_process=True)
    assert sorted(c[1] for c in calls) == ["litert", "onnxruntime", "openvino"]
    assert all(c[0] == ["dense", "sparse"] and c[2] == 1 and c[3] == (2, 128) and c[4] == 1 for c in calls)
    assert len(result.configs) == 3 and all(c.dense_median_us > 0 and c.sparse_median_us > 0 for c in result.configs)

"""Tuning profiles, the planner's choice of the fastest measured block, and latency budgets."""

import json

import keras
import pytest

import blockprune
from conftest import REPO
from blockprune.profile import Measurement, Profile, ProfileError


def _mlp(width=512):
    inputs = keras.Input((width,))
    x = keras.layers.Dense(width, name="h1")(inputs)
    x = keras.layers.Dense(width, name="h2")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="out")(x), name="m")


def _profile(times):
    """A synthetic cpu-wide profile for 512x512 layers at batch 1: {block: {sparsity: us}}."""
    ms = [Measurement("tflite", (512, 512), 1, 1, None, 0.0, 100.0)]
    for block, by_s in times.items():
        ms += [Measurement("tflite", (512, 512), 1, 1, block, s, t) for s, t in by_s.items()]
    return Profile("cpu-wide", {"cpu": "test"}, {}, ms)


def test_profile_round_trip_and_interpolation(tmp_path):
    p = _profile({(1, 64): {0.5: 60.0, 0.9: 20.0}})
    path = p.save(tmp_path / "p.json")
    again = Profile.load(path)
    assert again.measurements == p.measurements and again.target == "cpu-wide"
    assert again.latency("tflite", (512, 512), 1, 1, (1, 64), 0.9) == 20.0
    assert again.latency("tflite", (512, 512), 1, 1, (1, 64), 0.7) == pytest.approx(40.0)  # linear between 0.5 and 0.9
    assert again.latency("tflite", (512, 512), 1, 1, (1, 64), 0.25) == pytest.approx(80.0)  # between dense and 0.5
    assert again.latency("tflite", (512, 512), 1, 1, (1, 64), 0.95) is None  # no extrapolation
    assert again.latency("onnx", (512, 512), 1, 1, (1, 64), 0.9) is None
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ProfileError, match="not a blockprune profile"):
        Profile.load(tmp_path / "bad.json")


def test_planner_picks_the_fastest_measured_block():
    # (1, 32) measured fastest although cpu-wide lists (1, 128) and (1, 64) first (and (1, 128) is not measured).
    p = blockprune.plan(_mlp(), "cpu-wide", sparsity=0.9, profile=_profile({
        (1, 64): {0.9: 30.0}, (1, 32): {0.9: 18.0}, (1, 16): {0.9: 25.0}}))
    h2 = p.get("h2")
    assert h2.block_shape == (1, 32) and h2.source == "profile"
    assert (h2.measured_dense_us, h2.measured_sparse_us) == (100.0, 18.0)
    assert "100->18" in p.summary() and "fastest measured" in p.summary()
    assert p.get("out").skip_code == "too_small"
    again = blockprune.SparsityPlan.from_json(p.to_json())
    assert again.get("h2").measured_sparse_us == 18.0
    without = blockprune.plan(_mlp(), "cpu-wide", sparsity=0.9)
    assert without.get("h2").block_shape == (1, 128)


def test_a_profile_for_another_target_is_refused():
    with pytest.raises(ValueError, match="measured for target 'cpu-wide', not 'dsp-1x8'"):
        blockprune.plan(_mlp(), "dsp-1x8", profile=_profile({}))


def test_budget_is_met_while_pruning_as_little_as_possible():
    times = {(1, 64): {0.5: 60.0, 0.8: 30.0, 0.9: 20.0, 0.95: 14.0}}
    profile = _profile(times)
    # Dense: 2 x 100 us (h1, h2) + the head (<1 us). Budget 161 us: one layer at 0.5 is enough (60 + 100 + head).
    p = blockprune.plan(_mlp(), "cpu-wide", sparsity=0.95, profile=profile, latency_budget_us=161)
    dense, sparse, kind = p.predicted_us
    # The small head has no measurement: its estimate (under 1 us) makes the prediction "mixed".
    assert kind == "mixed" and sparse <= 161 and dense == pytest.approx(200, abs=1)
    # 40 us must go; between dense and 50% the measured cost falls 8 us per 10% pruned, on either
    # layer: the allocation prunes 50% of one layer's weights in all, no more.
    assert sum(lp.sparsity for lp in p.layers if lp.view_shape == (512, 512)) == pytest.approx(0.5)
    tight = blockprune.plan(_mlp(), "cpu-wide", sparsity=0.95, profile=profile, latency_budget_us=180)
    assert [lp.skip_code for lp in tight.layers].count("budget_dense") <= 1
    # 20.8 us to cut (head included) at 8 us per 10%: 26%, rounded up to the 1% step.
    assert sum(lp.sparsity for lp in tight.layers if lp.view_shape == (512, 512)) == pytest.approx(0.27)
    # A 4x speedup: 50 us for both -> e.g. 30 + 20 or 20 + 30.
    q = blockprune.plan(_mlp(), "cpu-wide", sparsity=0.95, profile=profile, speedup=4)
    assert q.predicted_us[1] <= q.budget_us and q.budget_us == pytest.approx(50, abs=0.5)
    assert all(lp.source == "budget" for lp in q.pruned_layers)
    # Out of reach: a 20x speedup cannot be met at 95%.
    r = blockprune.plan(_mlp(), "cpu-wide", sparsity=0.95, profile=profile, speedup=20)
    assert any("out of reach" in n for n in r.notes)
    assert all(lp.sparsity == 0.95 for lp in r.pruned_layers)


def test_budget_from_the_cost_model_without_a_profile():
    p = blockprune.plan(_mlp(1024), "cpu-wide", sparsity=0.95, speedup=3)
    dense, sparse, kind = p.predicted_us
    assert kind == "estimate" and dense / sparse >= 3
    assert "budget" in p.summary()


def test_overall_sparsity_goes_where_it_buys_the_most_time():
    inputs = keras.Input((512,))
    x = keras.layers.Dense(512, name="h1")(inputs)
    x = keras.layers.Dense(1024, name="h2")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="out")(x), name="two")
    ms = [Measurement("tflite", (512, 512), 1, 1, None, 0.0, 100.0),
          Measurement("tflite", (512, 1024), 1, 1, None, 0.0, 200.0)]
    for s in (0.5, 0.9, 0.95):  # h1 gets much faster with sparsity, h2 hardly
        ms += [Measurement("tflite", (512, 512), 1, 1, (1, 64), s, 100.0 * (1 - s)),
               Measurement("tflite", (512, 1024), 1, 1, (1, 64), s, 200.0 - 10 * s)]
    profile = Profile("cpu-wide", {}, {}, ms)
    p = blockprune.plan(model, "cpu-wide", sparsity=0.95, overall_sparsity=0.6, profile=profile)
    h1, h2 = p.get("h1"), p.get("h2")
    assert h1.sparsity == 0.95 and h1.source == "allocated"
    # The rest of the 60% comes from h2: (0.6 * 786432 - 0.95 * 262144) / 524288 zero, to 4 decimals.
    assert h2.sparsity == pytest.approx((0.6 * 786432 - 0.95 * 262144) / 524288, abs=1e-4)
    assert p.eligible_sparsity == pytest.approx(0.6, abs=1e-4) and p.overall_target == 0.6
    uniform = blockprune.plan(model, "cpu-wide", sparsity=0.6, profile=profile)
    assert uniform.eligible_sparsity == pytest.approx(0.6)
    assert p.predicted_us[1] < uniform.predicted_us[1] - 30
    assert "allocated for 60% overall" in p.summary()
    assert blockprune.SparsityPlan.from_json(p.to_json()).overall_target == 0.6


def test_overall_sparsity_spares_weights_the_lowering_runs_dense(write_toml):
    from blockprune.examples import example_model

    # builtin-sparse makes Dense layers' FULLY_CONNECTED sparse; EinsumDense weights run dense under it
    toml = (REPO / "targets" / "simd-4x1.toml").read_text().replace('name = "simd-4x1"', 'name = "simd-einsum"')
    toml = toml.replace('layer_kinds = ["dense", "custom"]', 'layer_kinds = ["dense", "einsum_dense", "custom"]')
    target = write_toml(toml, "simd-einsum.toml")
    p = blockprune.plan(example_model("transformer"), str(target), sparsity=0.95, overall_sparsity=0.9)
    ff = [lp for lp in p.layers if lp.kind == "dense"]
    attention = [lp for lp in p.layers if lp.kind == "einsum_dense"]
    assert ff and attention and all(lp.sparsity == 0.95 for lp in ff)
    assert all(lp.sparsity < 0.9 for lp in attention)
    assert all(lp.est_sparse_us == lp.est_dense_us for lp in attention)
    assert p.eligible_sparsity == pytest.approx(0.9, abs=1e-4)
    assert any("einsum_dense weights are pruned but run dense on tflite" in n for n in p.notes)


def test_budget_on_the_whole_model_uses_its_measured_ratio():
    from blockprune.modelwalk import find_weights
    from blockprune.profile import ModelMeasurement, model_key

    model = _mlp()
    times = {(1, 64): {0.5: 60.0, 0.8: 30.0, 0.9: 20.0, 0.95: 14.0}}
    profile = _profile(times)
    key = model_key(model.name, find_weights(model))
    dense_bytes = (2 * 512 * 512 + 5120) * 4
    # The whole model ran 1.5x its layers' sum dense, and as fast as its layers with a quarter of the bytes.
    profile.add_model(ModelMeasurement(key, "tflite", 1, 1, 0.0, 200.0, dense_bytes, 300.0))
    profile.add_model(ModelMeasurement(key, "tflite", 1, 1, 0.75, 50.0, dense_bytes / 4, 50.0))
    assert profile.model_latency(key, "tflite", 1, 1, 100.0, dense_bytes * 5 / 8) == pytest.approx(125.0)
    p = blockprune.plan(model, "cpu-wide", sparsity=0.95, profile=profile, speedup=3)
    dense, sparse = p.model_us
    assert dense == pytest.approx(1.5 * p.predicted_us[0]) and p.budget_us == pytest.approx(dense / 3)
    assert sparse <= p.budget_us and sparse > 0.9 * p.budget_us  # met, without pruning far past it
    assert "from whole-model measurements" in p.summary()
    # Without the whole-model points the budget is on the matmuls alone: it misses that the dense
    # model is slower than its layers, and prunes more than a 3x model speedup needs.
    q = blockprune.plan(model, "cpu-wide", sparsity=0.95, profile=_profile(times), speedup=3)
    assert q.model_us is None and q.eligible_sparsity > p.eligible_sparsity + 0.1
    again = Profile.from_json(profile.to_json())
    assert again.models == profile.models
    assert blockprune.SparsityPlan.from_json(p.to_json()).model_us == p.model_us


@pytest.mark.parametrize("kwargs, message", [
    ({"speedup": 0.5}, "speedup=0.5 must be a number >= 1"),
    ({"latency_budget_us": -1}, "must be positive"),
    ({"speedup": 2, "latency_budget_us": 10}, "not several"),
    ({"speedup": 2, "overall_sparsity": 0.5}, "not several"),
    ({"sparsity": 0.9, "overall_sparsity": 0.95}, "overall_sparsity=0.95 is above the per-weight ceiling sparsity=0.9"),
    ({"overall_sparsity": 1.2}, r"overall_sparsity=1.2 is outside \[0, 1\) for target 'cpu-wide'"),
])
def test_bad_budgets(kwargs, message):
    with pytest.raises(ValueError, match=message):
        blockprune.plan(_mlp(), "cpu-wide", **kwargs)


def test_tune_measures_and_reuses_its_profile(tmp_path):
    from blockprune.tune import tune

    inputs = keras.Input((256,))
    model = keras.Model(inputs, keras.layers.Dense(256, name="d")(inputs), name="one")
    first = tune(model, "cpu-wide", sparsities=(0.9,), rounds=1, reps=3, progress=False)
    runtimes = ("onnx", "openvino", "tflite")  # OpenVINO reads the .onnx; it is a dependency
    keys = {(m.runtime, m.block_shape) for m in first.measurements}
    assert keys == {(rt, b) for rt in runtimes for b in (None, (1, 128), (1, 64), (1, 32), (1, 16))}
    # every form of gather-matmul, per block and runtime
    forms = {"gather-matmul", "gather-matmul (feature-major)"}
    for rt in runtimes:  # row-gather in .tflite files only
        assert {m.lowering for m in first.measurements if m.block_shape and m.runtime == rt} == (
            forms | {"gather-matmul (row-gather)"} if rt == "tflite" else forms), rt
    assert all(m.median_us > 0 and m.rows == 1 and m.view_shape == (256, 256) for m in first.measurements)
    # The whole model too: dense and at 90%, on each runtime, beside the sum of its layers.
    assert sorted((m.runtime, m.sparsity) for m in first.models) == [(rt, s) for rt in runtimes for s in (0.0, 0.9)]
    assert all(m.median_us > 0 and m.matmul_us > 0 for m in first.models)
    path = first.save(tmp_path / "profile.json")
    again = tune(model, "cpu-wide", sparsities=(0.9,), profile=Profile.load(path), time_budget_s=0, progress=False)
    assert len(again.measurements) == len(first.measurements)  # nothing re-measured, nothing lost
    assert again.models == first.models
    p = blockprune.plan(model, "cpu-wide", profile=again)
    fastest = min(((m.median_us, m.block_shape) for m in again.measurements
                   if m.runtime == "tflite" and m.block_shape), key=lambda t: t[0])[1]
    assert p.get("d").block_shape == fastest
    small_in = keras.Input((8,))
    small = keras.Model(small_in, keras.layers.Dense(8)(small_in), name="small")
    with pytest.raises(ValueError, match="has no layer that target 'cpu-wide' can lower"):
        tune(small, "cpu-wide", progress=False)


def test_calibration_recovers_the_parameters_that_made_the_measurements():
    import dataclasses

    from blockprune.cost import calibrate, estimate, prediction_error

    target = blockprune.load_target("cpu-wide")
    truth = dataclasses.replace(target, cost_model=dataclasses.replace(target.cost_model, peak_gflops=100.0,
                                                                        memory_gbps=10.0))
    ms = []
    for view, rows in (((1024, 1024), 1), ((1024, 1024), 64), ((512, 2048), 8)):
        ms.append(Measurement("tflite", view, rows, 1, None, 0.0, estimate(view, (1, 1), 0.0, truth, rows).dense_us))
        for s in (0.5, 0.9):
            ms.append(Measurement("tflite", view, rows, 1, (1, 64), s, estimate(view, (1, 64), s, truth, rows).sparse_us))
    assert prediction_error(ms, target)["median"] > 0.3
    fitted = calibrate(ms, target)
    assert prediction_error(ms, fitted)["median"] < 0.1
    assert fitted.cost_model.vector_lanes == target.cost_model.vector_lanes


def test_cli_plan_with_profile_and_speedup(tmp_path, capsys):
    from blockprune.cli import main

    _mlp().save(tmp_path / "m.keras")
    _profile({(1, 64): {0.5: 60.0, 0.9: 20.0}, (1, 32): {0.5: 55.0, 0.9: 18.0}}).save(tmp_path / "p.json")
    assert main(["plan", str(tmp_path / "m.keras"), "-t", "cpu-wide", "--profile", str(tmp_path / "p.json"),
                 "--speedup", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["budget_us"] == pytest.approx(100, abs=1)
    assert data["predicted_us"]["sparse"] <= data["budget_us"]
    assert {e["block_shape"][1] for e in data["layers"] if e["block_shape"]} == {32}
    assert main(["plan", str(tmp_path / "m.keras"), "-t", "cpu-wide", "--profile", str(tmp_path / "p.json"),
                 "--sparsity", "0.9", "--overall-sparsity", "0.7", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overall_target"] == 0.7 and data["eligible_sparsity"] == pytest.approx(0.7, abs=1e-4)
    with pytest.raises(SystemExit) as info:
        main(["plan", str(tmp_path / "m.keras"), "--speedup", "2", "--budget-us", "5"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert main(["tune", str(tmp_path / "m.keras"), "--sparsities", "0.9,1.5", "-o", str(tmp_path / "x.json")]) == 2
    assert "1.5 is outside (0, 1)" in capsys.readouterr().err

"""The planning pass on every prunable layer kind, skip reasons, overrides, JSON round trip."""

import json

import keras
import numpy as np
import pytest

from blockprune import Override, PrunableLayer, SparsityPlan, load_target, plan
from blockprune.plan import SKIP_CODES


def _mlp(widths=(256, 512, 512, 10), name="mlp"):
    inputs = keras.Input((widths[0],))
    x = inputs
    for i, w in enumerate(widths[1:]):
        x = keras.layers.Dense(w, name=f"d{i}")(x)
    return keras.Model(inputs, x, name=name)


@keras.saving.register_keras_serializable("blockprune_tests")
class LowRankish(keras.layers.Layer, PrunableLayer):
    """A custom layer with one prunable rank-3 weight and one that is not prunable."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 2, self.units), name="w")
        self.gate = self.add_weight(shape=(input_shape[-1], self.units), name="gate")

    def call(self, x):
        return keras.ops.einsum("bi,iku->bu", x, self.w) * keras.ops.sigmoid(x @ self.gate)

    def get_prunable_weights(self):
        return [self.w]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_dense_first_dividing_block_and_too_small():
    p = plan(_mlp(), "cpu-wide", sparsity=0.8)
    d0, d1, d2 = p.layers
    assert (d0.layer, d0.weight, d0.view_shape, d0.block_shape, d0.sparsity) == ("d0", "kernel", (256, 512), (1, 128), 0.8)
    assert d1.block_shape == (1, 128)
    assert d2.skip_code == "too_small" and "5120 weights < min_weights=16384" in d2.skip_reason
    assert d2.block_shape is None and d2.sparsity == 0.0


def test_falls_back_to_a_narrower_block_that_divides_or_fits(write_toml, valid_toml):
    m = _mlp((256, 96, 40))  # 96 is divisible by 32 but not 64; 40 by neither 64, 32 nor 16
    p = plan(m, "cpu-wide", overrides={"d1": "block=1x8"})
    assert p.get("d0").block_shape == (1, 32)
    assert p.get("d1").block_shape == (1, 8) and p.get("d1").source == "override"
    # 40 outputs: no block divides; (1, 32) fits with a narrower last block-column of 8 (padded)
    q = plan(_mlp((512, 40, 16)), "cpu-wide")
    assert q.get("d0").block_shape == (1, 32) and q.get("d0").pruned
    # 12 outputs: narrower than every block
    r = plan(_mlp((2048, 12, 16)), "cpu-wide")
    assert r.get("d0").skip_code == "no_block_divides"
    assert "(1, 64), (1, 32), (1, 16)" in r.get("d0").skip_reason and "(2048, 12)" in r.get("d0").skip_reason


def test_min_macs_lets_a_small_convolution_over_a_large_map_in_and_a_small_dense_layer_stays_out():
    inputs = keras.Input((64, 64, 32))
    x = keras.layers.Conv2D(96, 1, name="expand")(inputs)  # 3072 weights x 4096 positions
    y = keras.layers.Dense(96, name="dense")(keras.layers.GlobalAveragePooling2D()(x))  # 9216 weights x 1
    p = plan(keras.Model(inputs, y), "cpu-wide", sparsity=0.75)
    assert p.target.min_macs == 2_000_000 and p.target.min_weights > 9216
    assert p.get("expand").pruned and p.get("expand").block_shape == (1, 32)
    d = p.get("dense")
    assert d.skip_code == "too_small"
    assert "9216 weights < min_weights=16384 and 9216 multiply-adds per sample < min_macs=2000000" in d.skip_reason
    # without min_macs (dsp-1x8 sets none) the convolution is judged by its weights alone
    q = plan(keras.Model(inputs, y), "simd-4x1", sparsity=0.75)
    assert q.get("expand").skip_code in ("too_small", "kind_not_eligible")
    assert load_target("dsp-1x8").min_macs == 0


def test_a_sparsity_that_keeps_no_block_of_a_column_is_skipped_or_refused():
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(64, 3, padding="same", name="stem")(inputs)  # 3 input channels: 3 channel blocks
    m = keras.Model(inputs, keras.layers.Conv2D(64, 3, name="body")(x))
    p = plan(m, "cpu-wide", sparsity=0.9)
    stem = p.get("stem")
    assert stem.skip_code == "too_few_blocks" and "keeps none of the 3 blocks" in stem.skip_reason
    assert p.get("body").pruned
    assert plan(m, "cpu-wide", sparsity=0.5).get("stem").pruned  # 3 - round(1.5) = 1 block kept
    with pytest.raises(ValueError, match=r"Layer 'stem'.*sparsity=0.9 keeps none.*cpu-wide.*lower the sparsity"):
        plan(m, "cpu-wide", sparsity=0.5, overrides={"stem": {"sparsity": 0.9}})


def test_conv2d_view_is_kh_kw_cin_by_cout():
    inputs = keras.Input((16, 16, 32))
    x = keras.layers.Conv2D(64, 3, name="k3")(inputs)
    x = keras.layers.Conv2D(256, 1, name="pw")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.Conv1D(8, 1, name="c1d")(keras.layers.Reshape((-1, 256))(x))
    m = keras.Model(inputs, x)
    p = plan(m, "tensor-core-2x2", sparsity=0.5)
    k3, pw, dw, c1d = (p.get(n) for n in ("k3", "pw", "dw", "c1d"))
    assert (k3.kind, k3.kernel_shape, k3.view_shape, k3.block_shape) == ("conv", (3, 3, 32, 64), (288, 64), (2, 2))
    assert (pw.kind, pw.view_shape) == ("conv1x1", (64, 256)) and pw.pruned
    assert pw.positions == 14 * 14
    assert dw.skip_code == "not_prunable" and "depthwise" in dw.skip_reason
    assert c1d.skip_code == "too_small"
    # dsp-1x8 speeds up 1x1 convolutions only.
    q = plan(m, "dsp-1x8")
    assert q.get("k3").skip_code == "kind_not_eligible" and "conv layers" in q.get("k3").skip_reason
    assert q.get("pw").block_shape == (1, 8)


def test_multi_head_attention_projections_are_planned_through_einsum_dense():
    tokens = keras.Input((10, 64))
    y = keras.layers.MultiHeadAttention(num_heads=4, key_dim=32, name="mha")(tokens, tokens)
    y = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 256), name="proj")(y)
    m = keras.Model(tokens, y)
    p = plan(m, "dsp-1x8", sparsity=0.75)
    names = [lp.name for lp in p.layers]
    assert names == ["mha/query/kernel", "mha/key/kernel", "mha/value/kernel", "mha/attention_output/kernel",
                     "proj/kernel"]
    q = p.get("mha", "query/kernel")
    assert (q.kind, q.kernel_shape, q.view_shape, q.block_shape) == ("einsum_dense", (64, 4, 32), (64, 128), (1, 8))
    out = p.get("mha", "attention_output/kernel")
    assert out.view_shape == (128, 64) and out.positions == 10
    assert all(lp.pruned for lp in p.layers)
    # simd-4x1 only speeds up Dense (TFLite FULLY_CONNECTED).
    s = plan(m, "simd-4x1")
    assert all(lp.skip_code == "kind_not_eligible" for lp in s.layers)
    assert any("nothing is pruned" in n for n in s.notes)


def test_nested_model_layers_are_named_by_path():
    inner = keras.Sequential([keras.Input((128,)), keras.layers.Dense(256, name="a"),
                              keras.layers.Dense(256, name="b")], name="encoder")
    inputs = keras.Input((128,))
    y = keras.layers.Dense(64, name="head")(inner(inputs))
    m = keras.Model(inputs, y)
    p = plan(m, "simd-4x1")
    assert [lp.layer for lp in p.layers] == ["encoder/a", "encoder/b", "head"]
    assert p.get("encoder/b").block_shape == (4, 1)
    assert p.get("head").pruned  # 256 x 64 = 16384 >= min_weights


def test_custom_prunable_layer_only_its_prunable_weights():
    inputs = keras.Input((64,))
    y = LowRankish(128, name="lr")(inputs)
    m = keras.Model(inputs, y)
    p = plan(m, "cpu-wide", sparsity=0.5)
    assert [lp.name for lp in p.layers] == ["lr/w", "lr/gate"]
    lp, gate = p.layers
    assert gate.skip_code == "not_prunable" and "get_prunable_weights() does not list it" in gate.skip_reason
    assert (lp.kind, lp.kernel_shape, lp.view_shape, lp.block_shape) == ("custom", (64, 2, 128), (128, 128), (1, 128))


def test_unknown_matrix_weights_are_reported_not_dropped():
    class Mix(keras.layers.Layer):
        def build(self, shape):
            self.table = self.add_weight(shape=(shape[-1], 32), name="table")

        def call(self, x):
            return keras.ops.matmul(x, self.table)

    inputs = keras.Input((5,), dtype="int32")
    y = keras.layers.Embedding(1000, 64, name="emb")(inputs)
    y = Mix(name="mix")(y)
    y = keras.layers.LSTM(32, name="lstm")(y)
    m = keras.Model(inputs, y)
    p = plan(m, "cpu-wide")
    by_name = {lp.name: lp for lp in p.layers}
    assert by_name["emb/embeddings"].skip_code == "not_prunable"
    assert "table lookup" in by_name["emb/embeddings"].skip_reason
    assert by_name["mix/table"].skip_code == "not_prunable" and "PrunableLayer" in by_name["mix/table"].skip_reason
    lstm = [lp for lp in p.layers if lp.layer == "lstm"]  # recurrent: a kind cpu-wide does not list
    assert len(lstm) == 2 and all(lp.skip_code == "kind_not_eligible" for lp in lstm)


def test_subclassed_model_is_planned_through_tracked_layers_with_a_note():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.a = keras.layers.Dense(256, name="a")

        def call(self, x):
            return self.a(x)

    m = Net()
    m(np.zeros((1, 128), "float32"))
    p = plan(m, "simd-4x1")
    assert p.model_kind == "subclassed" and p.get("a").block_shape == (4, 1)
    assert any("subclassed" in n for n in p.notes)


def test_unbuilt_and_non_models_are_refused():
    with pytest.raises(ValueError, match="has no weights yet"):
        plan(keras.Sequential([keras.layers.Dense(4)], name="lazy"), "cpu-wide")
    with pytest.raises(TypeError, match="expected a Keras 3 model"):
        plan(keras.layers.Dense(4), "cpu-wide")


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_range(bad):
    with pytest.raises(ValueError, match=r"sparsity=.* is outside \[0, 1\) for target 'cpu-wide'"):
        plan(_mlp(), "cpu-wide", sparsity=bad)


def test_sparsity_wrong_type():
    with pytest.raises(TypeError, match="sparsity must be a number"):
        plan(_mlp(), "cpu-wide", sparsity="0.9")


def test_overrides_exact_regex_skip_and_precedence():
    m = _mlp((256, 512, 512, 512))
    p = plan(m, "simd-4x1", sparsity=0.9, overrides={
        "d[0-9]": Override(sparsity=0.5),
        "d1": {"skip": True},
        "d2/kernel": "block=8x1,sparsity=0.7",
    })
    assert p.get("d0").sparsity == 0.5 and p.get("d0").block_shape == (4, 1) and p.get("d0").source == "override"
    assert p.get("d1").skip_code == "excluded" and "'d1'" in p.get("d1").skip_reason
    assert p.get("d2").block_shape == (8, 1) and p.get("d2").sparsity == 0.7


def test_override_sparsity_zero_excludes():
    p = plan(_mlp(), "cpu-wide", overrides={"d0": {"sparsity": 0.0}})
    assert p.get("d0").skip_code == "excluded"


def test_override_block_that_does_not_divide_names_layer_view_and_target():
    with pytest.raises(ValueError, match=r"Layer 'd0': block_shape=\(3, 1\) does not divide the \[in, out\] "
                                         r"view \(256, 512\) of weight 'kernel' for target 'cpu-wide'"):
        plan(_mlp(), "cpu-wide", overrides={"d0": Override(block_shape=(3, 1))})


@pytest.mark.parametrize("overrides, error, message", [
    ({"nope": "skip"}, ValueError, "override 'nope' matches no weight"),
    ({"d[": "skip"}, ValueError, "not a valid regular expression"),
    ({"d0": "block=4by1"}, ValueError, "not of the form RxC"),
    ({"d0": "sparsity=lots"}, ValueError, "not a number"),
    ({"d0": "colour=red"}, ValueError, "unknown key 'colour'"),
    ({"d0": {"blocks": (1, 1)}}, ValueError, "unknown keys"),
    ({"d0": {"sparsity": 2.0}}, ValueError, r"sparsity=2.0 is outside \[0, 1\) for override 'd0'"),
    ({"d0": {"block_shape": (0, 4)}}, ValueError, "not two positive integers"),
    ({"d0": 7}, TypeError, "must be an Override"),
])
def test_bad_overrides(overrides, error, message):
    with pytest.raises(error, match=message):
        plan(_mlp(), "cpu-wide", overrides=overrides)


def test_override_cannot_prune_what_is_not_prunable():
    inputs = keras.Input((8, 8, 16))
    m = keras.Model(inputs, keras.layers.DepthwiseConv2D(3, name="dw")(inputs))
    with pytest.raises(ValueError, match="cannot be pruned for target 'cpu-wide'"):
        plan(m, "cpu-wide", overrides={"dw": "block=1x1"})


def test_json_round_trip_and_required_keys(tmp_path):
    inputs = keras.Input((10, 64))
    y = keras.layers.MultiHeadAttention(num_heads=2, key_dim=64, name="mha")(inputs, inputs)
    y = keras.layers.Dense(16, name="small")(y)
    p = plan(keras.Model(inputs, y), "dsp-1x8", sparsity=0.8, overrides={"mha/key/kernel": "skip"})
    d = json.loads(p.to_json())
    for entry in d["layers"]:
        for key in ("layer", "weight", "view_shape", "block_shape", "sparsity", "skip_reason"):
            assert key in entry
    by = {(e["layer"], e["weight"]): e for e in d["layers"]}
    assert by[("mha", "query/kernel")]["skip_reason"] is None
    assert by[("mha", "key/kernel")]["skip_reason"].startswith("excluded by the user")
    assert by[("small", "kernel")]["skip_reason"] is not None
    assert d["target"] == "dsp-1x8" and d["target_descriptor"]["block_shapes"] == [[1, 8]]
    again = SparsityPlan.from_json(p.to_json())
    assert again == p
    path = p.save(tmp_path / "sub" / "plan.json")
    assert SparsityPlan.load(path) == p
    assert not [f for f in path.parent.iterdir() if f.name != "plan.json"]  # no temp files left


def test_from_json_refuses_other_documents(tmp_path):
    with pytest.raises(ValueError, match="not a blockprune plan"):
        SparsityPlan.from_json('{"layers": []}')
    with pytest.raises(ValueError, match="not valid JSON"):
        SparsityPlan.from_json("{")
    p = plan(_mlp(), "cpu-wide")
    d = json.loads(p.to_json())
    d["version"] = 99
    with pytest.raises(ValueError, match="version 99 is not supported"):
        SparsityPlan.from_json(json.dumps(d))
    del d["layers"]
    d["version"] = 1
    with pytest.raises(ValueError, match="malformed plan"):
        SparsityPlan.from_json(json.dumps(d))


def test_summary_is_a_readable_table_with_every_skip_reason():
    inputs = keras.Input((16, 16, 32))
    x = keras.layers.Conv2D(64, 3, name="k3")(inputs)
    x = keras.layers.Conv2D(128, 1, name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(10, name="tiny")(x)
    p = plan(keras.Model(inputs, x), "dsp-1x8", overrides={"pw": "sparsity=0.5"})
    text = p.summary()
    assert "on target 'dsp-1x8'" in text and "ESTIMATE" in text
    assert "pw/kernel" in text and "(1, 8)" in text and "50%" in text
    for lp in p.skipped_layers:
        assert lp.skip_reason in text
    assert set(SKIP_CODES) >= {lp.skip_code for lp in p.skipped_layers}


def test_plan_accepts_a_descriptor_file(write_toml, valid_toml):
    p = plan(_mlp(), write_toml(valid_toml), sparsity=0.5)
    assert p.target.name == "my-target" and p.get("d0").block_shape == (4, 1)


def test_estimates_are_present_and_model_wide_counts_skipped_layers():
    p = plan(_mlp((256, 512, 512, 10)), "cpu-wide", sparsity=0.9)
    assert all(lp.est_speedup > 5 for lp in p.pruned_layers)
    only_one = plan(_mlp((256, 512, 512, 10)), "cpu-wide", sparsity=0.9, overrides={"d1": "skip"})
    assert only_one.est_speedup < p.est_speedup
    assert load_target("cpu-wide").native


def test_run_caps_narrow_inputs_counting_a_channel_block_convolution_by_its_input_channels():
    from blockprune.run import NARROW_SPARSITY, narrow_overrides

    inputs = keras.Input((12, 12, 32))
    x = keras.layers.Conv2D(64, 3, name="c32")(inputs)  # 288 rows: 32 channels of 9 taps
    x = keras.layers.Conv2D(128, 3, name="c64")(x)
    x = keras.layers.Conv2D(128, 3, name="c128")(x)
    x = keras.layers.Dense(256, name="d128")(keras.layers.GlobalAveragePooling2D()(x))  # 128 inputs: not narrow
    model = keras.Model(inputs, keras.layers.Dense(128, name="d256")(x))
    capped = {"sparsity": NARROW_SPARSITY}
    # channel blocks keep or drop a whole input channel: 32 and 64 channels are narrow, 128 is not
    wide = plan(model, "cpu-wide", sparsity=0.9)
    assert {lp.name: lp.block_shape for lp in wide.pruned_layers}["c32/kernel"] == (9, 64)
    assert narrow_overrides(wide, 0.9) == {"c32/kernel": capped, "c64/kernel": capped}
    # (2, 2) blocks choose among the 288 rows of the same convolution: not narrow
    assert narrow_overrides(plan(model, "tensor-core-2x2", sparsity=0.9), 0.9) == {}

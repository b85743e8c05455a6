"""Target descriptors: shipped files load, and every validation error names file and field."""

import json
import re
import sys

import pytest

from blockprune.targets import (
    LAYER_KINDS,
    TargetDescriptor,
    TargetError,
    list_targets,
    load_target,
    shipped_target_names,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from conftest import REPO


def test_shipped_targets_are_the_ones_the_mission_names():
    names = shipped_target_names()
    for required in ("simd-4x1", "tflite-int8-16x1", "dsp-1x8", "tensor-core-2x2", "cpu-wide"):
        assert required in names


def test_shipped_targets_encode_the_measured_facts():
    simd = load_target("simd-4x1")
    assert simd.block_shapes == ((4, 1),)  # TFLite "1x4" in its [out, in] layout
    assert simd.lowering.tflite == "builtin-sparse"
    int8 = load_target("tflite-int8-16x1")
    assert int8.block_shapes == ((16, 1),) and int8.dtype == "int8"
    assert int8.runtime.tflite_default_delegates is False  # XNNPACK gives wrong outputs here
    dsp = load_target("dsp-1x8")
    assert dsp.block_shapes == ((1, 8),) and dsp.balanced and dsp.lowering.tflite == "gather-matmul"
    assert "conv1x1" in dsp.layer_kinds and not dsp.native
    tc = load_target("tensor-core-2x2")
    assert tc.block_shapes == ((2, 2),) and tc.balanced
    wide = load_target("cpu-wide")
    assert wide.block_shapes[0] == (1, 128) and wide.balanced and wide.lowering.onnx == "gather-matmul"


def test_every_shipped_file_documents_its_hardware_fact():
    for path in (REPO / "targets").glob("*.toml"):
        comments = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
        assert len(comments) >= 3, f"{path.name} should explain the hardware fact it encodes"


def test_descriptor_is_frozen():
    t = load_target("simd-4x1")
    with pytest.raises(AttributeError):
        t.name = "other"


def test_to_dict_uses_the_toml_field_names():
    for t in list_targets():
        raw = tomllib.loads((REPO / "targets" / f"{t.name}.toml").read_text())
        d = t.to_dict()
        for key, value in raw.items():
            assert key in d
            if isinstance(value, dict):
                for sub, sub_value in value.items():
                    assert sub in d[key], f"{t.name}: {key}.{sub}"
                    if not isinstance(sub_value, dict):
                        assert d[key][sub] == sub_value
            else:
                assert d[key] == value, f"{t.name}: {key}"
        json.dumps(d)


def test_user_descriptor_by_path(write_toml, valid_toml):
    t = load_target(write_toml(valid_toml))
    assert isinstance(t, TargetDescriptor)
    assert t.name == "my-target" and t.block_shapes == ((4, 1), (2, 2))
    assert t.runtime.onnx_opset == 18 and t.cost_model.memory_gbps == 5.0


def test_descriptor_passes_through():
    t = load_target("cpu-wide")
    assert load_target(t) is t


def test_unknown_target_name_lists_shipped_and_suggests():
    with pytest.raises(TargetError, match=r"unknown target 'simd-4x2'.*did you mean 'simd-4x1'"):
        load_target("simd-4x2")


def test_wrong_type_of_target_argument():
    with pytest.raises(TypeError, match="target must be"):
        load_target(42)


def test_missing_file(tmp_path):
    with pytest.raises(TargetError, match="no such target descriptor file"):
        load_target(tmp_path / "nope.toml")


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(
    "old, new, field, message",
    [
        ('dtype = "float32"', 'dtype = "float32"\nblok_shapes = [[1, 1]]', "blok_shapes",
         "unknown field.*did you mean 'block_shapes'"),
        ('balanced = false\n', '', "balanced", "missing required field"),
        ('[[4, 1], [2, 2]]', '[[4, 1], [2, 0]]', r"block_shapes\[1\]", "two positive integers"),
        ('[[4, 1], [2, 2]]', '[[4, 1, 1]]', r"block_shapes\[0\]", "two positive integers"),
        ('[[4, 1], [2, 2]]', '[[4, "1"]]', r"block_shapes\[0\]", "two positive integers"),
        ('[[4, 1], [2, 2]]', '[[4, 1.5]]', r"block_shapes\[0\]", "two positive integers"),
        ('[[4, 1], [2, 2]]', '[]', "block_shapes", "at least one"),
        ('[[4, 1], [2, 2]]', '[[4, 1], [4, 1]]', r"block_shapes\[1\]", "duplicate"),
        ('tflite = "builtin-sparse"', 'tflite = "magic"', "lowering.tflite", "unknown value 'magic'"),
        ('onnx = "dense"', 'onnx = "builtin-sparse"', "lowering.onnx", "unknown value 'builtin-sparse'"),
        ('dtype = "float32"', 'dtype = "float16"', "dtype", "unknown value 'float16'"),
        ('["dense", "conv1x1"]', '["dense", "lstm"]', r"layer_kinds\[1\]", "unknown layer kind 'lstm'"),
        ('min_weights = 64', 'min_weights = "64"', "min_weights", "expected an integer"),
        ('min_weights = 64', 'min_weights = true', "min_weights", "expected an integer, got boolean"),
        ('min_weights = 64', 'min_weights = -1', "min_weights", "expected 0 or more"),
        ('min_weights = 64', 'min_weights = 64\nmin_macs = -5', "min_macs", "expected 0 or more"),
        ('min_weights = 64', 'min_weights = 64\nmin_macs = 1.5', "min_macs", "expected an integer"),
        ('balanced = false', 'balanced = "no"', "balanced", "expected a boolean"),
        ('vector_lanes = 4', 'vector_lanes = 0', "cost_model.vector_lanes", "positive"),
        ('lane_axis = "in"', 'lane_axis = "diagonal"', "cost_model.lane_axis", "unknown value"),
        ('peak_gflops = 10.0', '', "cost_model.peak_gflops", "missing required field"),
        ('default_delegates = false', 'default_delegates = false\nthreads = 2', "runtime.tflite.threads",
         "unknown field"),
        ('opset = 18', 'opset = 13', "runtime.onnx.opset", "17 or newer"),
        ('name = "my-target"', 'name = "My Target"', "name", "lowercase"),
        ('onnx = "dense"', 'onnx = "gather-matmul"', "balanced", "gather-matmul lowering needs balanced"),
    ],
)
def test_every_validation_error_names_file_and_field(write_toml, valid_toml, old, new, field, message):
    path = write_toml(_edit(valid_toml, old, new))
    with pytest.raises(TargetError) as info:
        load_target(path)
    text = str(info.value)
    assert text.startswith(str(path)), text
    assert re.search(f"field '{field}'", text), text
    assert re.search(message, text), text


def test_invalid_toml_names_the_file(write_toml):
    path = write_toml("name = \n")
    with pytest.raises(TargetError, match=f"{path}: not valid TOML"):
        load_target(path)


def test_a_table_where_a_value_belongs(write_toml, valid_toml):
    text = _edit(valid_toml, '[lowering]\ntflite = "builtin-sparse"\nonnx = "dense"\n', "")
    path = write_toml(_edit(text, "native = true", "native = true\nlowering = 3"))
    with pytest.raises(TargetError, match="field 'lowering'"):
        load_target(path)


def test_layer_kinds_constant_matches_docs():
    assert set(LAYER_KINDS) == {"dense", "conv1x1", "conv", "einsum_dense", "recurrent", "custom"}
    readme = (REPO / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `layer_kinds` |"))
    assert all(f"`{kind}`" in row for kind in LAYER_KINDS), row

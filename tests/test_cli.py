"""The blockprune command: tables, JSON, one-line errors, --help everywhere."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blockprune.cli import build_parser, main
from conftest import REPO


def test_targets_table_lists_every_shipped_target(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("simd-4x1", "tflite-int8-16x1", "dsp-1x8", "tensor-core-2x2", "cpu-wide"):
        assert name in out
    assert "[in, out]" in out


def test_targets_json_carries_the_toml_fields(capsys):
    assert main(["targets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    simd = next(t for t in data if t["name"] == "simd-4x1")
    assert simd["block_shapes"] == [[4, 1]]
    assert simd["lowering"] == {"tflite": "builtin-sparse", "onnx": "dense"}
    assert {"name", "description", "dtype", "block_shapes", "balanced", "lowering", "runtime", "min_weights",
            "layer_kinds", "cost_model"} <= set(simd)


def test_targets_validates_a_user_file(capsys, write_toml, valid_toml):
    good = write_toml(valid_toml)
    assert main(["targets", str(good)]) == 0
    assert "my-target" in capsys.readouterr().out
    bad = write_toml(valid_toml.replace('tflite = "builtin-sparse"', 'tflite = "fast"'), "bad.toml")
    assert main(["targets", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.toml: field 'lowering.tflite'" in err


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import keras

    inputs = keras.Input((128,))
    x = keras.layers.Dense(256, name="wide")(inputs)
    x = keras.layers.Dense(10, name="out")(x)
    path = tmp_path_factory.mktemp("m") / "m.keras"
    keras.Model(inputs, x, name="tiny").save(path)
    return path


def test_plan_on_a_saved_model_prints_table_and_writes_json(capsys, saved_model, tmp_path):
    out_file = tmp_path / "plan.json"
    assert main(["plan", str(saved_model), "--target", "simd-4x1", "--sparsity", "0.8", "-o", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "wide/kernel" in out and "(4, 1)" in out and "80%" in out and "skipped" in out
    data = json.loads(out_file.read_text())
    assert data["target"] == "simd-4x1"
    assert [e["block_shape"] for e in data["layers"]] == [[4, 1], None]


def test_plan_json_to_stdout_with_overrides(capsys, saved_model):
    assert main(["plan", str(saved_model), "-t", "simd-4x1", "--json", "--override", "wide", "block=8x1",
                 "--skip", "out"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layers"][0]["block_shape"] == [8, 1]
    assert data["layers"][1]["skip_code"] == "excluded"


def test_plan_without_model_uses_the_builtin_example(capsys):
    assert main(["plan", "--target", "cpu-wide"]) == 0
    out = capsys.readouterr().out
    assert "built-in example 'mlp'" in out and "hidden_2/kernel" in out and "(1, 64)" in out


@pytest.mark.parametrize("argv, message", [
    (["plan", "--target", "nope"], "unknown target 'nope'"),
    (["plan", "--sparsity", "1.5"], r"sparsity=1.5 is outside [0, 1)"),
    (["plan", "missing.keras"], "model file 'missing.keras' does not exist"),
    (["plan", "--override", "ghost", "skip"], "override 'ghost' matches no weight"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err


def test_not_a_keras_file(capsys, tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("hello")
    assert main(["plan", str(path)]) == 2
    assert "is not a .keras file" in capsys.readouterr().err


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", "--sparsity", "lots"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'lots' is not a number" in err


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in [None, *commands]:
        with pytest.raises(SystemExit) as info:
            main(["--help"] if name is None else [name, "--help"])
        assert info.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_console_script_is_installed():
    done = subprocess.run([str(Path(sys.executable).parent / "blockprune"), "targets"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cpu-wide" in done.stdout and "Traceback" not in done.stderr


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    start = readme.index("<!-- test-command -->")
    block = readme[start:].split("```")[1]
    command = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("bash")][0].strip()
    assert command in ci


def _failing_targets(monkeypatch, error):
    """`blockprune targets` raising ``error`` from inside (as a converter or runtime would),
    after an OSError it hides with ``raise ... from None``."""
    import blockprune.targets

    def boom():
        try:
            raise OSError("the hidden cause")
        except OSError:
            raise error from None

    monkeypatch.setattr(blockprune.targets, "list_targets", boom)


def test_an_unexpected_error_is_one_line_with_its_type(capsys, monkeypatch):
    _failing_targets(monkeypatch, RuntimeError("No Op registered for Erfc\nwith node gelu"))
    monkeypatch.delenv("BLOCKPRUNE_DEBUG", raising=False)
    assert main(["targets"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "RuntimeError: No Op registered for Erfc with node gelu" in err and "BLOCKPRUNE_DEBUG=1" in err


def test_debug_shows_the_whole_chain(monkeypatch):
    _failing_targets(monkeypatch, ValueError("a one-line error"))
    monkeypatch.setenv("BLOCKPRUNE_DEBUG", "1")
    with pytest.raises(ValueError) as info:
        main(["targets"])
    assert isinstance(info.value.__context__, OSError) and not info.value.__suppress_context__


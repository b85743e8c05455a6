"""Bad inputs and faults at the command line: each gives one line that names what is wrong,
exits non-zero, and leaves the working folder exactly as it was (no stray file, nothing
overwritten or lost).

Every case runs ``blockprune`` in-process in a fresh copy of a folder holding a trained model,
its plan, a block-sparse model, an export folder, a packed-weights file and a dataset; a case's
``setup`` first spoils one of them (or writes a bad file of its own).
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from blockprune.cli import main


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A folder of good inputs, built once."""
    import keras

    import blockprune
    from blockprune.export import export
    from blockprune.packfile import pack_model, save_packed
    from blockprune.pruning import prune_once

    folder = tmp_path_factory.mktemp("good")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, activation="relu", name="hidden")(inputs)
    x = keras.layers.Dense(256, activation="relu", name="hidden2")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="out")(x), name="mlp")
    model.save(folder / "model.keras")
    plan = blockprune.plan(model, "cpu-wide", sparsity=0.9)
    plan.save(folder / "plan.json")
    sparse = prune_once(model, plan)
    sparse.save(folder / "sparse.keras")
    export(sparse, "cpu-wide", folder / "export", plan=plan, formats=("tflite",), select="target", check=False)
    save_packed(folder / "packed.safetensors", pack_model(sparse, "cpu-wide"), {"target": "cpu-wide"})
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x_train=rng.normal(size=(64, 64)).astype("float32"),
             y_train=rng.integers(0, 10, 64), x_test=rng.normal(size=(16, 64)).astype("float32"),
             y_test=rng.integers(0, 10, 16))
    return folder


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


# --------------------------------------------------------------------------- spoilers

def _write(name, data):
    def setup(d: Path):
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    return setup


def _edit_json(name, edit):
    def setup(d: Path):
        path = d / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return setup


def _model(name, build):
    def setup(d: Path):
        import keras

        keras.utils.set_random_seed(0)
        build(keras).save(d / name)
    return setup


EIG_MODULE = """
import keras


@keras.saving.register_keras_serializable(package="faults")
class Eigenvalues(keras.layers.Layer):
    def call(self, x):
        return keras.ops.linalg.eigh(keras.ops.reshape(x, (-1, 4, 4)))[0]
"""


def _eig_model(d: Path):
    """A model with an op neither TFLite nor ONNX has, its layer in a module ``--import`` loads."""
    import importlib
    import sys

    import keras

    (d / "faults_eig.py").write_text(EIG_MODULE)
    sys.path.insert(0, str(d))
    try:
        module = importlib.reload(importlib.import_module("faults_eig"))
    finally:
        sys.path.remove(str(d))
    inputs = keras.Input((16,))
    outputs = module.Eigenvalues(name="eig")(keras.layers.Dense(16, name="d")(inputs))
    keras.Model(inputs, outputs, name="eigm").save(d / "eig.keras")


def _nan_model(keras):
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dense(256, name="hidden")(inputs), name="nan")
    k = model.get_layer("hidden").kernel
    k.assign(np.where(np.arange(k.shape[1]) == 5, np.nan, k.numpy()))
    return model


def _no_weights(keras):
    inputs = keras.Input((64,))
    return keras.Model(inputs, keras.layers.Activation("relu")(inputs), name="no_weights")


def _two_outputs(keras):
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, [keras.layers.Dense(10, name="a")(x), keras.layers.Dense(3, name="b")(x)],
                       name="two")


def _npz(name, **arrays):
    def setup(d: Path):
        np.savez(d / name, **arrays)
    return setup


def _tamper_packed(d: Path):
    """Swaps the first weight's kernel shape in the header (same length, still valid JSON)."""
    data = (d / "packed.safetensors").read_bytes()
    edited = data.replace(b'kernel_shape\\": [64, 256]', b'kernel_shape\\": [256, 64]', 1)
    assert edited != data
    (d / "packed.safetensors").write_bytes(edited)


def _plan_for(target):
    def setup(d: Path):
        import keras

        import blockprune

        blockprune.plan(keras.models.load_model(d / "model.keras"), target, sparsity=0.9).save(d / "plan.json")
    return setup


def _flip_array_byte(d: Path):
    data = bytearray((d / "packed.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (d / "packed.safetensors").write_bytes(bytes(data))


def _remove(name):
    def setup(d: Path):
        (d / name).unlink()
    return setup


def _both(*setups):
    def setup(d: Path):
        for s in setups:
            s(d)
    return setup


X = np.zeros((8, 64), "float32")
Y = np.zeros(8, "int64")
BAD_TARGET = "name = 'x'\ndescription = 'x'\n"

# (id, setup, argv, exit code, message regex)
CASES = [
    # targets
    ("targets-missing-file", None, ["targets", "nope.toml"], 2, r"nope\.toml"),
    ("targets-bad-toml", _write("bad.toml", "name = [unclosed"), ["targets", "bad.toml"], 2, r"bad\.toml"),
    ("targets-missing-field", _write("bad.toml", BAD_TARGET), ["targets", "bad.toml"], 2, r"bad\.toml.*hardware"),
    # plan
    ("plan-unknown-target", None, ["plan", "model.keras", "-t", "nope"], 2, "unknown target 'nope'"),
    ("plan-sparsity-too-high", None, ["plan", "model.keras", "-s", "1.5"], 2, r"sparsity=1\.5 is outside \[0, 1\)"),
    ("plan-missing-model", None, ["plan", "missing.keras"], 2, "model file 'missing.keras' does not exist"),
    ("plan-not-keras", _write("model.txt", "hello"), ["plan", "model.txt"], 2, r"is not a \.keras file"),
    ("plan-corrupt-keras", _write("broken.keras", b"PK\x03\x04 not a zip"), ["plan", "broken.keras"], 2,
     "cannot load Keras model 'broken.keras'"),
    ("plan-nan-weights", _model("nan.keras", _nan_model), ["plan", "nan.keras"], 2,
     "weight 'hidden/kernel' holds 64 NaN or infinite value"),
    ("plan-no-weights", _model("empty.keras", _no_weights), ["plan", "empty.keras"], 2,
     "'no_weights' has no weights"),
    ("plan-override-matches-nothing", None, ["plan", "model.keras", "--override", "ghost", "skip"], 2,
     "override 'ghost' matches no weight"),
    ("plan-override-block-does-not-divide", None,
     ["plan", "model.keras", "--override", "out", "block=1x64"], 2,
     r"Layer 'out': block_shape=\(1, 64\) does not divide .* target 'cpu-wide'"),
    ("plan-bad-override-syntax", None, ["plan", "model.keras", "--override", "hidden", "blok=1x8"], 2,
     "override 'hidden'"),
    ("plan-missing-profile", None, ["plan", "model.keras", "--profile", "nope.json"], 2, r"nope\.json"),
    ("plan-corrupt-profile", _write("profile.json", "{not json"), ["plan", "model.keras", "--profile",
                                                                   "profile.json"], 2, r"profile\.json"),
    ("plan-output-is-a-folder", None, ["plan", "model.keras", "-o", "export"], 2, r"export"),
    ("plan-impossible-speedup", None, ["plan", "model.keras", "--speedup", "0.5"], 2, "speedup"),
    # prune
    ("prune-missing-data", None, ["prune", "model.keras", "--data", "none.npz", "-o", "out.keras"], 2,
     "data file 'none.npz' does not exist"),
    ("prune-data-not-npz", _write("data.txt", "1,2,3"), ["prune", "model.keras", "--data", "data.txt",
                                                          "-o", "out.keras"], 2, r"data\.txt"),
    ("prune-data-missing-array", _npz("bad.npz", x_train=X), ["prune", "model.keras", "--data", "bad.npz",
                                                               "-o", "out.keras"], 2, "has no 'y_train' array"),
    ("prune-data-wrong-shape", _npz("bad.npz", x_train=np.zeros((8, 32), "float32"), y_train=Y),
     ["prune", "model.keras", "--data", "bad.npz", "-o", "out.keras"], 2, r"x_train samples have shape \(32,\)"),
    ("prune-data-labels-out-of-range", _npz("bad.npz", x_train=X, y_train=Y + 12),
     ["prune", "model.keras", "--data", "bad.npz", "-o", "out.keras"], 2, "y_train holds class labels 12..12"),
    ("prune-data-length-mismatch", _npz("bad.npz", x_train=X, y_train=Y[:5]),
     ["prune", "model.keras", "--data", "bad.npz", "-o", "out.keras"], 2, "x_train has 8 samples but y_train has 5"),
    ("prune-corrupt-plan", _write("bad_plan.json", "[1, 2"), ["prune", "model.keras", "--plan", "bad_plan.json",
                                                              "-o", "out.keras"], 2, r"bad_plan\.json"),
    ("prune-plan-of-another-model", _edit_json("plan.json", lambda p: {
        **p, "layers": [{**lay, "layer": "other_" + lay["layer"]} for lay in p["layers"]]}),
     ["prune", "model.keras", "--plan", "plan.json", "-o", "out.keras"], 2, "other_hidden"),
    ("prune-zero-epochs", None, ["prune", "model.keras", "--epochs", "0", "-o", "out.keras"], 2, "epochs"),
    ("prune-zero-batch-size", None, ["prune", "model.keras", "--batch-size", "0", "-o", "out.keras"], 2,
     "batch"),
    ("prune-output-not-keras", None, ["prune", "model.keras", "-o", "out.h5"], 2, r"out\.h5"),
    ("prune-two-outputs", _model("two.keras", _two_outputs), ["prune", "two.keras", "-o", "out.keras"], 2,
     r"2 output\(s\)"),
    ("prune-nan-weights", _model("nan.keras", _nan_model), ["prune", "nan.keras", "-o", "out.keras"], 2,
     "NaN or infinite"),
    # pack and inspect
    ("pack-dense-model", None, ["pack", "model.keras", "-t", "cpu-wide", "-o", "out.safetensors"], 2,
     "cpu-wide"),
    ("pack-unknown-target", None, ["pack", "sparse.keras", "-t", "nope", "-o", "out.safetensors"], 2,
     "unknown target 'nope'"),
    ("inspect-missing", None, ["inspect", "none.safetensors"], 2, r"none\.safetensors"),
    ("inspect-not-safetensors", _write("junk.safetensors", b"\x00" * 64), ["inspect", "junk.safetensors"], 2,
     r"junk\.safetensors"),
    ("inspect-edited-header", _tamper_packed, ["inspect", "packed.safetensors"], 2,
     r"packed\.safetensors"),
    ("inspect-flipped-weight-byte", _flip_array_byte, ["inspect", "packed.safetensors"], 2,
     r"packed\.safetensors.*checksum"),
    # export
    ("export-dense-model", None, ["export", "model.keras", "-t", "cpu-wide", "--select", "target",
                                  "-o", "out"], 2, "has no weight with a block shape of target 'cpu-wide'"),
    ("export-unknown-format", None, ["export", "sparse.keras", "-t", "cpu-wide", "--format", "pdf", "-o", "out"],
     2, "pdf"),
    ("export-zero-batch", None, ["export", "sparse.keras", "-t", "cpu-wide", "--batch", "0", "-o", "out"], 2,
     "batch"),
    ("export-zero-threads", None, ["export", "sparse.keras", "-t", "cpu-wide", "--threads", "0", "-o", "out"], 2,
     "threads"),
    ("export-nan-weights", _model("nan.keras", _nan_model), ["export", "nan.keras", "-t", "cpu-wide",
                                                             "-o", "out"], 2, "NaN or infinite"),
    ("export-corrupt-profile", _write("profile.json", "{not json"),
     ["export", "sparse.keras", "-t", "cpu-wide", "--profile", "profile.json", "-o", "out"], 2,
     r"profile\.json"),
    ("export-over-a-file", _write("out", "a file, not a folder"),
     ["export", "sparse.keras", "-t", "cpu-wide", "--select", "target", "-o", "out"], 2, "out"),
    ("export-plan-of-another-target", _plan_for("simd-4x1"),
     ["export", "sparse.keras", "--plan", "plan.json", "-o", "out"], 2, "simd-4x1"),
    ("export-op-without-tflite-equivalent", _eig_model,
     ["export", "eig.keras", "--import", "faults_eig", "-t", "cpu-wide", "--allow-dense", "--format", "tflite",
      "-o", "out"], 2, "cannot convert model 'eigm' to .tflite for target 'cpu-wide' at layer 'eig': op "
                       "SelfAdjointEigV2 has no TFLite builtin equivalent"),
    ("export-op-without-onnx-equivalent", _eig_model,
     ["export", "eig.keras", "--import", "faults_eig", "-t", "cpu-wide", "--allow-dense", "--format", "onnx",
      "-o", "out"], 2, "cannot convert model 'eigm' to .onnx for target 'cpu-wide' at layer 'eig': op "
                       "SelfAdjointEigV2 has no ONNX equivalent"),
    ("plan-import-missing-module", None, ["plan", "model.keras", "--import", "no_such_module"], 2,
     "--import no_such_module"),
    # bench
    ("bench-not-an-export", None, ["bench", "data.npz", "-o", "report"], 2, r"data\.npz"),
    ("bench-corrupt-export-json", _write("export/export.json", "{"), ["bench", "export", "-o", "report"], 2,
     r"export\.json"),
    ("bench-corrupt-runtime-json", _write("export/mlp.tflite.runtime.json", "]"),
     ["bench", "export", "-o", "report"], 2, r"mlp\.tflite\.runtime\.json"),
    ("bench-missing-keras-model", _remove("export/mlp.keras"), ["bench", "export", "-o", "report"], 2,
     r"mlp\.keras"),
    ("bench-missing-tflite", _remove("export/mlp.tflite"), ["bench", "export", "-o", "report"], 2,
     r"mlp\.tflite"),
    ("bench-zero-batch", None, ["bench", "export", "--batch", "0", "-o", "report"], 2, "batch"),
    # tune
    ("tune-bad-sparsities", None, ["tune", "model.keras", "--sparsities", "0.5,lots", "-o", "profile.json"], 2,
     "lots"),
    ("tune-negative-time-budget", None, ["tune", "model.keras", "--time-budget", "-1", "-o", "profile.json"], 2,
     "time"),
    # run
    ("run-sparsity-too-high", None, ["run", "--sparsity", "2", "--out", "report"], 2, r"sparsity=2"),
    ("run-zero-epochs", None, ["run", "--epochs", "0", "--out", "report"], 2, r"epochs=0 must be a positive integer"),
    ("run-unknown-quantize", None, ["run", "--quantize", "dynamic,int4", "--out", "report"], 2, r"'int4'.*cpu-wide"),
    ("run-missing-model", None, ["run", "--model", "none.keras", "--out", "report"], 2, r"none\.keras"),
    ("run-data-wrong-shape", _npz("bad.npz", x_train=np.zeros((8, 32), "float32"), y_train=Y,
                                  x_test=np.zeros((8, 32), "float32"), y_test=Y),
     ["run", "--model", "model.keras", "--data", "bad.npz", "--out", "report"], 2, r"x_train samples have shape"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_gives_one_line_and_leaves_no_stray_file(case, good, tmp_path, monkeypatch, capfd):
    _, setup, argv, code, message = case
    work = tmp_path / "work"
    shutil.copytree(good, work)
    if setup:
        setup(work)
    before = _snapshot(work)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))  # for --import of a case's own module
    try:
        got = main(argv)
    except SystemExit as e:  # argparse's own errors
        got = e.code
    err = capfd.readouterr().err.strip()  # native writes to fd 2 (converters, TensorFlow) included
    assert got == code, err
    lines = [line for line in err.splitlines() if line.startswith("blockprune ")]
    assert len(lines) == 1 and len(err.splitlines()) == 1, err
    assert __import__("re").search(message, err), err
    assert _snapshot(work) == before, "the command left a file behind or changed one"


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40

"""Exporters: ``.tflite`` and ``.onnx`` files that execute the sparsity, each verified by
running it in its runtime against Keras before anything is written.

- TFLite, ``builtin-sparse`` targets: ``TFLiteConverter.from_keras_model`` with
  ``EXPERIMENTAL_SPARSITY`` (plus ``DEFAULT`` for dynamic-range int8); the written flatbuffer
  is inspected, and a layer the weights made block-sparse that ended up dense or behind a
  ``DENSIFY`` op is an error (a warning with ``allow_dense``).
- TFLite and ONNX, ``gather-matmul`` targets: the model lowered by ``blockprune.lower``.
- ONNX: tf2onnx (opset from the target, >= 17); dense weights that are mostly zero are
  stored as ``sparse_initializer`` when that makes the file smaller (ONNX Runtime densifies
  them at load: a size win only).

The runtime options a file needs (e.g. LiteRT without its default delegates, docs/DESIGN.md
section 3's wrong-output trap) are written beside it as ``<file>.runtime.json``, and
``blockprune.runtimes.make_runner`` reads them back, so every user of the file runs it the same way.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .lower import lower, lowering
from .plan import SparsityPlan
from .runtimes import RUNTIMES, compare, sample_inputs
from .structure import StructureError, read_structure
from .targets import TargetDescriptor, load_target

__all__ = ["ExportError", "ExportRecord", "export", "export_tflite", "export_onnx"]

LITERT, ONNXRUNTIME = RUNTIMES["litert"], RUNTIMES["onnxruntime"]
FLOAT_TOLERANCE = 1e-3  # relative to the largest reference output
INT8_TOLERANCE = 0.05
#: Record formats of weights that run at dense speed.
DENSE_FORMATS = ("dense", "densify", "csr", "sparse-initializer")


class ExportError(ValueError):
    """An export that would not be correct or not sparse; nothing was written."""


@dataclass
class ExportRecord:
    """What an exporter wrote.

    Attributes:
        path: the model file.
        format: ``tflite`` or ``onnx``.
        target: the target's name.
        variant: ``sparse`` or ``dense`` (the baseline for benchmarks).
        bytes: file size; ``gzip_bytes``: its gzip-compressed size.
        layers: per weight: ``name``, ``sparsity`` and ``format`` (how the runtime executes it:
            ``gather-matmul``, ``builtin-sparse``, ``densify``, ``sparse-initializer`` or ``dense``).
        max_abs_error, rel_error: largest difference from Keras on the check inputs.
        runtime_options: how to run the file (also in ``options_path``).
        warnings: problems allowed by ``allow_dense``.
    """

    path: str
    format: str
    target: str
    variant: str
    bytes: int
    gzip_bytes: int
    layers: list = field(default_factory=list)
    max_abs_error: float = 0.0
    rel_error: float = 0.0
    runtime_options: dict = field(default_factory=dict)
    options_path: str = ""
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- structure

def _layer_entry(ws, fmt: str) -> dict:
    """A record's per-weight entry: name, sparsity, how it runs, and its shape facts."""
    return {"name": ws.name, "sparsity": ws.sparsity, "format": fmt, "view_shape": list(ws.view_shape),
            "n_weights": ws.view_shape[0] * ws.view_shape[1],
            "block_shape": list(ws.block_shape) if ws.block_shape else None, "block_sparsity": ws.block_sparsity}


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path, suffix=".tmp" + path.suffix) as tmp:
        tmp.write_bytes(data)


def _finish(path: Path, data: bytes, record: ExportRecord) -> ExportRecord:
    _write_bytes(path, data)
    options_path = path.with_name(path.name + ".runtime.json")
    with atomic_path(options_path) as tmp:
        tmp.write_text(json.dumps({**record.runtime_options, "file": path.name}, indent=2) + "\n")
    record.path, record.options_path = str(path), str(options_path)
    record.bytes, record.gzip_bytes = len(data), len(gzip.compress(data, compresslevel=9))
    return record


def _prepare(model, target, path, plan, allow_dense: bool, dense: bool, structure):
    """Loads the target and reads the block structure (unless given); refuses a model with none
    to export."""
    target = load_target(target)
    if structure is None:
        try:
            structure = read_structure(model, target, plan)
        except StructureError as e:
            raise ExportError(str(e)) from None
    if not dense and not structure.blocked and not allow_dense:
        raise ExportError(f"model '{model.name}' has no weight with a block shape of target '{target.name}' "
                          f"({', '.join(map(str, target.block_shapes))}); prune it for this target first, or allow "
                          "dense layers (--allow-dense / allow_dense=True)")
    return target, Path(path), structure


def _lowered(model, target, fmt: str, entry, structure, choices=None):
    """``(model to convert, {weight: record format} of the weights rewritten)``."""
    if not entry.rewrites:
        return model, {}
    source, lowered = lower(model, target, fmt, structure=structure, choices=choices)
    return source, {lw.weight_name: lw.format for lw in lowered}


def _layers_and_warnings(entry, structure, formats: dict[str, str]) -> tuple[list, list]:
    """The record's per-weight entries, and a warning for each blocked weight that runs dense."""
    layers, warnings = [], []
    for ws in structure:
        fmt = formats[ws.name]
        if ws.blocked and fmt in DENSE_FORMATS and entry.name != "dense":
            warnings.append(entry.warning(ws, fmt))
        layers.append(_layer_entry(ws, fmt))
    return layers, warnings


def _verify(model, samples, run, target: TargetDescriptor, what: str) -> tuple[float, float]:
    """Runs the converted file (``run(samples) -> output``) against Keras on the same inputs.

    Returns:
        ``(max_abs_error, rel_error)``.

    Raises:
        ExportError: the relative error exceeds the target dtype's tolerance.
    """
    reference = np.asarray(model.predict(samples if len(samples) > 1 else samples[0], verbose=0))
    err, rel = compare(reference, run(samples))
    tol = INT8_TOLERANCE if target.dtype == "int8" else FLOAT_TOLERANCE
    if not rel <= tol:
        raise ExportError(f"{what} for target '{target.name}' disagrees with Keras: relative error {rel:.3g} > "
                          f"{tol:g}; nothing was written")
    return err, rel


# --------------------------------------------------------------------------- TFLite

def _convert_tflite(model, optimizations) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = optimizations
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the exported signature
        return converter.convert()


def export_tflite(model, target, path, plan: SparsityPlan | None = None, allow_dense: bool = False,
                  dense: bool = False, samples: list | None = None, structure=None, choices=None) -> ExportRecord:
    """Writes a verified ``.tflite`` for ``target``.

    Args:
        model: a stripped block-sparse Keras model.
        target: target name, path or descriptor.
        path: the ``.tflite`` file to write (atomically, with ``<file>.runtime.json`` beside it).
        plan: pins the expected block structure (default: read from the weights).
        allow_dense: warn instead of failing when a block-sparse layer ends up dense.
        dense: write the dense baseline instead (same weights, no sparse encoding or lowering).
        samples: inputs to compare on (default: 4 random samples).
        structure: the model's ``ModelStructure`` when the caller has read it already.

    Returns:
        An ``ExportRecord``.

    Raises:
        ExportError: the file would disagree with Keras, or (without ``allow_dense``) a sparse
            layer would run dense. Nothing is written then.
    """
    import tensorflow as tf

    target, path, structure = _prepare(model, target, path, plan, allow_dense, dense, structure)
    entry = lowering("dense" if dense else target.lowering.tflite)
    # The delegate trap is specific to sparse int8 kernels; the dense baseline runs at its best.
    default_delegates = True if dense else target.runtime.tflite_default_delegates
    optimizations = ([tf.lite.Optimize.DEFAULT] if target.dtype == "int8" else []) + entry.converter_optimizations()
    source, done = _lowered(model, target, "tflite", entry, structure, choices)
    buf = _convert_tflite(source, optimizations)
    layers, warnings = _layers_and_warnings(entry, structure, entry.file_formats(buf, structure, done))
    if warnings and not allow_dense and not dense:
        raise ExportError(f"{path.name} for target '{target.name}': " + "; ".join(warnings) +
                          " (--allow-dense / allow_dense=True writes it anyway)")
    run = LITERT.runner(buf, {"default_delegates": default_delegates})
    err, rel = _verify(model, samples or sample_inputs(model), lambda xs: run(*xs), target, path.name)
    options = {"runtime": "litert", "target": target.name, "variant": "dense" if dense else "sparse",
               "lowering": entry.name, "dtype": target.dtype, "default_delegates": default_delegates,
               "op_resolver_type": "AUTO" if default_delegates else "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}
    record = ExportRecord("", "tflite", target.name, "dense" if dense else "sparse", 0, 0, layers, err, rel,
                          options, warnings=warnings)
    return _finish(path, buf, record)


# --------------------------------------------------------------------------- ONNX

def _convert_onnx(model, opset: int):
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec(t.shape, t.dtype, name=f"input_{i}") for i, t in enumerate(model.inputs)]
    fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0]))
    with contextlib.redirect_stdout(io.StringIO()):
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    return proto


def _sparsify_initializers(proto, min_elements: int = 1024) -> list[str]:
    """Moves float initializers that are smaller as COO sparse tensors to sparse_initializer."""
    from onnx import helper, numpy_helper

    moved = []
    keep = []
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind != "f" or arr.size < min_elements:
            keep.append(init)
            continue
        flat = arr.reshape(-1)
        nz = np.flatnonzero(flat)
        if len(nz) * (arr.itemsize + 8) >= arr.nbytes:
            keep.append(init)
            continue
        values = numpy_helper.from_array(flat[nz], name=init.name)
        indices = numpy_helper.from_array(nz.astype(np.int64), name=f"{init.name}_indices")
        proto.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(arr.shape)))
        moved.append(init.name)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return moved


def export_onnx(model, target, path, plan: SparsityPlan | None = None, allow_dense: bool = False,
                dense: bool = False, samples: list | None = None, structure=None, choices=None) -> ExportRecord:
    """Writes a verified ``.onnx`` for ``target`` (arguments as for ``export_tflite``).

    Raises:
        ExportError: the file would disagree with ONNX Runtime's reference, or (without
            ``allow_dense``) the model holds no weight with the target's block structure.
    """
    target, path, structure = _prepare(model, target, path, plan, allow_dense, dense, structure)
    entry = lowering("dense" if dense else target.lowering.onnx)
    source, done = _lowered(model, target, "onnx", entry, structure, choices)
    proto = _convert_onnx(source, target.runtime.onnx_opset)
    moved = set() if dense else set(_sparsify_initializers(proto))
    formats = entry.file_formats(b"", structure, done)
    if moved:  # dense-run weights with zero blocks are stored sparse: a size win only
        formats = {n: "sparse-initializer" if f == "dense" and structure.get(n).blocked else f for n, f in formats.items()}
    layers, warnings = _layers_and_warnings(entry, structure, formats)
    data = proto.SerializeToString()
    run = ONNXRUNTIME.runner(data)
    err, rel = _verify(model, samples or sample_inputs(model), lambda xs: run(*xs), target, path.name)
    options = {"runtime": "onnxruntime", "target": target.name, "variant": "dense" if dense else "sparse",
               "lowering": entry.name, "opset": target.runtime.onnx_opset, "providers": ["CPUExecutionProvider"],
               "sparse_initializers": sorted(moved)}
    record = ExportRecord("", "onnx", target.name, "dense" if dense else "sparse", 0, 0, layers, err, rel, options,
                          warnings=warnings)
    return _finish(path, data, record)


# --------------------------------------------------------------------------- both

def export(model, target, out_dir, formats=("tflite", "onnx"), plan: SparsityPlan | None = None,
           allow_dense: bool = False, dense_baseline: bool = True) -> list[ExportRecord]:
    """Exports ``model`` for ``target`` into ``out_dir``: ``<name>.<fmt>`` (sparse), and
    ``<name>.dense.<fmt>`` baselines for benchmarks, the Keras model ``<name>.keras``, and
    ``export.json`` listing the records.

    Args:
        model: a stripped block-sparse Keras model.
        target: target name, path or descriptor.
        out_dir: folder to write into (created).
        formats: any of ``"tflite"``, ``"onnx"``.
        plan: optional plan pinning the block structure.
        allow_dense: warn instead of failing when a sparse layer would run dense.
        dense_baseline: also write the dense baselines.

    Returns:
        The records, sparse files first.
    """
    target = load_target(target)
    unknown = [f for f in formats if f not in ("tflite", "onnx")]
    if unknown or not formats:
        raise ValueError(f"format {unknown[0] if unknown else ''!r} is not one of: tflite, onnx")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    writers = {"tflite": export_tflite, "onnx": export_onnx}
    records = []
    samples = sample_inputs(model)
    try:
        structure = read_structure(model, target, plan)  # once, for every file
    except StructureError as e:
        raise ExportError(str(e)) from None
    for fmt in formats:
        records.append(writers[fmt](model, target, out / f"{model.name}.{fmt}", plan, allow_dense, samples=samples,
                                    structure=structure))
    if dense_baseline:
        for fmt in formats:
            records.append(writers[fmt](model, target, out / f"{model.name}.dense.{fmt}", plan, allow_dense,
                                        dense=True, samples=samples, structure=structure))
    # The Keras model travels with its exports, so `blockprune bench` can check outputs later.
    from .pruning.api import save_model_atomic

    save_model_atomic(model, out / f"{model.name}.keras")
    descriptor = target.to_dict()
    descriptor.pop("source", None)
    with atomic_path(out / "export.json") as tmp:
        tmp.write_text(json.dumps({"target": target.name, "target_descriptor": descriptor, "model": model.name,
                                   "records": [r.to_dict() for r in records]}, indent=2) + "\n")
    return records

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

The runtime options a file needs (e.g. LiteRT without its default delegates, DESIGN.md
section 3's wrong-output trap) are written beside it as ``<file>.runtime.json``, and
``blockprune.runtimes.make_runner`` reads them back, so every user of the file runs it the same way.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .formats import detect_block_shape
from .masks import reachable_sparsity
from .lower import lower
from .modelwalk import target_sites
from .plan import SparsityPlan
from .runtimes import RUNTIMES, compare, sample_inputs
from .targets import TargetDescriptor, load_target

__all__ = ["ExportError", "ExportRecord", "export", "export_tflite", "export_onnx", "sparse_structure"]

LITERT, ONNXRUNTIME = RUNTIMES["litert"], RUNTIMES["onnxruntime"]
FLOAT_TOLERANCE = 1e-3  # relative to the largest reference output
INT8_TOLERANCE = 0.05


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

def sparse_structure(model, target: TargetDescriptor, plan: SparsityPlan | None = None) -> list[dict]:
    """Per eligible weight: its block shape and zero-block fraction, read from the weights.

    With a plan, each planned weight must have the planned block shape and sparsity.

    Raises:
        ExportError: a planned weight lacks its planned block structure.
    """
    planned = {lp.name: lp for lp in plan.pruned_layers} if plan else {}
    out = []
    for site in target_sites(model, target):
        name = f"{site.layer}/{site.weight}"
        w2d = site.view.to_2d(np.asarray(site.variable.numpy()))
        lp = planned.get(name)
        candidates = [lp.block_shape] if lp else target.block_shapes
        found = detect_block_shape(w2d, candidates)
        if lp and (found is None or found[1] < reachable_sparsity(w2d.shape, lp.block_shape, lp.sparsity,
                                                           target.balanced) - 1e-9):
            have = "no zero block" if found is None else f"{found[1]:.1%} zero blocks"
            raise ExportError(f"Layer '{site.layer}': weight '{site.weight}' has {have} of {lp.block_shape}, but the "
                              f"plan for target '{target.name}' says {lp.sparsity:.0%}; prune it first")
        out.append({"name": name, "layer": site.layer, "kind": site.kind, "view_shape": list(site.view.view_shape),
                    "block_shape": list(found[0]) if found else None,
                    "block_sparsity": found[1] if found else 0.0,
                    "sparsity": float(np.mean(w2d == 0))})
    return out


def _layer_entry(s: dict, fmt: str) -> dict:
    """A record's per-weight entry: name, sparsity, how it runs, and its shape facts."""
    return {"name": s["name"], "sparsity": s["sparsity"], "format": fmt, "view_shape": s["view_shape"],
            "n_weights": s["view_shape"][0] * s["view_shape"][1], "block_shape": s["block_shape"],
            "block_sparsity": s["block_sparsity"]}


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


def _prepare(model, target, path, plan, allow_dense: bool, dense: bool):
    """Loads the target and reads the block structure; refuses a model with none to export."""
    target = load_target(target)
    structure = sparse_structure(model, target, plan)
    sparse_layers = [s for s in structure if s["block_shape"]]
    if not dense and not sparse_layers and not allow_dense:
        raise ExportError(f"model '{model.name}' has no weight with a block shape of target '{target.name}' "
                          f"({', '.join(map(str, target.block_shapes))}); prune it for this target first, or allow "
                          "dense layers (--allow-dense / allow_dense=True)")
    return target, Path(path), structure, sparse_layers


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


def _fully_connected_weights(model_content: bytes) -> list[dict]:
    """For every FULLY_CONNECTED op: its weight tensor's name, [out, in] shape and encoding."""
    ops, tensors = LITERT.ops(model_content)
    densify = {op["outputs"][0]: op["inputs"][0] for op in ops if op["op_name"] == "DENSIFY"}
    out = []
    for op in ops:
        if op["op_name"] != "FULLY_CONNECTED":
            continue
        w = op["inputs"][1]
        if w in densify:
            encoding, src = "densify", tensors[densify[w]]
        else:
            src = tensors[w]
            sp = src.get("sparsity_parameters") or {}
            encoding = "builtin-sparse" if sp and len(sp.get("block_map", [])) else ("csr" if sp else "dense")
        out.append({"tensor": src["name"], "shape": tuple(int(d) for d in src["shape"]), "encoding": encoding})
    return out


def _match_fc(layer: str, view_shape, fcs: list[dict]) -> dict | None:
    shape = (view_shape[1], view_shape[0])
    same = [f for f in fcs if f["shape"] == shape]
    if len(same) <= 1:
        return same[0] if same else None
    leaf = re.escape(layer.split("/")[-1])
    named = [f for f in same if re.search(rf"(^|/){leaf}(_\d+)?/", f["tensor"])]
    return named[0] if named else same[0]


def export_tflite(model, target, path, plan: SparsityPlan | None = None, allow_dense: bool = False,
                  dense: bool = False, samples: list | None = None) -> ExportRecord:
    """Writes a verified ``.tflite`` for ``target``.

    Args:
        model: a stripped block-sparse Keras model.
        target: target name, path or descriptor.
        path: the ``.tflite`` file to write (atomically, with ``<file>.runtime.json`` beside it).
        plan: pins the expected block structure (default: read from the weights).
        allow_dense: warn instead of failing when a block-sparse layer ends up dense.
        dense: write the dense baseline instead (same weights, no sparse encoding or lowering).
        samples: inputs to compare on (default: 4 random samples).

    Returns:
        An ``ExportRecord``.

    Raises:
        ExportError: the file would disagree with Keras, or (without ``allow_dense``) a sparse
            layer would run dense. Nothing is written then.
    """
    import tensorflow as tf

    target, path, structure, sparse_layers = _prepare(model, target, path, plan, allow_dense, dense)
    lowering = "dense" if dense else target.lowering.tflite
    # The delegate trap is specific to sparse int8 kernels; the dense baseline runs at its best.
    default_delegates = True if dense else target.runtime.tflite_default_delegates
    warnings, layers = [], []
    optimizations = [tf.lite.Optimize.DEFAULT] if target.dtype == "int8" else []
    if lowering == "gather-matmul":
        pins = {s["name"]: tuple(s["block_shape"]) for s in sparse_layers}
        converted, lowered = lower(model, target, "tflite", block_shapes=pins)
        done = {lw.name for lw in lowered}
        for s in structure:
            fmt = "gather-matmul" if s["layer"] in done else "dense"
            if s["block_shape"] and fmt == "dense":
                warnings.append(f"Layer '{s['layer']}' is block-sparse but has no gather-matmul form here; it runs dense")
            layers.append(_layer_entry(s, fmt))
        buf = _convert_tflite(converted, optimizations)
    else:
        if lowering == "builtin-sparse":
            optimizations = optimizations + [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        buf = _convert_tflite(model, optimizations)
        fcs = _fully_connected_weights(buf)
        for s in structure:
            fc = _match_fc(s["layer"], s["view_shape"], fcs) if s["kind"] == "dense" else None
            fmt = fc["encoding"] if fc else "dense"
            if lowering == "builtin-sparse" and s["block_shape"] and fmt != "builtin-sparse":
                warnings.append(f"Layer '{s['layer']}' is {s['sparsity']:.0%} sparse in blocks {tuple(s['block_shape'])} "
                                f"but TFLite stores it {'behind a DENSIFY op' if fmt == 'densify' else fmt}: dense speed")
            layers.append(_layer_entry(s, fmt))
    if warnings and not allow_dense and not dense:
        raise ExportError(f"{path.name} for target '{target.name}': " + "; ".join(warnings) +
                          " (--allow-dense / allow_dense=True writes it anyway)")
    run = LITERT.runner(buf, {"default_delegates": default_delegates})
    err, rel = _verify(model, samples or sample_inputs(model), lambda xs: run(*xs), target, path.name)
    options = {"runtime": "litert", "target": target.name, "variant": "dense" if dense else "sparse",
               "lowering": lowering, "dtype": target.dtype, "default_delegates": default_delegates,
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
                dense: bool = False, samples: list | None = None) -> ExportRecord:
    """Writes a verified ``.onnx`` for ``target`` (arguments as for ``export_tflite``).

    Raises:
        ExportError: the file would disagree with ONNX Runtime's reference, or (without
            ``allow_dense``) the model holds no weight with the target's block structure.
    """
    target, path, structure, sparse_layers = _prepare(model, target, path, plan, allow_dense, dense)
    lowering = "dense" if dense else target.lowering.onnx
    warnings, layers = [], []
    source, done = model, set()
    if lowering == "gather-matmul":
        pins = {s["name"]: tuple(s["block_shape"]) for s in sparse_layers}
        source, lowered = lower(model, target, "onnx", block_shapes=pins)
        done = {lw.name for lw in lowered}
    proto = _convert_onnx(source, target.runtime.onnx_opset)
    moved = set() if dense else set(_sparsify_initializers(proto))
    for s in structure:
        if s["layer"] in done:
            fmt = "gather-matmul"
        elif s["block_shape"] and moved:
            fmt = "sparse-initializer"
        else:
            fmt = "dense"
        if s["block_shape"] and fmt != "gather-matmul" and lowering == "gather-matmul":
            warnings.append(f"Layer '{s['layer']}' has no gather-matmul form here; it runs dense")
        layers.append(_layer_entry(s, fmt))
    data = proto.SerializeToString()
    run = ONNXRUNTIME.runner(data)
    err, rel = _verify(model, samples or sample_inputs(model), lambda xs: run(*xs), target, path.name)
    options = {"runtime": "onnxruntime", "target": target.name, "variant": "dense" if dense else "sparse",
               "lowering": lowering, "opset": target.runtime.onnx_opset, "providers": ["CPUExecutionProvider"],
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
    for fmt in formats:
        records.append(writers[fmt](model, target, out / f"{model.name}.{fmt}", plan, allow_dense, samples=samples))
    if dense_baseline:
        for fmt in formats:
            records.append(writers[fmt](model, target, out / f"{model.name}.dense.{fmt}", plan, allow_dense,
                                        dense=True, samples=samples))
    # The Keras model travels with its exports, so `blockprune bench` can check outputs later.
    from .pruning.api import save_model_atomic

    save_model_atomic(model, out / f"{model.name}.keras")
    descriptor = target.to_dict()
    descriptor.pop("source", None)
    with atomic_path(out / "export.json") as tmp:
        tmp.write_text(json.dumps({"target": target.name, "target_descriptor": descriptor, "model": model.name,
                                   "records": [r.to_dict() for r in records]}, indent=2) + "\n")
    return records

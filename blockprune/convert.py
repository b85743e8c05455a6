"""Converters: a Keras model, lowered for a target, to the bytes of a ``.tflite`` or ``.onnx`` file
(TensorFlow, tf2onnx and ONNX are imported only when a converter runs). The exporter and the
lowering selection's probes both build files here."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._quiet import captured_stderr
from .backends import require_tensorflow

__all__ = ["ConversionError", "to_tflite", "to_onnx", "fixed_batch", "sparsify_initializers", "build_file", "Built", "OUTPUTS"]


def to_tflite(model, optimizations=(), fixed: int | None = None, quantization=None) -> bytes:
    """``TFLiteConverter.from_keras_model`` with ``optimizations`` (``tf.lite.Optimize`` members),
    at the static batch size ``fixed`` when given (a model with a recurrent loop needs one:
    ``fixed_batch``), quantized as ``quantization`` (a ``blockprune.quantize.Quantization``) says."""
    require_tensorflow("Converting to .tflite")
    import tensorflow as tf

    if fixed:
        from .kerasgraph import with_fixed_batch

        model = with_fixed_batch(model, fixed)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = list(optimizations)
    if quantization is not None:
        from .quantize import tflite_settings

        tflite_settings(converter, quantization, model)
    # Keras prints the exported signature; the converter reports a failure at length on fd 2,
    # and warns, when quantizing, about input statistics a float-input file does not need
    with contextlib.redirect_stdout(io.StringIO()), captured_stderr(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


class ConversionError(ValueError):
    """A converter refused a model: one line naming the file format, the model, the layer and
    the target (the converter's own text stays in the exception's cause)."""


def _layer_of(text: str, model) -> str | None:
    """The first layer of ``model`` named in a converter's op path (``model_1/layer_2/Op``)."""
    from .kerasgraph import sublayers

    names = {layer.name for layer in sublayers(model, recursive=True)}
    for path in re.findall(r"[\w.-]+(?:/[\w.-]+)+", text):
        for part in path.split("/")[1:]:
            for name in (part, re.sub(r"_\d+$", "", part)):
                if name in names:
                    return name
    return None


def conversion_error(fmt: str, model, target, error: Exception | str, ops=()) -> ConversionError:
    """The one-line ``ConversionError`` for ``error`` raised (or ``ops`` left unsupported) by the
    ``fmt`` converter on ``model`` for ``target``."""
    text = str(error)
    ops = list(ops) or list(dict.fromkeys(re.findall(r"'tf\.(\w+)' op", text)))
    layer = _layer_of(text, model)
    where = f" at layer '{layer}'" if layer else ""
    if ops:
        what = f"op {', '.join(ops)} has no {'TFLite builtin' if fmt == 'tflite' else 'ONNX'} equivalent"
    else:
        lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()] or text.strip().splitlines() or [""]
        what = re.sub(r"loc\(.*?\)\)*:\s*", "", lines[0])[:300] or type(error).__name__
    return ConversionError(f"cannot convert model '{model.name}' to .{fmt} for target '{target}'{where}: {what}")


def fixed_batch(model, fmt: str, batch: int) -> int | None:
    """The batch size a ``fmt`` file of ``model`` converted for ``batch`` is fixed to, or None when
    it runs at any batch. Keras 3 recurrent layers reach TFLite as a ``WHILE`` loop over tensor
    lists, which the converter lowers only for a static batch; the file then cannot be resized
    (XNNPACK refuses). Unrolling instead ran 2.7-3x slower (an LSTM of 512 over 32 steps)."""
    from .kerasgraph import recurrent_loops

    return batch if fmt == "tflite" and recurrent_loops(model) else None


def to_onnx(model, opset: int):
    """tf2onnx through a ``tf.function`` of the model (its ``from_keras`` fails on Sequential models)."""
    require_tensorflow("Converting to .onnx")
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec(t.shape, t.dtype, name=f"input_{i}") for i, t in enumerate(model.inputs)]
    fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0]))
    with contextlib.redirect_stdout(io.StringIO()), captured_stderr():  # tf2onnx logs each op it cannot convert
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset,
                                                 custom_op_handlers={"Erfc": (_erfc, [])})
    return proto


def _erfc(ctx, node, name, args):
    """TensorFlow's ``Erfc`` (its exact gelu uses it since TF 2.16; tf2onnx has no handler and
    ONNX no op) as ``1 - Erf(x)``."""
    from tf2onnx import utils

    x = node.input[0]
    erf = ctx.make_node("Erf", [x], op_name_scope=name)
    one = ctx.make_const(utils.make_name(f"{name}_one"),
                         np.array(1, dtype=utils.map_onnx_to_numpy_type(ctx.get_dtype(x))))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def _unsupported_nodes(proto) -> list:
    """Nodes of the ONNX standard domains that ONNX does not define."""
    from onnx import defs

    return [n for n in proto.graph.node if n.domain in ("", "ai.onnx") and not defs.has(n.op_type)]


def sparsify_initializers(proto, min_elements: int = 1024) -> list[str]:
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


def gathers_as_gather_elements(proto, min_indices: int = 16) -> int:
    """Rewrites each Gather along the last axis of a float tensor, with constant indices, as
    Expand + GatherElements; returns how many it rewrote.

    ONNX Runtime's Gather copies one slice per index: along the last axis that is one float per
    index, about 8 ns each here, while GatherElements copies about 0.5 ns per element. The
    indices are expanded to the data's leading dimensions at run time (the batch is dynamic).
    Measured on the MLP 2048 at 90%, batch-major gather-matmul in ONNX Runtime: 120 -> 75 us at
    batch 1, 641 -> 276 us at batch 8 (1 thread). OpenVINO's Gather is not slower, so its file
    keeps the Gather. Rank-2 data takes indices of any shape; higher ranks 1-D indices.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    constants = {i.name: i for i in proto.graph.initializer}
    nodes, added, count = [], [], 0
    for node in proto.graph.node:
        data = types.get(node.input[0]) if node.op_type == "Gather" else None
        indices = numpy_helper.to_array(constants[node.input[1]]) if data is not None and node.input[1] in constants else None
        rank = len(data.shape.dim) if data is not None else 0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (indices is None or data.elem_type != TensorProto.FLOAT or rank < 2 or axis % rank != rank - 1
                or indices.size < min_indices or (rank > 2 and indices.ndim != 1)):
            nodes.append(node)
            continue
        p = f"{node.name or node.output[0]}/elements"
        added += [numpy_helper.from_array(indices.reshape((1,) * (rank - 1) + (-1,)).astype(np.int64), f"{p}/indices"),
                  numpy_helper.from_array(np.array([indices.size], np.int64), f"{p}/count")]
        flat = node.output[0] if indices.ndim == 1 else f"{p}/flat"
        nodes += [helper.make_node("Shape", [node.input[0]], [f"{p}/lead"], start=0, end=rank - 1, name=f"{p}/shape"),
                  helper.make_node("Concat", [f"{p}/lead", f"{p}/count"], [f"{p}/to"], axis=0, name=f"{p}/concat"),
                  helper.make_node("Expand", [f"{p}/indices", f"{p}/to"], [f"{p}/expanded"], name=f"{p}/expand"),
                  helper.make_node("GatherElements", [node.input[0], f"{p}/expanded"], [flat], axis=rank - 1,
                                   name=f"{p}/gather")]
        if indices.ndim != 1:  # rank 2: [rows, count] -> [rows, *indices.shape]
            added.append(numpy_helper.from_array(np.array([-1, *indices.shape], np.int64), f"{p}/shape_out"))
            nodes.append(helper.make_node("Reshape", [flat, f"{p}/shape_out"], [node.output[0]], name=f"{p}/reshape"))
        count += 1
    if count:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        proto.graph.initializer.extend(added)
    return count


#: What each export output writes: ``(file format, runtime that selects, verifies and runs it)``.
OUTPUTS = {"tflite": ("tflite", "litert"), "onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}


@dataclass
class Built:
    """One converted file, in memory.

    Attributes:
        data: the file's bytes.
        formats: ``{weight: how the file runs it}`` (``gather-matmul``, ``channel-gather``,
            ``builtin-sparse``, ``densify``, ``sparse-initializer``, ``dense``, ...).
        options: the run options to record beside it (``<file>.runtime.json``).
        lowering: the target's lowering for this format (``dense`` for a baseline).
        narrowed: ``{weight: Narrowed}`` for dense layers computing only the outputs a lowered
            layer reads (``blockprune.lower.narrow``).
    """

    data: bytes
    formats: dict
    options: dict
    lowering: str
    narrowed: dict = field(default_factory=dict)


def build_file(model, target, output: str, structure, choices=None, dense: bool = False, fuse: bool = True,
               batch: int = 1, quantization=None) -> Built:
    """Converts ``model`` for ``target`` into the file of export output ``output`` (see ``OUTPUTS``).

    Args:
        model: a stripped Keras model.
        target: a ``TargetDescriptor``.
        output: ``tflite``, ``onnx`` or ``openvino``.
        structure: the model's ``ModelStructure``.
        choices: ``{weight: (lowering, variant)}`` for the rewriting lowerings; default: the
            target's lowering for the format wherever it applies. Ignored for a target whose
            lowering is carried out by the converter (builtin-sparse) or is ``dense``.
        dense: the dense baseline (no sparse encoding, no rewrite).
        fuse: let ``lower`` fuse attention layers whose projections are all feature-major.
        batch: the deployment batch; a ``.tflite`` of a model with a recurrent loop runs only at
            it (``options["fixed_batch"]``).
        quantization: a ``blockprune.quantize.Quantization`` (default: float32, or dynamic-range
            int8 for a target whose dtype is int8); the dense baseline is quantized the same way.
    """
    from .lower import lower, lowering
    from .lower.narrow import narrow
    from .quantize import for_target

    quantization = for_target(quantization, target)

    fmt, runtime = OUTPUTS[output]
    entry = lowering("dense" if dense else getattr(target.lowering, fmt))
    source, lowered, narrowed = model, {}, {}
    if entry.rewrites:
        source, rewritten = lower(model, target, fmt, structure=structure, choices=choices, fuse=fuse)
        lowered = {lw.weight_name: lw.format for lw in rewritten}
        source, cut = narrow(source)
        narrowed = {f"{n.name}/kernel": n for n in cut}
    options = {"runtime": runtime, "target": target.name, "variant": "dense" if dense else "sparse",
               "lowering": entry.name, "dtype": target.dtype, "quantize": quantization.mode}
    if fmt == "tflite":
        optimizations = entry.converter_optimizations()
        fixed = fixed_batch(source, fmt, batch)
        try:
            data = to_tflite(source, optimizations, fixed, quantization)
        except Exception as e:  # noqa: BLE001 - the converter raises its own types; the user needs one line
            raise conversion_error(fmt, model, target.name, e) from e
        if fixed:
            options["fixed_batch"] = fixed
        # The delegate trap is specific to sparse int8 kernels; the dense baseline runs at its best.
        delegates = True if dense else target.runtime.tflite_default_delegates
        options.update(default_delegates=delegates,
                       op_resolver_type="AUTO" if delegates else "BUILTIN_WITHOUT_DEFAULT_DELEGATES")
        return Built(data, entry.file_formats(data, structure, lowered), options, entry.name, narrowed)
    try:
        proto = to_onnx(source, target.runtime.onnx_opset)
    except Exception as e:  # noqa: BLE001 - tf2onnx raises its own types; the user needs one line
        raise conversion_error(fmt, model, target.name, e) from e
    unknown = _unsupported_nodes(proto)
    if unknown:  # tf2onnx logs an op it cannot convert and leaves it in the graph
        raise conversion_error(fmt, model, target.name, " ".join(n.name for n in unknown),
                               ops=dict.fromkeys(n.op_type for n in unknown))
    if runtime == "onnxruntime":
        gathers_as_gather_elements(proto)
    if quantization.mode != "none":
        from .quantize import quantize_onnx

        try:
            proto = quantize_onnx(proto, quantization, source)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's quantizer raises its own types
            raise conversion_error(fmt, model, target.name, f"{quantization.mode} quantization failed: {e}") from e
    # Mostly-zero weights that run dense are stored sparse for ONNX Runtime (a size win only).
    # (Quantized weights are not: ONNX Runtime densifies them at load, and they are small already.)
    moved = (set() if dense or runtime != "onnxruntime" or quantization.mode != "none"
             else set(sparsify_initializers(proto)))
    formats = entry.file_formats(b"", structure, lowered)
    if moved:
        formats = {n: "sparse-initializer" if f == "dense" and structure.get(n).blocked else f for n, f in formats.items()}
    options.update(opset=target.runtime.onnx_opset, sparse_initializers=sorted(moved))
    if runtime == "onnxruntime":
        options["providers"] = ["CPUExecutionProvider"]
    return Built(proto.SerializeToString(), formats, options, entry.name, narrowed)

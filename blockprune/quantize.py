"""Quantized exports: the same sparse file (and its dense baseline) with float16, dynamic-range
int8 or full-integer int8 weights, so that a speedup compares like with like.

Modes (``QUANTIZE_MODES``):

- ``none``: float32 (a target whose ``dtype`` is ``int8`` still gets ``dynamic``).
- ``float16``: float16 weights; LiteRT computes in float32 (it dequantizes once at load);
  ONNX Runtime gets a float16 graph with float32 inputs and outputs.
- ``dynamic``: int8 weights, activations quantized on the fly (LiteRT's dynamic range
  quantization; ONNX Runtime's ``quantize_dynamic``).
- ``int8``: int8 weights and activations, with ranges calibrated on a representative dataset
  (LiteRT's full-integer quantization with float inputs and outputs; ONNX Runtime's static QDQ).

A file is verified against Keras with the tolerance of its mode (``TOLERANCE``: the largest
difference relative to the largest reference output).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["QUANTIZE_MODES", "TOLERANCE", "Quantization", "for_target", "calibration_samples", "quantize_onnx",
           "tflite_settings"]

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
#: Largest relative error a file of each mode may have against Keras (measured on the example
#: models: float16 ~1e-3, dynamic ~1e-2, int8 2-5e-2).
TOLERANCE = {"none": 1e-3, "float16": 1e-2, "dynamic": 0.05, "int8": 0.1}
#: Samples a full-integer file is calibrated on (at most).
CALIBRATION_SAMPLES = 256


@dataclass(frozen=True)
class Quantization:
    """How an export quantizes its files.

    Attributes:
        mode: one of ``QUANTIZE_MODES``.
        calibration: for ``int8``, the representative inputs (one array per model input, samples
            on the first axis); None calibrates on random normal inputs, which only timing
            probes should do.
    """

    mode: str = "none"
    calibration: tuple | None = None

    def __post_init__(self):
        if self.mode not in QUANTIZE_MODES:
            raise ValueError(f"quantize={self.mode!r} is not one of: {', '.join(QUANTIZE_MODES)}")

    @property
    def label(self) -> str:
        return "float32" if self.mode == "none" else self.mode

    def tolerance(self) -> float:
        return TOLERANCE[self.mode]

    def samples(self, model) -> list[np.ndarray]:
        """The calibration inputs: the given ones, or random normal ones shaped for ``model``."""
        if self.calibration is not None:
            return [np.asarray(a) for a in self.calibration]
        from .runtimes import sample_inputs

        return sample_inputs(model, 32, seed=3)


def for_target(quantize, target) -> Quantization:
    """The ``Quantization`` a file for ``target`` gets from ``quantize`` (a mode name, a
    ``Quantization`` or None for float32): an int8 target's weights are at least dynamic-range."""
    if not isinstance(quantize, Quantization):
        quantize = Quantization(quantize or "none")
    if quantize.mode in ("none", "float16") and target.dtype == "int8":
        return Quantization("dynamic", quantize.calibration)
    return quantize


def calibration_samples(model, data, target_name: str, limit: int = CALIBRATION_SAMPLES) -> tuple:
    """Representative inputs for full-integer quantization of ``model``: the first ``limit``
    training samples of ``data`` (a ``blockprune.data.Dataset``).

    Raises:
        ValueError: the data's samples do not fit the model's input (names both shapes, the
            model and the target).
    """
    inputs = model.inputs
    if len(inputs) != 1:
        raise ValueError(f"--quantize int8 calibrates on one input array, but model '{model.name}' has "
                         f"{len(inputs)} inputs (exporting for target '{target_name}')")
    x = np.asarray(data.x_train[:limit], dtype="float32")
    want = tuple(inputs[0].shape[1:])
    if x.shape[1:] != want:
        raise ValueError(f"--quantize int8 needs representative data shaped like the input of model "
                         f"'{model.name}' {(None, *want)}, but {data.name} has samples of shape {x.shape[1:]} "
                         f"(exporting for target '{target_name}'); give --data with samples of that shape")
    return (x,)


def tflite_settings(converter, quantization: Quantization, model) -> None:
    """Sets ``converter`` (a ``tf.lite.TFLiteConverter``) up for ``quantization``; the file keeps
    float32 inputs and outputs."""
    import tensorflow as tf

    mode = quantization.mode
    if mode == "none":
        return
    optimizations = set(converter.optimizations) | {tf.lite.Optimize.DEFAULT}
    converter.optimizations = list(optimizations)
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        samples = quantization.samples(model)

        def representative():
            for i in range(len(samples[0])):
                yield [s[i:i + 1].astype("float32") for s in samples]

        converter.representative_dataset = representative
        # Integer kernels where LiteRT has them, float where it has not (the file still runs).
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer warns through the root logger on every call ("consider
    pre-processing"); blockprune's users cannot act on it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx(proto, quantization: Quantization, model):
    """``proto`` (an ONNX ``ModelProto``) quantized with ONNX Runtime's tools; inputs and
    outputs stay float32."""
    mode = quantization.mode
    if mode == "none":
        return proto
    if mode == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True)
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from ._quiet import captured_stderr

    with tempfile.TemporaryDirectory(prefix="blockprune-quant-") as tmp, _quiet_root_logger():
        out = Path(tmp) / "quantized.onnx"
        with captured_stderr():  # the quantizer logs every node it leaves in float
            if mode == "dynamic":
                # 7-bit weights: without VNNI, ONNX Runtime's u8s8 kernels add pairs of products in
                # saturating int16 (vpmaddubsw); full 8-bit weights overflowed there (relative error
                # 0.19 on the MLP 2048, 0.02 with reduce_range, at the same speed).
                quantize_dynamic(proto, out, weight_type=QuantType.QInt8, reduce_range=True)
            else:
                names = [i.name for i in proto.graph.input]
                samples = quantization.samples(model)

                class Reader(CalibrationDataReader):
                    def __init__(self):
                        self.rows = iter(range(len(samples[0])))

                    def get_next(self):
                        i = next(self.rows, None)
                        return None if i is None else {n: s[i:i + 1].astype("float32") for n, s in zip(names, samples)}

                # Per-tensor weights: ONNX Runtime's QLinearMatMul refuses per-column zero points;
                # 7-bit weights for the same saturation as above.
                quantize_static(proto, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                                weight_type=QuantType.QInt8, per_channel=False, reduce_range=True)
        return onnx.load(out)

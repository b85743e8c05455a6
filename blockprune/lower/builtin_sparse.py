"""The builtin-sparse lowering: TFLite's own block encoding, consumed by ``FULLY_CONNECTED``.

Nothing is rewritten: the converter (``Optimize.EXPERIMENTAL_SPARSITY``) encodes a Dense
kernel whose zeros come in TFLite's "1x4" blocks (``(4, 1)`` in the ``[in, out]`` convention;
"1x16", ``(16, 1)``, for dynamic-range int8) and LiteRT's builtin kernel skips the zero blocks.
Any other pattern is stored as CSR behind a ``DENSIFY`` op and runs at dense speed, so the
written flatbuffer is read back to see what the converter really did.
"""

from __future__ import annotations

import re

from ..runtimes import RUNTIMES
from .base import Lowering

__all__ = ["BuiltinSparse", "fully_connected_weights", "match_fully_connected"]


def fully_connected_weights(model_content: bytes) -> list[dict]:
    """For every FULLY_CONNECTED op: its weight tensor's name, [out, in] shape and encoding."""
    ops, tensors = RUNTIMES["litert"].ops(model_content)
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


def match_fully_connected(layer: str, view_shape, fcs: list[dict]) -> dict | None:
    """The FULLY_CONNECTED of ``layer``: the only one of its shape, or else the only one of its
    shape whose weight tensor carries the layer's name; None when that is ambiguous (the record
    then says ``dense`` rather than credit another layer's encoding)."""
    shape = (view_shape[1], view_shape[0])
    same = [f for f in fcs if f["shape"] == shape]
    if len(same) <= 1:
        return same[0] if same else None
    leaf = re.escape(layer.split("/")[-1])
    named = [f for f in same if re.search(rf"(^|/){leaf}(_\d+)?/", f["tensor"])]
    return named[0] if len(named) == 1 else None


class BuiltinSparse(Lowering):
    """Dense layers in TFLite's block encoding (no rewrite; the converter does it)."""

    name = "builtin-sparse"
    # A custom layer's matmul may convert to FULLY_CONNECTED too; the converter decides.
    kinds = ("dense", "custom")
    formats = ("tflite",)
    balanced = False
    rewrites = False
    summary = "TFLite's EXPERIMENTAL_SPARSITY block encoding read by FULLY_CONNECTED (Dense)"

    def converter_optimizations(self) -> list:
        import tensorflow as tf

        return [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]

    def file_formats(self, model_bytes: bytes, structure, lowered: dict[str, str]) -> dict[str, str]:
        return read_fully_connected_formats(model_bytes, structure)

    def warning(self, ws, fmt: str) -> str:
        return (f"Layer '{ws.layer}' is {ws.sparsity:.0%} sparse in blocks {tuple(ws.block_shape)} "
                f"but TFLite stores it {'behind a DENSIFY op' if fmt == 'densify' else fmt}: dense speed")


def read_fully_connected_formats(model_bytes: bytes, structure) -> dict[str, str]:
    """``{weight: encoding}`` of each Dense weight's FULLY_CONNECTED in a flatbuffer
    (``builtin-sparse``, ``densify``, ``csr`` or ``dense``); other kinds are ``dense``."""
    fcs = fully_connected_weights(model_bytes)
    out = {}
    for ws in structure:
        fc = match_fully_connected(ws.layer, ws.view_shape, fcs) if ws.kind == "dense" else None
        out[ws.name] = fc["encoding"] if fc else "dense"
        if fc is not None:
            fcs = [f for f in fcs if f is not fc]  # each FULLY_CONNECTED is one layer's
    return out

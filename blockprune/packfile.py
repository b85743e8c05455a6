"""A packed-weights file for a whole model: safetensors arrays plus JSON metadata.

Each matrix-like weight is stored in the format its block structure suits: ``blocked-ell``
(balanced targets), ``bsr`` (others) or ``dense`` (no whole zero block). Per layer the
metadata records the name, the kernel shape and its ``[in, out]`` view, the block shape, the
format, the dtype, the array names and a SHA-256 checksum of those facts and the arrays.
Loading checks the checksums, so a truncated, corrupted or edited file is an error, never
wrongly arranged weights.

safetensors is the container because it is a plain, documented, zero-copy format with a JSON
header that any language can read. This module does not import TensorFlow.

Example:
    >>> layers = pack_arrays({"d/kernel": w}, block_shapes=[(4, 1)], balanced=False)  # doctest: +SKIP
    >>> save_packed("w.safetensors", layers)                                            # doctest: +SKIP
    >>> load_packed("w.safetensors")[0].kernel()                                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from ._text import text_table
from .formats import FORMATS, BlockedELL, BSR
from .structure import ModelStructure, WeightStructure, read_structure
from .views import WeightView

__all__ = ["PackedLayer", "pack_arrays", "pack_model", "save_packed", "load_packed", "PackFileError",
           "inspect_table"]

FILE_FORMAT = "blockprune-packed"
FILE_VERSION = 2  # 2: the checksum covers each layer's header facts too


class PackFileError(ValueError):
    """A packed-weights file that cannot be read or fails its checksums."""


@dataclass(frozen=True, eq=False)
class PackedLayer:
    """One packed weight.

    Attributes:
        name: ``layer/weight``, as in a plan.
        view: the kernel's ``[in, out]`` view (kernel shape and axis order).
        format: ``blocked-ell``, ``bsr`` or ``dense``.
        matrix: the ``BlockedELL`` / ``BSR`` object, or the dense ``[in, out]`` array.
    """

    name: str
    view: WeightView
    format: str
    matrix: object

    @property
    def block_shape(self) -> tuple[int, int] | None:
        return None if self.format == "dense" else self.matrix.block_shape

    @property
    def dtype(self) -> np.dtype:
        return self.matrix.dtype if self.format == "dense" else self.matrix.data.dtype

    def arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.matrix} if self.format == "dense" else self.matrix.arrays()

    def to_2d(self) -> np.ndarray:
        return self.matrix if self.format == "dense" else self.matrix.to_dense()

    def kernel(self) -> np.ndarray:
        """The weight in the shape Keras stores it."""
        return self.view.from_2d(self.to_2d())

    @property
    def nbytes(self) -> dict[str, int]:
        if self.format == "dense":
            return {"values": int(self.matrix.nbytes), "indices": 0}
        return self.matrix.nbytes

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights in the dense view."""
        w = self.to_2d()
        return float(np.mean(w == 0)) if w.size else 0.0

    def checksum(self) -> str:
        """SHA-256 over the layer's header facts (name, kernel shape, view, format, block shape)
        and its arrays: an edited header fails it as a corrupted array does."""
        h = hashlib.sha256()
        v = self.view
        h.update(f"{self.name}|{list(v.kernel_shape)}|{list(v.perm)}|{v.n_in_axes}|{self.format}|"
                 f"{list(self.block_shape) if self.block_shape else None};".encode())
        for key, arr in sorted(self.arrays().items()):
            arr = np.ascontiguousarray(arr)
            h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


def _pack_one(name: str, view: WeightView, ws: WeightStructure, balanced: bool) -> PackedLayer:
    if not ws.blocked:
        return PackedLayer(name, view, "dense", np.ascontiguousarray(ws.matrix))
    cls = BlockedELL if balanced else BSR
    return PackedLayer(name, view, cls.format_name, cls.from_dense(ws.matrix, ws.block_shape))


def pack_arrays(kernels: dict[str, np.ndarray], block_shapes, balanced: bool,
                views: dict[str, WeightView] | None = None) -> list[PackedLayer]:
    """Packs named kernels, reading each one's block structure from its zeros.

    Args:
        kernels: ``{"layer/weight": kernel}``.
        block_shapes: candidate block shapes (a target's ``block_shapes``).
        balanced: pack block-sparse weights as blocked-ELL (else BSR).
        views: the ``[in, out]`` view of each kernel; default: all axes but the last by the last.

    Returns:
        One ``PackedLayer`` per kernel, in order.
    """
    views = views or {}
    out = []
    for name, kernel in kernels.items():
        view = views.get(name) or WeightView.for_matrix_like(np.shape(kernel))
        out.append(_pack_one(name, view, WeightStructure.measure(None, view.to_2d(np.asarray(kernel)), block_shapes,
                                                                 view), balanced))
    return out


def pack_model(model, target, structure: ModelStructure | None = None) -> list[PackedLayer]:
    """Packs every weight of ``model`` that the target can prune (as ``blockprune.plan`` would).

    Args:
        model: a stripped Keras model.
        target: a target name, path or descriptor.
        structure: the model's block structure when the caller has read it already
            (``blockprune.structure.read_structure``); default: read here.
    """
    from .targets import load_target

    target = load_target(target)
    structure = structure if structure is not None else read_structure(model, target)
    return [_pack_one(ws.name, ws.view, ws, target.balanced) for ws in structure]


def save_packed(path: str | os.PathLike, layers: list[PackedLayer], metadata: dict | None = None) -> Path:
    """Writes packed layers to a safetensors file atomically.

    Args:
        path: the file to write (conventionally ``.safetensors``).
        layers: from ``pack_model`` or ``pack_arrays``.
        metadata: extra JSON-serializable facts to keep (e.g. the target's name).

    Returns:
        The path written.
    """
    from safetensors.numpy import save_file

    tensors, entries = {}, []
    for layer in layers:
        arrays = layer.arrays()
        for key, arr in arrays.items():
            tensors[f"{layer.name}::{key}"] = np.ascontiguousarray(arr)
        entries.append({
            "name": layer.name, "kernel_shape": list(layer.view.kernel_shape), "view_perm": list(layer.view.perm),
            "view_in_axes": layer.view.n_in_axes, "view_shape": list(layer.view.view_shape),
            "block_shape": list(layer.block_shape) if layer.block_shape else None, "format": layer.format,
            "dtype": str(layer.dtype), "arrays": sorted(arrays), "sha256": layer.checksum(),
        })
    header = {"format": FILE_FORMAT, "version": FILE_VERSION, "layers": entries, **(metadata or {})}
    with atomic_path(path, suffix=".tmp.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"blockprune": json.dumps(header)})
    return Path(path)


def load_packed(path: str | os.PathLike) -> tuple[list[PackedLayer], dict]:
    """Reads a packed-weights file and checks every layer's checksum.

    Returns:
        ``(layers, header)``: the packed layers and the JSON metadata.

    Raises:
        PackFileError: missing, truncated, corrupted or not a blockprune file.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PackFileError(f"{path}: no such packed-weights file")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PackFileError(f"{path}: not a readable safetensors file (truncated or corrupted?): {e}") from None
    try:
        header = json.loads(meta["blockprune"])
        if header.get("format") != FILE_FORMAT:
            raise KeyError("format")
    except (KeyError, json.JSONDecodeError):
        raise PackFileError(f"{path}: not a blockprune packed-weights file (no blockprune metadata)") from None
    if header.get("version") != FILE_VERSION:
        raise PackFileError(f"{path}: packed-weights version {header.get('version')!r} is not supported (this "
                            f"blockprune reads version {FILE_VERSION}; pack the model again)")
    layers = []
    for entry in header["layers"]:
        name = entry["name"]
        try:
            arrays = {key: tensors[f"{name}::{key}"] for key in entry["arrays"]}
        except KeyError as e:
            raise PackFileError(f"{path}: layer '{name}' is missing array {e}") from None
        view = WeightView(tuple(entry["kernel_shape"]), tuple(entry["view_perm"]), int(entry["view_in_axes"]))
        fmt = entry["format"]
        if fmt == "dense":
            matrix = arrays["values"]
        elif fmt in FORMATS:
            try:
                matrix = FORMATS[fmt].from_arrays(entry["view_shape"], arrays)
            except (KeyError, ValueError, TypeError) as e:
                raise PackFileError(f"{path}: layer '{name}' does not hold the arrays of format {fmt!r} ({e}): the "
                                    "file is corrupted") from None
        else:
            raise PackFileError(f"{path}: layer '{name}' has unknown format {fmt!r}")
        layer = PackedLayer(name, view, fmt, matrix)
        if layer.checksum() != entry["sha256"]:
            raise PackFileError(f"{path}: layer '{name}' fails its checksum: the file is corrupted")
        try:
            if fmt != "dense":
                matrix.validate(full=True)
        except ValueError as e:
            raise PackFileError(f"{path}: layer '{name}': {e}") from None
        layers.append(layer)
    return layers, header


def inspect_table(layers: list[PackedLayer]) -> str:
    """Per-layer table: format, block, sparsity, bytes dense vs packed, index overhead."""
    rows = [("layer/weight", "format", "block", "view [in,out]", "sparsity", "dense bytes", "packed bytes",
             "index bytes", "index overhead", "packed/dense")]
    total_dense = total_packed = 0
    for layer in layers:
        dense = int(math.prod(layer.view.view_shape) * np.dtype(layer.dtype).itemsize)
        nb = layer.nbytes
        packed = nb["values"] + nb["indices"]
        total_dense += dense
        total_packed += packed
        block = f"({layer.block_shape[0]}, {layer.block_shape[1]})" if layer.block_shape else "-"
        rows.append((layer.name, layer.format, block, "x".join(map(str, layer.view.view_shape)),
                     f"{layer.sparsity:.1%}", f"{dense:,}", f"{packed:,}", f"{nb['indices']:,}",
                     f"{nb['indices'] / packed:.1%}" if packed else "-", f"{packed / dense:.3f}" if dense else "-"))
    rows.append(("total", "", "", "", "", f"{total_dense:,}", f"{total_packed:,}", "", "",
                 f"{total_packed / total_dense:.3f}" if total_dense else "-"))
    return text_table(rows)

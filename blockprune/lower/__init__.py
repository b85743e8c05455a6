"""Lowerings: how a pruned layer becomes something a runtime executes faster.

The catalogue ``LOWERINGS`` maps each lowering's name (as target descriptors write it) to an
entry that declares the layer kinds, block shapes and file formats it handles and how it
rewrites a layer (see ``base.Lowering``):

- ``gather-matmul`` (``gather_matmul.GatherMatmul``): Dense and 1x1 convolutions with
  balanced blocks become ``BlockSparseDense`` (Gather -> BatchMatMul -> Reshape).
- ``builtin-sparse`` (``builtin_sparse.BuiltinSparse``): no rewrite; the TFLite converter
  encodes (4, 1) / (16, 1) blocks that ``FULLY_CONNECTED`` reads.
- ``dense``: nothing runs sparse (the baseline, and runtimes a target cannot speed up).

``lower(model, target, runtime, structure)`` applies a target's lowering for one runtime and
reports which layers it rewrote.
"""

from __future__ import annotations

from .base import LoweredLayer, Lowering
from .builtin_sparse import BuiltinSparse
from .gather_matmul import GatherMatmul

__all__ = ["BlockSparseDense", "Lowering", "LoweredLayer", "LOWERINGS", "lowering", "lower", "runs_sparse"]


class Dense(Lowering):
    """Nothing is rewritten and nothing runs sparse."""

    name = "dense"
    formats = ("tflite", "onnx")
    rewrites = False
    summary = "dense weights (the baseline; size savings only)"

    def handles(self, ws) -> bool:
        return False


#: Every lowering, by the name target descriptors use.
LOWERINGS: dict[str, Lowering] = {entry.name: entry for entry in (GatherMatmul(), BuiltinSparse(), Dense())}


def __getattr__(name):
    # The Keras layers load with Keras, only when asked for: the catalogue itself is TF-free.
    if name == "BlockSparseDense":
        from .layers import BlockSparseDense

        return BlockSparseDense
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def lowering(name: str) -> Lowering:
    """The catalogue entry named ``name``."""
    try:
        return LOWERINGS[name]
    except KeyError:
        raise ValueError(f"unknown lowering {name!r} (known: {', '.join(LOWERINGS)})") from None


def runs_sparse(target, kind: str, runtime: str) -> bool:
    """Whether a pruned weight of layer ``kind`` runs sparse (faster) after export for ``runtime``.

    An emulated target (``native = false``) is described by its cost model, so every eligible
    kind counts. On this machine's runtimes, a weight runs sparse when the target's lowering for
    ``runtime`` rewrites its kind (other kinds are exported dense: pruning them saves size, not
    time).

    Example:
        >>> from blockprune.targets import load_target
        >>> runs_sparse(load_target("cpu-wide"), "einsum_dense", "tflite")
        False
    """
    if not target.native:
        return True
    return kind in lowering(getattr(target.lowering, runtime)).kinds


def lower(model, target, runtime: str = "tflite", structure=None, block_shapes=None):
    """Rewrites the layers a target's lowering for ``runtime`` handles; others stay as they are.

    Args:
        model: a stripped Sequential or functional model.
        target: target name, path or descriptor.
        runtime: the file format, ``"tflite"`` or ``"onnx"``.
        structure: the model's ``ModelStructure`` (``blockprune.structure.read_structure``);
            default: read here.
        block_shapes: ``{"layer/weight": (rows, cols)}`` to pin block shapes when reading the
            structure here (from a plan).

    Returns:
        ``(lowered_model, [LoweredLayer, ...])``: a new model (a copy when nothing is rewritten).
    """
    from ..kerasgraph import copy_model, rewrap
    from ..structure import read_structure
    from ..targets import load_target

    target = load_target(target)
    if runtime not in ("tflite", "onnx"):
        raise ValueError(f"runtime={runtime!r} must be 'tflite' or 'onnx'")
    entry = lowering(getattr(target.lowering, runtime))
    copy = copy_model(model)
    if structure is None:
        structure = read_structure(model, target, block_shapes=block_shapes)
    chosen = {ws.layer: ws for ws in structure if ws.site.weight == "kernel" and entry.handles(ws)}
    lowered: list[LoweredLayer] = []

    def swap(layer, path):
        ws = chosen.get(path)
        if ws is None or entry.why_not(layer) is not None:
            return layer
        new = entry.rewrite(layer, ws)
        if new is None:
            return layer
        lowered.append(LoweredLayer(path, ws.kind, ws.block_shape, ws.block_sparsity, ws.kept_per_block_column[1],
                                    entry.name))
        return new

    return rewrap(copy, swap), lowered


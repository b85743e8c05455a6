"""Lowerings: how a pruned layer becomes something a runtime executes faster.

The catalogue ``LOWERINGS`` maps each lowering's name (as target descriptors write it) to an
entry that declares the layer kinds, block shapes and file formats it handles and how it
rewrites a layer (see ``base.Lowering``):

- ``gather-matmul`` (``gather_matmul.GatherMatmul``): Dense and 1x1 convolutions with
  balanced blocks become ``BlockSparseDense`` (Gather -> BatchMatMul -> Reshape).
- ``channel-gather`` (``channel_gather.ChannelGather``): convolutions in channel blocks, and Dense
  layers in ``(1, c)`` blocks, become a Gather and one grouped convolution.
- ``builtin-sparse`` (``builtin_sparse.BuiltinSparse``): no rewrite; the TFLite converter
  encodes (4, 1) / (16, 1) blocks that ``FULLY_CONNECTED`` reads.
- ``dense``: nothing runs sparse (the baseline, and runtimes a target cannot speed up).

``lower(model, target, runtime, structure)`` applies a target's lowering for one runtime and
reports which layers it rewrote.
"""

from __future__ import annotations

from .base import LoweredLayer, Lowering, format_name
from .builtin_sparse import BuiltinSparse
from .channel_gather import ChannelGather
from .gather_matmul import GatherMatmul

__all__ = ["ATTENTION_PROJECTIONS", "FUSED_ATTENTION", "BlockSparseDense", "ChannelGatherConv", "ChannelGatherDense",
           "FeatureMajorAttention",
           "Lowering", "LoweredLayer", "LOWERINGS", "lowering", "lower",
           "runs_sparse", "default_choices", "candidates", "format_name", "held_by", "rewritable"]


class Dense(Lowering):
    """Nothing is rewritten and nothing runs sparse."""

    name = "dense"
    formats = ("tflite", "onnx")
    rewrites = False
    summary = "dense weights (the baseline; size savings only)"

    def handles(self, ws) -> bool:
        return False


#: Every lowering, by the name target descriptors use.
LOWERINGS: dict[str, Lowering] = {entry.name: entry for entry in (GatherMatmul(), ChannelGather(), BuiltinSparse(),
                                                                   Dense())}


def __getattr__(name):
    # The Keras layers load with Keras, only when asked for: the catalogue itself is TF-free.
    if name in ("BlockSparseDense", "ChannelGatherConv", "ChannelGatherDense", "FeatureMajorAttention"):
        from . import layers

        return getattr(layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def candidates(ws, fmt: str, quantized: bool = False) -> list[tuple[str, str]]:
    """Every ``(lowering, variant)`` that can make weight ``ws`` run sparse in a file of format
    ``fmt`` (with int8 weights when ``quantized``) and rewrites a layer to do it, plus
    ``("dense", "")``: what export chooses among."""
    out = [(e.name, v) for e in LOWERINGS.values() if e.rewrites and fmt in e.formats and e.handles(ws)
           for v in e.variants_for(fmt, ws, quantized)]
    return out + [("dense", "")]


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
    ``runtime`` (an export output: ``tflite``, ``onnx``, ``openvino``) handles its kind; when that
    lowering rewrites layers, so does every rewriting lowering of the catalogue (export chooses
    among them), e.g. channel-gather for KxK convolutions. Other kinds are exported dense:
    pruning them saves size, not time.

    Example:
        >>> from blockprune.targets import load_target
        >>> runs_sparse(load_target("cpu-wide"), "conv", "tflite"), runs_sparse(load_target("cpu-wide"), "recurrent", "tflite")
        (True, False)
    """
    from ..convert import OUTPUTS

    if not target.native:
        return True
    fmt = OUTPUTS[runtime][0] if runtime in OUTPUTS else runtime
    entry = lowering(getattr(target.lowering, fmt))
    if not entry.rewrites:
        return kind in entry.kinds
    return any(kind in e.kinds for e in LOWERINGS.values() if e.rewrites and fmt in e.formats)


def default_choices(target, runtime: str, structure) -> dict[str, tuple[str, str]]:
    """``{weight: (lowering, variant)}`` without measurements: when the target's lowering for
    ``runtime`` rewrites layers, each weight gets the first catalogue entry that can rewrite it
    (gather-matmul before channel-gather), in its default form."""
    if not lowering(getattr(target.lowering, runtime)).rewrites:
        return {}
    out = {}
    for ws in structure:
        first = candidates(ws, runtime)[0]
        if first[0] != "dense":
            out[ws.name] = first
    return out


def held_by(node, ws):
    """The Keras layer that holds weight ``ws`` inside the graph-node layer ``node`` (``node``
    itself for its own ``kernel``; e.g. the ``query`` EinsumDense of a MultiHeadAttention)."""
    if ws.site.weight == "kernel":
        return node
    from ..kerasgraph import sublayers

    sub_name = ws.site.weight.rsplit("/", 1)[0].split("/")[-1]
    return next((s for s in sublayers(node, recursive=True) if s.name == sub_name), None)


def rewritable(model, ws, name: str) -> bool:
    """Whether lowering ``name`` can rewrite the layer of ``model`` that holds weight ``ws``."""
    from ..kerasgraph import layer_paths

    entry = lowering(name)
    paths = layer_paths(model)
    node = next((lay for lay in model.layers if paths.get(id(lay)) == ws.layer), None)
    held = held_by(node, ws) if node is not None else None
    return held is not None and entry.handles(ws) and entry.why_not(held) is None


def lower(model, target, runtime: str = "tflite", structure=None, block_shapes=None, choices=None, fuse: bool = True):
    """Rewrites the weights' layers into the lowerings chosen for them; others stay as they are.

    Args:
        model: a stripped Sequential or functional model.
        target: target name, path or descriptor.
        runtime: the file format, ``"tflite"`` or ``"onnx"``.
        structure: the model's ``ModelStructure`` (``blockprune.structure.read_structure``);
            default: read here.
        block_shapes: ``{"layer/weight": (rows, cols)}`` to pin block shapes when reading the
            structure here (from a plan).
        choices: ``{"layer/weight": (lowering, variant)}``; default: the target's lowering for
            ``runtime`` wherever it applies (``default_choices``).
        fuse: replace a self-attention layer whose four projections are all feature-major by
            ``FeatureMajorAttention`` (attention computed feature-major too; recorded as variant
            ``fused``). Whether that is faster depends on the runtime: export measures both.

    Returns:
        ``(lowered_model, [LoweredLayer, ...])``: a new model (a copy when nothing is rewritten).
    """
    from ..kerasgraph import copy_model, replace_sublayer, rewrap, sublayers
    from ..structure import read_structure
    from ..targets import load_target

    target = load_target(target)
    if runtime not in ("tflite", "onnx"):
        raise ValueError(f"runtime={runtime!r} must be 'tflite' or 'onnx'")
    if structure is None:
        structure = read_structure(model, target, block_shapes=block_shapes)
    if choices is None:
        choices = default_choices(target, runtime, structure)
    by_node: dict[str, list] = {}
    for ws in structure:
        if ws.name in choices and choices[ws.name][0] != "dense":
            by_node.setdefault(ws.layer, []).append((ws, *choices[ws.name]))
    copy = copy_model(model)
    chained_out, chained_in = _feature_major_chains(copy, by_node)
    lowered: list[LoweredLayer] = []

    def rewritten(holder, ws, name, variant, label=None):
        entry = lowering(name)
        if not entry.handles(ws) or entry.why_not(holder) is not None:
            return None
        new = entry.rewrite(holder, ws, variant)
        if new is not None:
            lowered.append(LoweredLayer(ws.layer, ws.kind, ws.block_shape, ws.block_sparsity,
                                        ws.kept_per_block_column[1], entry.name, label or variant, ws.site.weight))
        return new

    def swap(layer, path):
        fused = _fused_attention(layer, by_node.get(path, []), rewritten) if fuse else None
        if fused is not None:
            return fused
        for ws, name, variant in by_node.get(path, []):
            if ws.site.weight == "kernel":  # the graph-node layer holds the weight itself
                new = rewritten(layer, ws, name, variant)
                if new is not None and path in chained_out:  # the next layer reads [features, rows]
                    new.output_layout = "feature"
                if new is not None and path in chained_in:
                    new.input_layout, new.lead_shape = "feature", chained_in[path]
                return new or layer
            # a sublayer holds it (MultiHeadAttention's query/key/value/attention_output projections)
            sub = held_by(layer, ws)
            new = rewritten(sub, ws, name, variant) if sub is not None else None
            if new is not None:
                owner = next(o for o in sublayers(layer, recursive=True, include_self=True)
                             if any(v is sub for v in vars(o).values()))
                replace_sublayer(owner, sub, new)
        return layer

    return rewrap(copy, swap), lowered


#: MultiHeadAttention's projections, by the names of the sublayers holding them.
ATTENTION_PROJECTIONS = ("query", "key", "value", "attention_output")
#: How records name a projection computed inside a fused attention layer.
FUSED_ATTENTION = format_name("gather-matmul", "fused")


def _fused_attention(layer, items, rewritten):
    """A ``FeatureMajorAttention`` replacing the MultiHeadAttention ``layer`` when all four of its
    projections are lowered feature-major and it is plain self-attention (one input, no mask, the
    default attention axes, no gate or sliding window); else None."""
    import keras

    from ..kerasgraph import self_attention_input

    if not isinstance(layer, keras.layers.MultiHeadAttention) or len(items) != len(ATTENTION_PROJECTIONS) \
            or any((name, variant) != ("gather-matmul", "feature") for _, name, variant in items):
        return None
    config = layer.get_config()
    if config.get("output_shape") is not None or config.get("use_gate") or config.get("sliding_window") is not None \
            or tuple(config.get("attention_axes") or (1,)) != (1,):
        return None
    shape = self_attention_input(layer)
    held = {ws.site.weight.split("/")[0]: (ws, held_by(layer, ws)) for ws, _, _ in items}
    entry = lowering("gather-matmul")
    if shape is None or set(held) != set(ATTENTION_PROJECTIONS) or any(
            sub is None or not entry.handles(ws) or entry.why_not(sub) is not None for ws, sub in held.values()):
        return None
    new = {role: rewritten(sub, ws, "gather-matmul", "feature", "fused") for role, (ws, sub) in held.items()}
    for role in ("query", "key", "value"):
        new[role].input_layout, new[role].output_layout = "feature", "feature"
    new["attention_output"].input_layout, new["attention_output"].lead_shape = "feature", (shape[0],)
    from .layers import FeatureMajorAttention

    return FeatureMajorAttention(config["num_heads"], config["key_dim"], config["value_dim"] or config["key_dim"],
                                 shape[0], new["query"], new["key"], new["value"], new["attention_output"],
                                 name=layer.name)


def _feature_major_chains(model, by_node) -> tuple[set[str], dict[str, tuple[int, ...]]]:
    """Pairs of feature-major gather-matmul layers where the first one's output is read by the
    second one only: the first keeps its output ``[features, rows]`` and the second reads it so,
    and the two transposes between them are left out. Returns the first layers' paths, and the
    second layers' paths with their input's lead shape (the axes between batch and features)."""
    from ..kerasgraph import layer_paths, sole_consumer
    from .layers import elementwise

    paths = layer_paths(model)
    chainable = set()
    for layer in model.layers:
        path = paths.get(id(layer))
        items = by_node.get(path, [])
        if len(items) != 1:
            continue
        ws, name, variant = items[0]
        entry = lowering(name)
        if (name, variant, ws.site.weight) == ("gather-matmul", "feature", "kernel") and ws.kind in ("dense", "conv1x1") \
                and entry.handles(ws) and entry.why_not(layer) is None and elementwise(layer.activation):
            chainable.add(path)
    out, into = set(), {}
    for layer in model.layers:
        path = paths.get(id(layer))
        if path not in chainable:
            continue
        reader = sole_consumer(model, layer)
        if reader is not None and paths.get(id(reader)) in chainable and paths[id(reader)] not in into:
            out.add(path)
            into[paths[id(reader)]] = tuple(int(d) for d in reader.input.shape[1:-1])
    return out, into

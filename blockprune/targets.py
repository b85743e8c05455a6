"""Hardware target descriptors: TOML files loaded into frozen, validated dataclasses.

A target says which block shapes a piece of hardware or a runtime can exploit and how the
exported model must be lowered and run. Targets are data: every rule lives in a descriptor
file, and this module is the one small interpreter of those files. It does not import
TensorFlow.

Block shapes follow the one convention of blockprune (docs/DESIGN.md, section 2):
``block_shape = (rows, cols)`` over the 2-D view ``[in, out]`` of the kernel as Keras stores
it. TFLite's float "1x4" sparse path is therefore ``(4, 1)`` here.

Example:
    >>> from blockprune.targets import load_target
    >>> t = load_target("simd-4x1")
    >>> t.block_shapes
    ((4, 1),)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from .checks import divides, fits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "CostModel",
    "Lowering",
    "RuntimeOptions",
    "TargetDescriptor",
    "TargetError",
    "LAYER_KINDS",
    "TFLITE_LOWERINGS",
    "ONNX_LOWERINGS",
    "DTYPES",
    "fast_runtimes",
    "list_targets",
    "load_target",
    "shipped_target_names",
]

#: Layer kinds a descriptor may list as eligible. ``conv1x1`` is a convolution whose kernel
#: is 1 in every spatial dimension (a matmul over positions); ``conv`` is any other one;
#: ``recurrent`` is the input and recurrent kernel of an LSTM, GRU or SimpleRNN cell.
LAYER_KINDS = ("dense", "conv1x1", "conv", "einsum_dense", "recurrent", "custom")
TFLITE_LOWERINGS = ("builtin-sparse", "gather-matmul", "dense")
ONNX_LOWERINGS = ("gather-matmul", "dense")
#: ``int8`` means dynamic-range int8 (int8 weights, float activations), as TFLite does it.
DTYPES = ("float32", "int8")
LANE_AXES = ("in", "out", "both")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class TargetError(ValueError):
    """A target descriptor that cannot be found, parsed or validated.

    The message always names the file and, where one is at fault, the field.
    """


@dataclass(frozen=True)
class Lowering:
    """How each runtime executes the sparsity of this target.

    Attributes:
        tflite: ``builtin-sparse`` (TFLite's own sparse FULLY_CONNECTED kernel reads the
            block encoding), ``gather-matmul`` (blocked-ELL rewrite into Gather + batched
            MatMul, docs/DESIGN.md section 4) or ``dense`` (no speed gain on this runtime).
        onnx: ``gather-matmul`` or ``dense``; ONNX Runtime has no fast sparse MatMul.
    """

    tflite: str
    onnx: str


@dataclass(frozen=True)
class RuntimeOptions:
    """Options an exported model needs to run correctly and fast.

    Attributes:
        tflite_default_delegates: whether LiteRT may apply its default (XNNPACK) delegate.
            False for dynamic-range int8 block-sparse models, which XNNPACK runs wrongly.
        onnx_opset: the ONNX opset the exporter emits.
    """

    tflite_default_delegates: bool = True
    onnx_opset: int = 17


@dataclass(frozen=True)
class CostModel:
    """Roofline parameters for estimating latency where the hardware is absent.

    Attributes:
        vector_lanes: how many values one vector instruction processes.
        lane_axis: the axis of the ``[in, out]`` view the lanes run along: ``in`` (a
            dot-product reduction, like TFLite's 1x4 kernel) or ``out`` (one input value
            broadcast across output lanes, like a DSP or the gather-matmul lowering) or
            ``both`` (the lanes cover a rows x cols tile, like a tensor-core fragment).
        peak_gflops: peak floating-point rate, GFLOP/s.
        memory_gbps: sustained weight-streaming bandwidth, GB/s.
    """

    vector_lanes: int
    lane_axis: str
    peak_gflops: float
    memory_gbps: float


@dataclass(frozen=True)
class TargetDescriptor:
    """One hardware target, as read from ``targets/<name>.toml``.

    Attributes:
        name: the target's name, as passed to ``--target``.
        description: one line for tables.
        hardware: the hardware or runtime fact the descriptor encodes.
        dtype: ``float32`` or ``int8`` (dynamic-range).
        block_shapes: allowed block shapes, most preferred first, in the ``[in, out]``
            convention.
        channel_blocks: output channels per channel block of a KxK convolution (one input
            channel, all its taps), most preferred first; empty when the target prunes KxK
            convolutions in ``block_shapes`` (or not at all).
        balanced: every block-column must keep the same number of blocks.
        min_weights: layers with fewer weights stay dense, unless ``min_macs`` lets them in.
        min_macs: a layer under ``min_weights`` is still pruned when its multiply-adds per
            sample (weights x output positions: a 1x1 convolution over a large feature map)
            reach this many; 0 (the default) turns the exception off.
        layer_kinds: which layer kinds (see ``LAYER_KINDS``) the target can speed up.
        native: True when the runtimes on this machine execute the target's lowering as the
            real hardware would (CPU targets); False for emulated targets (DSP, tensor cores),
            whose latency is reported from the cost model as an estimate.
        lowering: per-runtime lowering.
        runtime: per-runtime options the export needs.
        cost_model: roofline parameters.
        source: where the descriptor was read from.

    Example:
        >>> t = load_target("dsp-1x8")
        >>> t.balanced, t.lowering.onnx
        (True, 'gather-matmul')
    """

    name: str
    description: str
    hardware: str
    dtype: str
    block_shapes: tuple[tuple[int, int], ...]
    balanced: bool
    min_weights: int
    layer_kinds: tuple[str, ...]
    native: bool
    lowering: Lowering
    runtime: RuntimeOptions
    cost_model: CostModel
    channel_blocks: tuple[int, ...] = ()
    min_macs: int = 0
    source: str = field(default="", compare=False)

    def large_enough(self, ref) -> bool:
        """Whether a weight (any ``WeightRef``) is big enough to prune: ``min_weights`` weights,
        or ``min_macs`` multiply-adds per sample when the target sets it."""
        n = ref.n_weights
        return n >= self.min_weights or bool(self.min_macs and n * ref.positions >= self.min_macs)

    def pattern(self, ref) -> tuple[Any, list[tuple[int, int]]]:
        """``(view, block shapes)`` this target prunes the weight ``ref`` (a ``WeightRef``) in:
        a KxK convolution of a target with ``channel_blocks`` in channel blocks over its
        channel-major view, every other weight in ``block_shapes`` over its ``[in, out]`` view.
        Only the block shapes that fit the view are listed: those that divide it first, then
        those that leave a narrower last block-column (computed padded)."""
        if ref.view is None:
            return None, []
        view, blocks = ref.view, self.block_shapes
        if ref.kind == "conv" and self.channel_blocks:
            view = ref.view.channel_major(ref.kernel_shape)
            blocks = tuple((view.taps, c) for c in self.channel_blocks)
        # blocks that divide the view first; then ones whose last block-column is narrower (padded)
        exact = [b for b in blocks if divides(view.view_shape, b)]
        return view, exact + [b for b in blocks if fits(view.view_shape, b) and b not in exact]

    @property
    def dtype_bytes(self) -> int:
        """Bytes per stored weight value."""
        return 1 if self.dtype == "int8" else 4

    def to_dict(self) -> dict[str, Any]:
        """The descriptor's fields under the same names and nesting as in the TOML file.

        Returns:
            A JSON-serializable dict, plus ``source``.
        """
        return {
            "name": self.name,
            "description": self.description,
            "hardware": self.hardware,
            "dtype": self.dtype,
            "block_shapes": [list(b) for b in self.block_shapes],
            **({"channel_blocks": list(self.channel_blocks)} if self.channel_blocks else {}),
            "balanced": self.balanced,
            "min_weights": self.min_weights,
            **({"min_macs": self.min_macs} if self.min_macs else {}),
            "layer_kinds": list(self.layer_kinds),
            "native": self.native,
            "lowering": dataclasses.asdict(self.lowering),
            "runtime": {
                "tflite": {"default_delegates": self.runtime.tflite_default_delegates},
                "onnx": {"opset": self.runtime.onnx_opset},
            },
            "cost_model": dataclasses.asdict(self.cost_model),
            "source": self.source,
        }


# --------------------------------------------------------------------------- parsing

_TOP_FIELDS = {
    "name": True,
    "description": True,
    "hardware": True,
    "dtype": True,
    "block_shapes": True,
    "channel_blocks": False,
    "balanced": True,
    "min_weights": True,
    "min_macs": False,
    "layer_kinds": True,
    "native": True,
    "lowering": True,
    "runtime": False,
    "cost_model": True,
}
_LOWERING_FIELDS = {"tflite": True, "onnx": True}
_RUNTIME_FIELDS = {"tflite": False, "onnx": False}
_RUNTIME_TFLITE_FIELDS = {"default_delegates": False}
_RUNTIME_ONNX_FIELDS = {"opset": False}
_COST_FIELDS = {"vector_lanes": True, "lane_axis": True, "peak_gflops": True, "memory_gbps": True}


class _Reader:
    """Reads one table of a descriptor, naming the file and field in every error."""

    def __init__(self, source: str, table: Mapping[str, Any], prefix: str, fields: dict[str, bool]):
        self.source = source
        self.table = table
        self.prefix = prefix
        if not isinstance(table, Mapping):
            raise self.error(None, f"expected a table, got {type(table).__name__} {table!r}")
        for key in table:
            if key not in fields:
                hint = difflib.get_close_matches(key, list(fields), n=1)
                did_you_mean = f"; did you mean '{self._path(hint[0])}'?" if hint else ""
                raise self.error(key, f"unknown field (known: {', '.join(fields)}){did_you_mean}")
        for key, required in fields.items():
            if required and key not in table:
                raise self.error(key, "missing required field")

    def _path(self, key: str | None) -> str:
        if key is None:
            return self.prefix or "<top level>"
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str | None, message: str) -> TargetError:
        return TargetError(f"{self.source}: field '{self._path(key)}': {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        # bool is an int in Python; a descriptor saying `min_weights = true` is a mistake.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(key, f"expected {_type_name(kind)}, got boolean {value!r}")
        if not isinstance(value, kind):
            raise self.error(key, f"expected {_type_name(kind)}, got {type(value).__name__} {value!r}")
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: str | None = None) -> str:
        value = self.get(key, str, default)
        if value not in allowed:
            raise self.error(key, f"unknown value {value!r} (expected one of: {', '.join(allowed)})")
        return value

    def positive(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.get(key, kind, default)
        if not value > 0:
            raise self.error(key, f"expected a positive number, got {value!r}")
        return value

    def sub(self, key: str, fields: dict[str, bool]) -> "_Reader":
        return _Reader(self.source, self.table.get(key, {}), self._path(key), fields)


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _parse_block_shapes(r: _Reader) -> tuple[tuple[int, int], ...]:
    raw = r.get("block_shapes", list)
    if not raw:
        raise r.error("block_shapes", "expected at least one block shape [rows, cols]")
    shapes = []
    for i, item in enumerate(raw):
        ok = (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in item)
        )
        if not ok:
            raise r.error(f"block_shapes[{i}]", f"expected two positive integers [rows, cols], got {item!r}")
        shape = (item[0], item[1])
        if shape in shapes:
            raise r.error(f"block_shapes[{i}]", f"duplicate block shape {list(shape)}")
        shapes.append(shape)
    return tuple(shapes)


def _parse_channel_blocks(r: _Reader) -> tuple[int, ...]:
    raw = r.get("channel_blocks", list, [])
    for i, c in enumerate(raw):
        if isinstance(c, bool) or not isinstance(c, int) or c <= 0:
            raise r.error(f"channel_blocks[{i}]", f"expected a positive number of output channels, got {c!r}")
    if len(set(raw)) != len(raw):
        raise r.error("channel_blocks", f"duplicate entries in {raw!r}")
    return tuple(raw)


def _parse_layer_kinds(r: _Reader) -> tuple[str, ...]:
    raw = r.get("layer_kinds", list)
    if not raw:
        raise r.error("layer_kinds", f"expected at least one of: {', '.join(LAYER_KINDS)}")
    for i, kind in enumerate(raw):
        if kind not in LAYER_KINDS:
            raise r.error(f"layer_kinds[{i}]", f"unknown layer kind {kind!r} (expected one of: {', '.join(LAYER_KINDS)})")
    return tuple(raw)


def parse_target(data: Mapping[str, Any], source: str) -> TargetDescriptor:
    """Validates a parsed descriptor table and builds the dataclass.

    Args:
        data: the TOML document as a dict.
        source: the file name to put in error messages.

    Returns:
        The validated ``TargetDescriptor``.

    Raises:
        TargetError: a missing, unknown or invalid field; the message names file and field.
    """
    r = _Reader(source, data, "", _TOP_FIELDS)
    name = r.get("name", str)
    if not _NAME_RE.match(name):
        raise r.error("name", f"expected lowercase letters, digits, '.', '_' or '-', got {name!r}")
    lowering_r = r.sub("lowering", _LOWERING_FIELDS)
    lowering = Lowering(
        tflite=lowering_r.choice("tflite", TFLITE_LOWERINGS),
        onnx=lowering_r.choice("onnx", ONNX_LOWERINGS),
    )
    runtime_r = r.sub("runtime", _RUNTIME_FIELDS)
    tflite_r = runtime_r.sub("tflite", _RUNTIME_TFLITE_FIELDS)
    onnx_r = runtime_r.sub("onnx", _RUNTIME_ONNX_FIELDS)
    opset = onnx_r.positive("opset", int, 17)
    if opset < 17:
        raise onnx_r.error("opset", f"expected 17 or newer, got {opset}")
    runtime = RuntimeOptions(
        tflite_default_delegates=tflite_r.get("default_delegates", bool, True),
        onnx_opset=opset,
    )
    cost_r = r.sub("cost_model", _COST_FIELDS)
    cost = CostModel(
        vector_lanes=cost_r.positive("vector_lanes", int),
        lane_axis=cost_r.choice("lane_axis", LANE_AXES),
        peak_gflops=float(cost_r.positive("peak_gflops", (int, float))),
        memory_gbps=float(cost_r.positive("memory_gbps", (int, float))),
    )
    balanced = r.get("balanced", bool)
    if "gather-matmul" in (lowering.tflite, lowering.onnx) and not balanced:
        raise r.error("balanced", "the gather-matmul lowering needs balanced = true "
                      "(every block-column keeps the same number of blocks)")
    min_weights = r.get("min_weights", int)
    if min_weights < 0:
        raise r.error("min_weights", f"expected 0 or more, got {min_weights}")
    min_macs = r.get("min_macs", int, 0)
    if min_macs < 0:
        raise r.error("min_macs", f"expected 0 or more, got {min_macs}")
    return TargetDescriptor(
        name=name,
        description=r.get("description", str),
        hardware=r.get("hardware", str),
        dtype=r.choice("dtype", DTYPES),
        block_shapes=_parse_block_shapes(r),
        channel_blocks=_parse_channel_blocks(r),
        balanced=balanced,
        min_weights=min_weights,
        min_macs=min_macs,
        layer_kinds=_parse_layer_kinds(r),
        native=r.get("native", bool),
        lowering=lowering,
        runtime=runtime,
        cost_model=cost,
        source=source,
    )


# --------------------------------------------------------------------------- lookup

def _shipped_dir():
    """The shipped descriptors: installed as ``blockprune._targets``; in a source checkout
    that has not been installed, the repository's ``targets/`` folder."""
    try:
        return resources.files("blockprune._targets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "targets"


def shipped_target_names() -> list[str]:
    """Names of the descriptors shipped with blockprune, sorted."""
    return sorted(p.name[: -len(".toml")] for p in _shipped_dir().iterdir() if p.name.endswith(".toml"))


def _load_file(path: Path | Any, source: str) -> TargetDescriptor:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TargetError(f"{source}: cannot read target descriptor: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{source}: not valid TOML: {e}") from None
    return parse_target(data, source)


def load_target(name_or_path: str | Path | TargetDescriptor) -> TargetDescriptor:
    """Loads a shipped target by name, or a user's descriptor file by path.

    Args:
        name_or_path: a shipped target's name (``"simd-4x1"``), a path to a ``.toml``
            descriptor, or an already loaded ``TargetDescriptor`` (returned as is).

    Returns:
        The validated ``TargetDescriptor``.

    Raises:
        TargetError: unknown name, unreadable file, or an invalid descriptor.
        TypeError: ``name_or_path`` is not a string, path or descriptor.

    Example:
        >>> load_target("cpu-wide").lowering.tflite
        'gather-matmul'
    """
    if isinstance(name_or_path, TargetDescriptor):
        return name_or_path
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"target must be a name, a path or a TargetDescriptor, got {type(name_or_path).__name__}")
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text
    if looks_like_path:
        path = Path(text)
        if not path.is_file():
            raise TargetError(f"{text}: no such target descriptor file")
        return _load_file(path, text)
    shipped = _shipped_dir() / f"{text}.toml"
    if not shipped.is_file():
        names = shipped_target_names()
        hint = difflib.get_close_matches(text, names, n=1)
        did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
        raise TargetError(f"unknown target {text!r} (shipped targets: {', '.join(names)}; "
                          f"or pass a path to a .toml descriptor){did_you_mean}")
    target = _load_file(shipped, f"targets/{text}.toml")
    if target.name != text:
        raise TargetError(f"targets/{text}.toml: field 'name': {target.name!r} does not match the file name")
    return target


def list_targets() -> list[TargetDescriptor]:
    """All shipped targets, sorted by name."""
    return [load_target(n) for n in shipped_target_names()]


def fast_runtimes(target: TargetDescriptor) -> list[str]:
    """The runtimes (``tflite``, ``onnx``) whose lowering for ``target`` is not ``dense``."""
    return [rt for rt in ("tflite", "onnx") if getattr(target.lowering, rt) != "dense"]


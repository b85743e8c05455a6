"""What a lowering is: the layer kinds, block shapes and file formats it handles, and how it
rewrites a layer (or asks the converter) so a runtime executes the sparsity."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Lowering", "LoweredLayer", "format_name"]


@dataclass(frozen=True)
class LoweredLayer:
    """One rewritten weight: its layer's path, kind, block shape, sparsity, blocks per block-column
    (the fullest one; others are padded to it), lowering and variant, and the weight's name."""

    name: str
    kind: str
    block_shape: tuple[int, int]
    sparsity: float
    blocks_per_column: int
    lowering: str = ""
    variant: str = ""
    weight: str = "kernel"

    @property
    def weight_name(self) -> str:
        return f"{self.name}/{self.weight}"

    @property
    def format(self) -> str:
        """How the record names it: the lowering, with a non-default variant in parentheses."""
        return format_name(self.lowering, self.variant)


def format_name(lowering: str, variant: str = "") -> str:
    """``gather-matmul``, ``gather-matmul (feature-major)``, ``gather-matmul (row-gather)``,
    ``gather-matmul (feature-major, fused attention)``: a lowering as records name it."""
    if variant in ("", "batch", "grouped", "split"):
        return lowering
    if variant == "rows":  # rows of the transposed input gathered, multiplied batch-major
        return f"{lowering} (row-gather)"
    if variant == "fused":  # a projection of an attention layer computed feature-major throughout
        return f"{lowering} (feature-major, fused attention)"
    return f"{lowering} ({variant}-major)"


class Lowering:
    """One entry of the lowering catalogue.

    Attributes:
        name: the name target descriptors use (``[lowering] tflite = "gather-matmul"``).
        kinds: the layer kinds (``blockprune.targets.LAYER_KINDS``) it makes run sparse.
        formats: the file formats it writes (``"tflite"``, ``"onnx"``).
        balanced: whether it needs every block-column to keep the same number of blocks.
        variants: forms of the rewrite (e.g. layouts); the first is the default.
        summary: one line for tables and docs.
    """

    name = ""
    kinds: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    balanced = False
    variants: tuple[str, ...] = ("",)
    rewrites = True  # False: the converter carries it out from the weights, no layer is replaced
    summary = ""

    def variants_for(self, fmt: str, ws=None, quantized: bool = False) -> tuple[str, ...]:
        """The variants that apply to files of format ``fmt`` (the first is the default), for
        weight ``ws`` when given, in a file with int8 weights when ``quantized``."""
        return self.variants

    def handles(self, ws) -> bool:
        """Whether this lowering can make weight ``ws`` (a ``WeightStructure``) run sparse,
        judged from its kind and block structure alone. (A balanced lowering pads a block-column
        that keeps fewer blocks up to the fullest one.)"""
        return ws.blocked and ws.kind in self.kinds

    def why_not(self, layer) -> str | None:
        """Why ``layer`` (the Keras layer holding the weight) cannot be rewritten, or None."""
        return None

    def rewrite(self, layer, ws, variant: str = ""):
        """The layer that replaces ``layer`` (the Keras layer holding weight ``ws``) in the lowered
        model, in form ``variant``, or None to keep ``layer`` as is (a lowering the converter
        carries out from the weights themselves)."""
        return None

    def converter_optimizations(self) -> list:
        """TFLite converter optimizations this lowering needs (``tf.lite.Optimize`` members)."""
        return []

    def file_formats(self, model_bytes: bytes, structure, lowered: dict[str, str]) -> dict[str, str]:
        """``{weight name: how the written file runs it}`` (``gather-matmul``, ``builtin-sparse``,
        ``densify``, ``dense``, ...), read back from the file where the converter decides.
        ``lowered`` maps the rewritten weights to their record names."""
        return {ws.name: lowered.get(ws.name, "dense") for ws in structure}

    def warning(self, ws, fmt: str) -> str:
        """What to tell the user when blocked weight ``ws`` ended up as ``fmt`` (not sparse)."""
        return f"Layer '{ws.layer}' weight '{ws.weight}' is block-sparse but has no {self.name} form here; it runs dense"

"""Exporters: ``.tflite`` and ``.onnx`` files that execute the sparsity, each chosen by measurement
at the point it is exported for, and verified by running it in its runtime against Keras before
anything is written.

Outputs (``blockprune.convert.OUTPUTS``): ``tflite`` (LiteRT), ``onnx`` (ONNX Runtime) and
``openvino`` (an ``.onnx`` chosen and verified in OpenVINO). For each one:

1. Per weight, the lowering: for a target whose lowering rewrites layers (gather-matmul), the
   fastest of the catalogue's candidates and plain dense, measured by ``blockprune.select``
   at the deployment point (``batch``, ``threads``); with ``select="target"``, the target's own
   lowering wherever it applies. Builtin-sparse targets leave it to the TFLite converter, and the
   written flatbuffer is read back: a weight it stores behind ``DENSIFY`` is an error (a warning
   with ``allow_dense``).
2. The file is converted and run against Keras on sample inputs.
3. Never slower: the file is timed against its dense baseline at the deployment point; unless it
   is faster by ``CHECK_MARGIN`` (5%), the dense file is
   written in its place and the record says so, with both latencies.

The runtime options a file needs (e.g. LiteRT without its default delegates, docs/DESIGN.md
section 3's wrong-output trap) are written beside it as ``<file>.runtime.json``, and
``blockprune.runtimes.make_runner`` reads them back, so every user of the file runs it the same way.
"""

from __future__ import annotations

import gzip
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import atomic_dir, atomic_path
from .checks import check_positive_int
from .convert import OUTPUTS, build_file, fixed_batch
from .plan import SparsityPlan
from .quantize import Quantization, for_target
from .runtimes import available, compare, keras_outputs, outputs_of, runtime, sample_inputs
from .structure import StructureError, read_structure
from .targets import TargetDescriptor, load_target

__all__ = ["ExportError", "ExportRecord", "export", "export_file", "export_tflite", "export_onnx", "default_outputs",
           "SELECT_MODES"]

#: A lowered file is kept only if it beats its dense baseline by this factor at the export's point.
CHECK_MARGIN = 1.05
#: A lowered file that beats its dense baseline by less than this is timed a second time, and
#: the worse of the two measurements decides.
CONFIRM_BELOW = 1.3
#: Record formats of weights that run at dense speed.
DENSE_FORMATS = ("dense", "densify", "csr", "sparse-initializer")
#: How each weight's lowering is chosen: measured by probes, or unmeasured (the first catalogue
#: entry that can rewrite it, when the target's lowering rewrites layers; else the target's).
SELECT_MODES = ("measure", "target")


class ExportError(ValueError):
    """An export that would not be correct or not sparse; nothing was written."""


@dataclass
class ExportRecord:
    """What an exporter wrote.

    Attributes:
        path: the model file.
        format: the export output: ``tflite``, ``onnx`` or ``openvino``.
        target: the target's name.
        variant: ``sparse`` or ``dense`` (the baseline for benchmarks).
        bytes: file size; ``gzip_bytes``: its size compressed by gzip at its default
            level, 6 (what ``gzip file`` gives).
        layers: per weight: ``name``, ``sparsity``, ``format`` (how the runtime executes it:
            ``gather-matmul``, ``gather-matmul (feature-major)``, ``channel-gather``,
            ``builtin-sparse``, ``densify``, ``sparse-initializer`` or ``dense``), its block
            structure, and ``why`` (the measurement behind the choice).
        max_abs_error, rel_error: largest difference from Keras on the check inputs.
        runtime_options: how to run the file (also in ``options_path``).
        warnings: problems allowed by ``allow_dense``.
        point: the deployment point it was exported for (``batch``, ``threads``).
        check: the whole-file timing against the dense baseline at that point (``dense_us``,
            ``sparse_us``, ``speedup``, ``kept_dense``), when measured.
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
    point: dict = field(default_factory=dict)
    check: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def default_outputs() -> tuple[str, ...]:
    """``tflite``, ``onnx``, and ``openvino`` where OpenVINO is installed."""
    return tuple(o for o in OUTPUTS if available(OUTPUTS[o][1]))


# --------------------------------------------------------------------------- pieces

def _layer_entry(ws, fmt: str, why: str = "") -> dict:
    """A record's per-weight entry: name, sparsity, how it runs and why, and its shape facts."""
    lo, hi = ws.kept_per_block_column
    entry = {"name": ws.name, "sparsity": ws.sparsity, "format": fmt, "view_shape": list(ws.view_shape),
             "n_weights": ws.view_shape[0] * ws.view_shape[1], "positions": ws.site.positions,
             "block_shape": list(ws.block_shape) if ws.block_shape else None, "block_sparsity": ws.block_sparsity,
             "kept_per_block_column": [lo, hi]}
    if fmt not in DENSE_FORMATS and ws.blocked and lo != hi:  # a balanced lowering pads to the fullest column
        n_cols = -(-ws.view_shape[1] // ws.block_shape[1])
        kept = round((1 - ws.block_sparsity) * n_cols * (ws.view_shape[0] // ws.block_shape[0]))
        entry["padding"] = (hi * n_cols - kept) / max(kept, 1)
    if why:
        entry["why"] = why
    return entry


def _check_structure(model, target, plan, structure):
    if structure is not None:
        return structure
    try:
        return read_structure(model, target, plan)
    except StructureError as e:
        raise ExportError(str(e)) from None


def _samples(model, batch: int, q: Quantization) -> list[np.ndarray]:
    """The inputs every file is verified on: 4 samples, or the deployment batch for a model whose
    ``.tflite`` runs only at it (a recurrent loop). Random normal ones, except for a full-integer
    file calibrated on given data: its ranges fit that data only, so it is checked on it."""
    n = batch if fixed_batch(model, "tflite", batch) else 4
    if q.mode == "int8" and q.calibration is not None and all(len(c) >= n for c in q.calibration):
        return [np.asarray(c[-n:], dtype="float32") for c in q.calibration]
    return sample_inputs(model, n)


def _load(rt, built, target: TargetDescriptor, what: str):
    """A runner of a converted file, or an ``ExportError`` in one line when the runtime refuses it."""
    try:
        return rt.runner(built.data, built.options)
    except Exception as e:  # noqa: BLE001 - each runtime raises its own types; the user needs one line
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ExportError(f"{what} for target '{target.name}': {rt.label} cannot load it: {first[:300]}; "
                          "nothing was written") from e


def _verify(model, samples, run, target: TargetDescriptor, what: str, reference=None,
            quantization: Quantization | None = None) -> tuple[float, float]:
    """Runs the converted file (``run(*samples) -> output``) against Keras on the same inputs.

    Returns:
        ``(max_abs_error, rel_error)``.

    Raises:
        ExportError: the relative error exceeds the tolerance of the file's quantization
            (``blockprune.quantize.TOLERANCE``).
    """
    if reference is None:
        reference = keras_outputs(model, samples)
    try:
        got = outputs_of(run, model, samples)
    except Exception as e:  # noqa: BLE001 - each runtime raises its own types; the user needs one line
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ExportError(f"{what} for target '{target.name}' fails when run: {first[:300]}; nothing was written") from e
    err, rel = compare(reference, got)
    q = for_target(quantization, target)
    if not rel <= q.tolerance():
        raise ExportError(f"{what} for target '{target.name}' disagrees with Keras: relative error {rel:.3g} > "
                          f"{q.tolerance():g} ({q.label} weights); nothing was written")
    return err, rel


def _write(path: Path, data: bytes, record: ExportRecord) -> ExportRecord:
    with atomic_path(path, suffix=".tmp" + path.suffix) as tmp:
        tmp.write_bytes(data)
    options_path = path.with_name(path.name + ".runtime.json")
    with atomic_path(options_path) as tmp:
        tmp.write_text(json.dumps({**record.runtime_options, "file": path.name}, indent=2) + "\n")
    record.path, record.options_path = str(path), str(options_path)
    record.bytes, record.gzip_bytes = len(data), len(gzip.compress(data, compresslevel=6))
    return record


def _whole_file_check(sparse, dense, model, output, batch, threads, rounds, reps, alternative=None) -> dict:
    """Times the sparse and dense files (and an alternative sparse file) at the deployment
    point, interleaved, in a new process that runs nothing else, as a deployment runs them:
    this process, after converting models, times differently (docs/DESIGN.md section 4)."""
    from . import timing

    rt = runtime(OUTPUTS[output][1])
    files = {"dense": dense, "sparse": sparse, **({"alternative": alternative} if alternative else {})}
    stats = timing.latencies_in_fresh_process({name: (f.data, f.options) for name, f in files.items()}, rt.name,
                                              threads, sample_inputs(model, batch, seed=2), rounds, reps)
    d, s = stats["dense"][0], stats["sparse"][0]
    out = {"runtime": rt.label, "batch": batch, "threads": threads, "dense_us": d, "sparse_us": s, "speedup": d / s}
    if alternative:
        out["alternative_us"] = stats["alternative"][0]
    return out


def _fusion_choices(structure, choices) -> dict | None:
    """``choices`` with the projections of every attention layer whose four projections all
    run gather-matmul switched to feature-major, which lets ``lower`` fuse the attention; None
    when no layer qualifies (or nothing changes)."""
    from .lower import ATTENTION_PROJECTIONS

    if not choices:
        return None
    roles = {f"{p}/kernel" for p in ATTENTION_PROJECTIONS}
    by_layer: dict[str, list[str]] = {}
    for ws in structure:
        if ws.site.weight in roles and choices.get(ws.name, ("dense",))[0] == "gather-matmul":
            by_layer.setdefault(ws.layer, []).append(ws.name)
    names = [n for group in by_layer.values() if len(group) == len(roles) for n in group]
    if not names:
        return None
    return {**choices, **{n: ("gather-matmul", "feature") for n in names}}


def _fused(built) -> list[str]:
    """The weights a file computes inside a fused attention layer."""
    from .lower import FUSED_ATTENTION

    return [name for name, fmt in built.formats.items() if fmt == FUSED_ATTENTION]


# --------------------------------------------------------------------------- one file

def export_file(model, target, path, output: str = "tflite", plan: SparsityPlan | None = None,
                allow_dense: bool = False, dense: bool = False, samples: list | None = None, structure=None,
                choices=None, batch: int = 1, threads: int = 1, select: str = "measure", check: bool = True,
                dense_built=None, reference=None, progress: bool = False, check_rounds: int = 5,
                check_reps: int = 30, profile=None, quantize: str | Quantization = "none") -> ExportRecord:
    """Writes one verified file of export output ``output`` for ``target``.

    Args:
        model: a stripped block-sparse Keras model.
        target: target name, path or descriptor.
        path: the file to write (atomically, with ``<file>.runtime.json`` beside it).
        output: ``tflite``, ``onnx`` or ``openvino``.
        plan: pins the expected block structure (default: read from the weights).
        allow_dense: warn instead of failing when the converter stores a block-sparse weight at
            dense speed (builtin-sparse) or a block-sparse weight has no lowering at all.
        dense: write the dense baseline instead (same weights, no sparse encoding or lowering).
        samples: inputs to compare on (default: 4 random samples).
        structure: the model's ``ModelStructure`` when the caller has read it already.
        choices: ``{weight: (lowering, variant)}`` to use as given (no measurement).
        batch, threads: the deployment point the file is chosen and checked for.
        select: ``measure`` (probe each weight's candidates) or ``target`` (no probes: the first
            catalogue lowering that rewrites each weight, ``blockprune.lower.default_choices``).
        check: time the whole file against its dense baseline and keep the dense file when the
            sparse one is slower.
        dense_built, reference: the dense baseline's ``Built`` and the Keras outputs on
            ``samples``, when the caller has them already.
        progress: print what is measured.
        check_rounds, check_reps: timing repetitions of the whole-file check.
        profile: a tuning profile (``blockprune tune``) to choose from where it measured every
            candidate of a weight; the others are probed. Float32 only: with ``quantize`` every
            weight is probed.
        quantize: ``none``, ``float16``, ``dynamic`` or ``int8`` (``blockprune.quantize``), or a
            ``Quantization`` (``int8`` calibrates on its ``calibration`` inputs). The file, its
            candidates' probes and its dense baseline are quantized alike.

    Returns:
        An ``ExportRecord``.

    Raises:
        ExportError: the file would disagree with Keras, or (without ``allow_dense``) a
            block-sparse weight would run dense for want of a lowering. Nothing is written then.
    """
    target = load_target(target)
    if output not in OUTPUTS:
        raise ValueError(f"output {output!r} is not one of: {', '.join(OUTPUTS)}")
    if select not in SELECT_MODES:
        raise ValueError(f"select={select!r} is not one of: {', '.join(SELECT_MODES)}")
    path = Path(path)
    q = for_target(quantize, target)
    structure = _check_structure(model, target, plan, structure)
    fmt, runtime_name = OUTPUTS[output]
    rt = runtime(runtime_name)
    samples = samples or _samples(model, batch, q)
    point = {"batch": batch, "threads": threads}
    if dense:
        built = dense_built or build_file(model, target, output, structure, dense=True, batch=batch, quantization=q)
        err, rel = _verify(model, samples, _load(rt, built, target, path.name), target, path.name, reference, q)
        layers = [_layer_entry(ws, built.formats[ws.name]) for ws in structure]
        record = ExportRecord("", output, target.name, "dense", 0, 0, layers, err, rel, built.options, point=point)
        return _write(path, built.data, record)
    if not structure.blocked and not allow_dense:
        raise ExportError(f"model '{model.name}' has no weight with a block shape of target '{target.name}' "
                          f"({', '.join(map(str, target.block_shapes))}); prune it for this target first, or allow "
                          "dense layers (--allow-dense / allow_dense=True)")
    from .lower import lowering

    entry = lowering(getattr(target.lowering, fmt))
    why: dict[str, str] = {}
    if entry.rewrites and choices is None and select == "measure":
        from .select import choose

        chosen = choose(model, target, output, structure, batch, threads, progress=progress,
                        profile=profile if q.mode == "none" else None, quantization=q)
        choices = {name: c.key for name, c in chosen.items()}
        why = {name: c.reason for name, c in chosen.items()}
    if choices is not None and all(key[0] == "dense" for key in choices.values()) and entry.rewrites:
        # every weight measured faster dense: the file is the dense baseline, nothing to check
        dense_built = dense_built or build_file(model, target, output, structure, dense=True, batch=batch,
                                                quantization=q)
        built = type(dense_built)(dense_built.data, dense_built.formats,
                                  {**dense_built.options, "runtime": runtime_name, "variant": "sparse"}, "dense")
        check = False
    else:
        built = build_file(model, target, output, structure, choices=choices, fuse=not check, batch=batch,
                           quantization=q)
    warnings = []
    for ws in structure:
        fmt_ws = built.formats[ws.name]
        if ws.blocked and fmt_ws in DENSE_FORMATS and entry.name != "dense" and ws.name not in why:
            warnings.append(entry.warning(ws, fmt_ws))
    if warnings and not allow_dense:
        raise ExportError(f"{path.name} for target '{target.name}': " + "; ".join(warnings) +
                          " (--allow-dense / allow_dense=True writes it anyway)")
    run = _load(rt, built, target, path.name)
    err, rel = _verify(model, samples, run, target, path.name, reference, q)
    timing = None
    if check:
        dense_built = dense_built or build_file(model, target, output, structure, dense=True, batch=batch,
                                                quantization=q)
        # Fused attention is faster in some runtimes only (measured here on the transformer
        # example: 1.38x in OpenVINO, 1.13x in ONNX Runtime, 0.89x in LiteRT): where the
        # projections chose gather-matmul, the fused file is timed beside the per-layer one.
        fusion = _fusion_choices(structure, choices) if entry.rewrites else None
        fused_built = (build_file(model, target, output, structure, choices=fusion, batch=batch, quantization=q)
                       if fusion else None)
        fused = _fused(fused_built) if fused_built is not None else []
        if fused:
            fused_err = _verify(model, samples, _load(rt, fused_built, target, path.name), target, path.name,
                                reference, q)
        timing = _whole_file_check(built, dense_built, model, output, batch, threads, check_rounds, check_reps,
                                   alternative=fused_built if fused else None)
        if fused:
            plain_us, fused_us = timing["sparse_us"], timing.pop("alternative_us")
            note = (f"attention {'fused' if fused_us < plain_us else 'not fused'}: the fused file ran "
                    f"{fused_us:.0f} us, the file with each projection's own choice {plain_us:.0f} us")
            if fused_us < plain_us:
                built, (err, rel) = fused_built, fused_err
                timing.update(sparse_us=fused_us, speedup=timing["dense_us"] / fused_us)
            why.update({name: f"{why[name]}; {note}" if why.get(name) else note for name in fused})
            timing.update(attention_fused=fused_us < plain_us, fused_us=fused_us, per_layer_us=plain_us)
        # a lowered file must win by a margin: files that tie with dense at export time measured
        # down to 0.87x at 2 threads in later runs (bench/RESULTS.md); dense is the safe choice then
        if CHECK_MARGIN <= timing["speedup"] < CONFIRM_BELOW:
            # a narrow win is timed again, in another new process, and the worse of the two counts:
            # one check let through a file (MLP 2048, dsp-1x8, LiteRT b1 t2) that then measured
            # 0.91-0.93x three times, and a process's own state swings 2-thread timings
            again = _whole_file_check(built, dense_built, model, output, batch, threads, check_rounds, check_reps)
            timing["first_speedup"] = timing["speedup"]
            if again["speedup"] < timing["speedup"]:
                timing.update(dense_us=again["dense_us"], sparse_us=again["sparse_us"], speedup=again["speedup"])
        timing["kept_dense"] = timing["sparse_us"] * CHECK_MARGIN > timing["dense_us"]
        if progress:
            print(f"  {path.name}: {timing['sparse_us']:.0f} us vs dense {timing['dense_us']:.0f} us "
                  f"({timing['speedup']:.2f}x) in {rt.label} at batch {batch}, {threads} thread(s)",
                  file=sys.stderr, flush=True)
        if timing["kept_dense"]:
            reason = (f"kept dense: the lowered file ran {timing['sparse_us']:.0f} us vs dense {timing['dense_us']:.0f} us "
                      f"in {rt.label} at batch {batch}, {threads} thread(s) (not {CHECK_MARGIN - 1:.0%} faster)")
            warnings.append(f"{path.name}: {reason}")
            why = {ws.name: reason for ws in structure}
            options = {**dense_built.options, "runtime": runtime_name, "variant": "sparse", "kept_dense": True}
            built = type(built)(dense_built.data, dense_built.formats, options, "dense")
    for name, cut in built.narrowed.items():  # a dense layer computing only what a lowered one reads
        why[name] = f"{why[name]}; {cut.describe()}" if why.get(name) else cut.describe()
    layers = [_layer_entry(ws, built.formats[ws.name], why.get(ws.name, "")) for ws in structure]
    for lay in layers:  # never silent: a balanced lowering of an unbalanced mask does padded work
        if lay.get("padding"):
            lo, hi = lay["kept_per_block_column"]
            warnings.append(f"Layer '{lay['name']}': its block-columns keep {lo} to {hi} blocks; {lay['format']} pads "
                            f"every one to {hi} (+{lay['padding']:.0%} work; prune with a balanced schedule to avoid it)")
    record = ExportRecord("", output, target.name, "sparse", 0, 0, layers, err, rel, built.options,
                          warnings=warnings, point=point, check=timing)
    return _write(path, built.data, record)


def export_tflite(model, target, path, plan: SparsityPlan | None = None, allow_dense: bool = False,
                  dense: bool = False, samples: list | None = None, **kwargs) -> ExportRecord:
    """``export_file`` for output ``tflite`` (LiteRT)."""
    return export_file(model, target, path, "tflite", plan, allow_dense, dense, samples, **kwargs)


def export_onnx(model, target, path, plan: SparsityPlan | None = None, allow_dense: bool = False,
                dense: bool = False, samples: list | None = None, **kwargs) -> ExportRecord:
    """``export_file`` for output ``onnx`` (ONNX Runtime)."""
    return export_file(model, target, path, "onnx", plan, allow_dense, dense, samples, **kwargs)


# --------------------------------------------------------------------------- a folder

def file_name(model_name: str, output: str, dense: bool = False) -> str:
    """``<model>.tflite``, ``<model>.onnx``, ``<model>.openvino.onnx``; dense baselines
    ``<model>.dense.tflite`` and ``<model>.dense.onnx`` (OpenVINO's baseline is the latter)."""
    fmt = OUTPUTS[output][0]
    if dense:
        return f"{model_name}.dense.{fmt}"
    return f"{model_name}.{output}.{fmt}" if output != fmt else f"{model_name}.{fmt}"


def export(model, target, out_dir, formats=None, plan: SparsityPlan | None = None, allow_dense: bool = False,
           dense_baseline: bool = True, batch: int = 1, threads: int = 1, select: str = "measure",
           check: bool = True, progress: bool = False, profile=None,
           quantize: str | Quantization = "none") -> list[ExportRecord]:
    """Exports ``model`` for ``target`` into ``out_dir``: one sparse file per output, the dense
    baselines ``<name>.dense.<fmt>``, the Keras model ``<name>.keras``, and ``export.json``
    listing the records (their files by name: the folder can be moved).

    Args:
        model: a stripped block-sparse Keras model.
        target: target name, path or descriptor.
        out_dir: folder to write into (created). Every file is written, or none: they are built
            in a temporary folder beside it and moved in once all are verified; a failed export
            leaves a previous export there as it was.
        formats: outputs, any of ``tflite``, ``onnx``, ``openvino`` (default: ``default_outputs()``).
        plan: optional plan pinning the block structure.
        allow_dense: warn instead of failing when a sparse layer would run dense for want of a lowering.
        dense_baseline: also write the dense baselines.
        batch, threads: the deployment point the files are chosen and checked for.
        select: ``measure`` or ``target`` (see ``export_file``).
        check: the whole-file never-slower check.
        progress: print what is measured.
        profile: a tuning profile to choose lowerings from (see ``export_file``).
        quantize: ``none``, ``float16``, ``dynamic``, ``int8`` or a ``Quantization`` (see
            ``export_file``); the dense baselines are quantized alike.

    Returns:
        The records, sparse files first.
    """
    target = load_target(target)
    if profile is not None and profile.target != target.name:
        raise ValueError(f"the profile was measured for target '{profile.target}', not '{target.name}'")
    formats = tuple(formats) if formats else default_outputs()
    unknown = [f for f in formats if f not in OUTPUTS]
    if unknown or not formats:
        raise ValueError(f"format {unknown[0] if unknown else ''!r} is not one of: {', '.join(OUTPUTS)}")
    for name, value in (("batch", batch), ("threads", threads)):
        check_positive_int(value, name, f"exporting for target '{target.name}'")
    q = for_target(quantize, target)
    missing = [f for f in formats if not available(OUTPUTS[f][1])]
    if missing:
        raise ValueError(f"format {missing[0]!r} needs {runtime(OUTPUTS[missing[0]][1]).package}, which is not "
                         "installed (pip install it, or leave the format out)")
    out = Path(out_dir)
    with atomic_dir(out) as work:  # every file of the export, or none
        records = _export_into(work, model, target, formats, plan, allow_dense, dense_baseline, batch, threads,
                               select, check, progress, profile, q)
        for r in records:  # where the files will be
            r.path, r.options_path = str(out / Path(r.path).name), str(out / Path(r.options_path).name)
        descriptor = target.to_dict()
        descriptor.pop("source", None)
        (work / "export.json").write_text(json.dumps(
            {"target": target.name, "target_descriptor": descriptor, "model": model.name,
             "point": {"batch": batch, "threads": threads}, "select": select, "quantize": q.mode,
             # file names, relative to the folder: it can move (`blockprune run` stages it elsewhere)
             "records": [{**r.to_dict(), "path": Path(r.path).name, "options_path": Path(r.options_path).name}
                         for r in records]}, indent=2) + "\n")
    return records


def _export_into(work: Path, model, target, formats, plan, allow_dense, dense_baseline, batch, threads, select, check,
                 progress, profile, q: Quantization) -> list[ExportRecord]:
    """Writes the files of ``export`` (all but ``export.json``) into the folder ``work``."""
    samples = _samples(model, batch, q)
    reference = keras_outputs(model, samples)
    structure = _check_structure(model, target, plan, None)  # once, for every file
    dense_built = {}
    records = []
    for output in formats:
        fmt = OUTPUTS[output][0]
        if fmt not in dense_built:  # one dense baseline per file format (OpenVINO reads the .onnx one)
            dense_built[fmt] = build_file(model, target, fmt, structure, dense=True, batch=batch, quantization=q)
        records.append(export_file(model, target, work / file_name(model.name, output), output, plan, allow_dense,
                                   samples=samples, structure=structure, batch=batch, threads=threads,
                                   select=select, check=check, dense_built=dense_built[fmt], reference=reference,
                                   progress=progress, profile=profile, quantize=q))
    if dense_baseline:
        for fmt in dict.fromkeys(OUTPUTS[o][0] for o in formats):
            records.append(export_file(model, target, work / file_name(model.name, fmt, dense=True), fmt,
                                       plan, allow_dense, dense=True, samples=samples, structure=structure,
                                       batch=batch, threads=threads, dense_built=dense_built[fmt],
                                       reference=reference, quantize=q))
    # The Keras model travels with its exports, so `blockprune bench` can check outputs later.
    from .pruning.api import save_model_atomic

    save_model_atomic(model, work / f"{model.name}.keras")
    return records

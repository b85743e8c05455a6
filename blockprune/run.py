"""``blockprune run``: the whole pipeline in one command, with a report a person can read.

Data -> dense model (trained here unless given) -> plan -> prune with a cubic schedule and
fine-tune -> strip and verify -> pack -> export ``.tflite`` and ``.onnx`` -> benchmark ->
``report.md`` with accuracy dense vs sparse, the per-layer plan, sizes, latencies and plots.

Everything is built in a temporary folder beside ``out`` and moved into place only when the
run has finished, so an interrupted run (Ctrl-C) leaves no half-written report and can simply
be run again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ._atomic import atomic_path
from .checks import check_positive_int, check_sparsity

__all__ = ["RunResult", "run", "narrow_overrides", "input_features", "NARROW_INPUTS", "NARROW_SPARSITY"]

#: Layers reading fewer input features than this are pruned to at most ``NARROW_SPARSITY``:
#: docs/DESIGN.md section 5 measured most of the accuracy loss of wide blocks in the narrow
#: 64-input first layer of the digits MLP (a cheap layer, so little speed is lost), and in the
#: 32-input-channel convolution of a small CNN under channel blocks. A convolution pruned in
#: channel blocks reads its input channels (a block keeps or drops all of a channel's taps).
NARROW_INPUTS = 128
NARROW_SPARSITY = 0.5


@dataclass
class RunResult:
    """Where the report is and the headline numbers; ``kept_dense`` lists the ``speedups`` keys
    whose file is its dense baseline (no lowering won there)."""

    out: Path
    report: Path
    dense_accuracy: float | None
    sparse_accuracy: float | None
    speedups: dict
    kept_dense: list = ()


def _say(message: str, verbose: bool) -> None:
    if verbose:
        print(message, flush=True)


def input_features(lp) -> int:
    """What a mask of plan entry ``lp`` chooses among on the input side: the rows of its view,
    or a convolution's input channels when it is pruned in channel blocks."""
    rows = lp.view_shape[0]
    return rows // lp.view.taps if lp.view.is_channel_major else rows


def narrow_overrides(p, sparsity: float) -> dict:
    """The overrides that cap plan ``p``'s narrow-input weights (``input_features`` below
    ``NARROW_INPUTS``) at ``NARROW_SPARSITY``, as ``run`` applies them (``{}`` when no weight
    is capped)."""
    return {lp.name: {"sparsity": min(NARROW_SPARSITY, sparsity)} for lp in p.pruned_layers
            if lp.view_shape and input_features(lp) < NARROW_INPUTS and lp.sparsity > NARROW_SPARSITY}


# What ``quantize="auto"`` exports beside float32: the int8 dense files are the baselines users try
# first, and on CPUs often the fastest dense files (full-int8 and dynamic-range each win somewhere).
AUTO_QUANTIZE = ("dynamic", "int8")


def run(out="blockprune-out", model=None, data=None, target: str = "cpu-wide", sparsity: float = 0.9,
        epochs: int = 30, dense_epochs: int = 30, batch_size: int = 32, seed: int = 0, bench_rounds: int = 5,
        bench_reps: int = 100, verbose: bool = True, points=None, permute: bool = True, distill=None,
        quantize=(), quantize_aware: bool = False, block_pooling_type: str = "AVG",
        lr_decay: bool = False) -> RunResult:
    """Runs the whole pipeline and writes a report folder.

    Args:
        out: the report folder (replaced when the run succeeds).
        model: a trained ``.keras`` path or Keras model; default: the built-in MLP for the data
            (digits: 64 -> 1024 -> 1024 -> 10; animal-shapes: 784 -> 1024 -> 1024 -> 10), trained
            here for ``dense_epochs``.
        data: an ``.npz`` path (``x_train``, ``y_train``, ``x_test``, ``y_test``), a built-in
            dataset's name (``blockprune.data.BUILTIN_DATA``) or a ``Dataset``; default:
            scikit-learn's bundled digits.
        target: target name or ``.toml`` path.
        sparsity: plan-wide sparsity (narrow-input layers capped at ``NARROW_SPARSITY``).
        epochs: pruning + fine-tuning epochs.
        dense_epochs: epochs of dense training for the built-in model.
        batch_size, seed: training settings.
        bench_rounds, bench_reps: benchmark repetitions.
        verbose: print progress.
        points: deployment points ``[(batch, threads), ...]`` to export and measure (default:
            batch 1 and 8, 1 thread and all cores).
        permute, distill, quantize_aware, block_pooling_type, lr_decay: as for
            ``blockprune.pruning.finetune``.
        quantize: quantized exports to make beside the float32 ones: any of ``float16``,
            ``dynamic``, ``int8`` (full-integer, calibrated on the first training samples), as a
            list or comma-separated. Each is benchmarked against its own-precision dense file and
            the fastest dense file of any precision, and its test accuracy is reported. A mode
            asked for by name that fails to export stops the run; ``"auto"`` (the CLI's default)
            asks for ``AUTO_QUANTIZE`` and reports a mode that fails instead of stopping.

    Returns:
        A ``RunResult``.
    """
    import keras

    from .bench import bench, default_threads, merge_results, table, write_reports
    from .data import Dataset, load_data, save_npz
    from .examples import example_model, train_dense
    from .export import ExportError, export
    from .packfile import inspect_table, pack_model, save_packed
    from .plan import plan as make_plan
    from .quantize import Quantization, calibration_samples
    from .pruning.api import save_model_atomic
    from .pruning.finetune import finetune
    from .targets import load_target

    started = time.time()
    target = load_target(target)
    # bad settings fail here, not after the dense model has trained
    check_sparsity(sparsity, f"target '{target.name}'")
    for name, value in (("epochs", epochs), ("dense_epochs", dense_epochs), ("batch_size", batch_size),
                        ("bench_rounds", bench_rounds), ("bench_reps", bench_reps)):
        check_positive_int(value, name, f"run for target '{target.name}'")
    modes = _quantize_modes(quantize, target.name)
    tolerant = _is_auto(quantize)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        keras.utils.set_random_seed(seed)
        dataset = data if isinstance(data, Dataset) else load_data(data)
        _say(f"[1/7] data: {dataset.name}, {len(dataset.x_train)} training samples", verbose)
        if model is None:
            dense = example_model("animal1024" if dataset.name == "animal-shapes" else "digits1024", seed=seed)
            _say(f"[2/7] training the built-in dense model '{dense.name}' for {dense_epochs} epochs", verbose)
            train_dense(dense, dataset, epochs=dense_epochs, batch_size=batch_size, seed=seed, verbose=0)
        else:
            dense = model if isinstance(model, keras.Model) else keras.models.load_model(model, compile=False)
            _say(f"[2/7] dense model '{dense.name}' from {model if not isinstance(model, keras.Model) else 'memory'}",
                 verbose)
        save_model_atomic(dense, work / "dense.keras")
        save_npz(dataset, work / "data.npz")

        p = make_plan(dense, target, sparsity=sparsity)
        narrow = narrow_overrides(p, sparsity)
        if narrow:
            p = make_plan(dense, target, sparsity=sparsity, overrides=narrow)
        p.save(work / "plan.json")
        _say(f"[3/7] plan for '{target.name}':\n{p.summary()}", verbose)

        _say(f"[4/7] pruning and fine-tuning for {epochs} epochs", verbose)
        result = finetune(dense, p, dataset, epochs=epochs, batch_size=batch_size, verbose=2 if verbose else 0,
                          permute=permute, distill=distill, quantize_aware=quantize_aware,
                          block_pooling_type=block_pooling_type, lr_decay=lr_decay)
        for q in result.permutations:
            _say(f"      regrouped the outputs of '{q.layer}' (and the inputs of '{q.reader}'): {q.gain:.3f}x the "
                 "weight magnitude kept, same function", verbose)
        if not result.verification.ok:
            raise ValueError(f"the pruned model does not have the planned block structure for target '{target.name}':\n"
                             + result.verification.summary())
        sparse = result.model
        save_model_atomic(sparse, work / "sparse.keras")

        _say("[5/7] packing and exporting (one folder per deployment point; each layer's lowering chosen by "
             "measurement there)", verbose)
        packed = pack_model(sparse, target)
        save_packed(work / "weights.safetensors", packed, {"target": target.name, "model": sparse.name})
        points = points or [(b, t) for b in (1, 8) for t in default_threads()]
        quantizations = [Quantization(m, calibration_samples(sparse, dataset, target.name) if m == "int8" else None)
                         for m in modes]
        records, results, folders, not_exported = [], [], {}, {}
        for b, t in points:
            for q in quantizations:
                if q.mode in not_exported:
                    continue
                folder = work / "export" / (f"b{b}-t{t}" + ("" if q.mode == "none" else f"-{q.mode}"))
                try:
                    records += export(sparse, target, folder, plan=p, batch=b, threads=t, progress=verbose, quantize=q)
                except ExportError as e:
                    if not tolerant or q.mode == "none":
                        raise
                    not_exported[q.mode] = str(e)
                    shutil.rmtree(folder, ignore_errors=True)
                    _say(f"      no {q.label} files: {e}", verbose)
                    continue
                folders.setdefault(q.label, folder)
                _say(f"[6/7] benchmarking the {q.label} files exported for batch {b}, {t} thread(s) (dense vs "
                     "sparse, in a new process)", verbose)
                # timed where nothing else has run, as a deployment runs them: this process, after
                # training and converting, read a file that ran 1.31x elsewhere as 0.87x
                results.append(bench(folder, batches=(b,), threads=(t,), rounds=bench_rounds, reps=bench_reps,
                                     progress=verbose, fresh_process=True))
        measured = merge_results(results)
        file_accuracy = _file_accuracy(folders, dataset) if len(modes) > 1 else []
        write_reports([measured], work / "bench")

        dense_acc = (result.dense_metrics or {}).get("accuracy")
        sparse_acc = (result.sparse_metrics or {}).get("accuracy")
        report = _report(p, result, records, measured, inspect_table(packed), narrow, dataset, dense, time.time() - started,
                         table(measured), file_accuracy, not_exported)
        with atomic_path(work / "report.md") as tmp:
            tmp.write_text(report)
        key = (lambda c: f"{c.runtime} {c.precision} b{c.batch} t{c.threads}") if len(modes) > 1 else \
            (lambda c: f"{c.runtime} b{c.batch} t{c.threads}")
        summary = {"target": target.name, "sparsity": sparsity, "dense_accuracy": dense_acc,
                   "sparse_accuracy": sparse_acc, "file_accuracy": file_accuracy, "not_exported": not_exported,
                   "speedups": {key(c): c.speedup for c in measured.configs},
                   "kept_dense": [key(c) for c in measured.configs if c.same_bytes]}
        with atomic_path(work / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")

        _say("[7/7] writing the report", verbose)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            work.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return RunResult(out, out / "report.md", dense_acc, sparse_acc, summary["speedups"], summary["kept_dense"])


def _is_auto(quantize) -> bool:
    return isinstance(quantize, str) and quantize.strip() == "auto"


def _quantize_modes(quantize, target_name: str) -> tuple[str, ...]:
    """``("none", ...)``: float32 first, then the quantized exports asked for (each once)."""
    from .quantize import QUANTIZE_MODES

    if _is_auto(quantize):
        quantize = AUTO_QUANTIZE
    asked = [m.strip() for m in quantize.split(",") if m.strip()] if isinstance(quantize, str) else list(quantize or ())
    bad = [m for m in asked if m not in QUANTIZE_MODES]
    if bad:
        raise ValueError(f"quantize={bad[0]!r} is not one of: {', '.join(QUANTIZE_MODES[1:])} (or none, or auto alone); "
                         f"run for target '{target_name}', nothing was trained")
    return tuple(dict.fromkeys(["none"] + [m for m in asked if m != "none"]))


def _file_accuracy(folders: dict, dataset) -> list[dict]:
    """Test accuracy (or error) of every sparse file of the first deployment point's folder of
    each precision, run in its runtime."""
    from .runtimes import evaluate_file

    if dataset.x_test is None:
        return []
    rows = []
    for precision, folder in folders.items():
        manifest = json.loads((folder / "export.json").read_text())
        for r in manifest["records"]:
            if r["variant"] != "sparse":
                continue
            path = folder / Path(r["path"]).name
            metrics = evaluate_file(path, dataset.x_test, dataset.y_test, dataset.n_classes)
            rows.append({"file": f"{folder.name}/{path.name}", "runtime": r["runtime_options"]["runtime"],
                         "weights": precision, **metrics})
    return rows


def _report(p, result, records, measured, packed_table, narrow, dataset, dense, seconds, bench_table,
            file_accuracy=(), not_exported=None) -> str:
    from .bench import split_kept_dense
    from .export import CHECK_MARGIN

    t = p.target
    dense_acc = (result.dense_metrics or {}).get("accuracy")
    sparse_acc = (result.sparse_metrics or {}).get("accuracy")
    lines = [f"# blockprune report: '{dense.name}' on target '{t.name}'", "",
             f"{t.description}. Hardware: {t.hardware}.", ""]
    if dense_acc is not None:
        lines += ["## Accuracy", "", "| model | test accuracy |", "|---|---|",
                  f"| dense | {dense_acc:.2%} |", f"| block-sparse | {sparse_acc:.2%} ({(sparse_acc - dense_acc) * 100:+.2f} points) |",
                  "", f"Data: {dataset.name}, {len(dataset.x_train)} training / {len(dataset.x_test)} test samples.", ""]
        if file_accuracy:
            lines += ["The exported sparse files, each run in its runtime on the test split:", "",
                      "| file | runtime | weights | test accuracy | vs the float Keras model |", "|---|---|---|---|---|"]
            for a in file_accuracy:
                lines.append(f"| `{a['file']}` | {a['runtime']} | {a['weights']} | {a['accuracy']:.2%} | "
                             f"{(a['accuracy'] - sparse_acc) * 100:+.2f} points |")
            lines.append("")
    if measured.configs:
        several = len({c.precision for c in measured.configs}) > 1

        def where(c):
            weights = f" {c.precision}" if several else ""
            return f"{c.runtime}{weights}, batch {c.batch}, {c.threads} thread{'s' if c.threads > 1 else ''}"

        lowered, copies = split_kept_dense(measured.configs)
        lines += ["## Headline", "", "Each file was exported for the batch and threads it is timed at."]
        if lowered:
            best = max(lowered, key=lambda c: c.speedup)
            worst = min(lowered, key=lambda c: c.speedup)
            lines[-1] += (f" Best speedup over its own runtime's dense file {best.speedup:.2f}x ({where(best)}); "
                          f"worst {worst.speedup:.2f}x ({where(worst)}).")
        top = max(measured.configs, key=lambda c: c.vs_fastest_dense)
        bottom = min(measured.configs, key=lambda c: c.vs_fastest_dense)
        lines[-1] += (f" Against the fastest dense file on this machine at the same batch and threads "
                      f"(any runtime and precision measured), the best is {top.vs_fastest_dense:.2f}x ({where(top)}, "
                      f"fastest dense: {top.fastest_dense}) and the worst {bottom.vs_fastest_dense:.2f}x "
                      f"({where(bottom)}, fastest dense: {bottom.fastest_dense}). {measured.sparsity:.1%} of the "
                      f"matmul weights are zero (ideal {measured.ideal_speedup:.2f}x).")
        if copies:

            lo, hi = min(c.speedup for c in copies), max(c.speedup for c in copies)
            lines[-1] += (f" {len(copies)} configuration{'s' if len(copies) > 1 else ''} kept the dense file (no "
                          f"lowering was {CHECK_MARGIN - 1:.0%} faster there): {'; '.join(where(c) for c in copies)}. "
                          f"Each is its dense baseline, byte for byte; timed against it, it read {lo:.2f}-{hi:.2f}x, "
                          "the noise of timing one file twice.")
        lines.append("")
    if not_exported:
        lines += ["Not exported (`--quantize auto` reports a quantization that fails instead of stopping):", ""]
        lines += [f"- {mode}: {why}" for mode, why in not_exported.items()]
        lines.append("")
    lines += ["## Plan", "", "```", p.summary(), "```", ""]
    if narrow:
        lines += [f"Layers reading fewer than {NARROW_INPUTS} input features (convolutions in channel blocks: input "
                  f"channels) were capped at "
                  f"{NARROW_SPARSITY:.0%} sparsity ({', '.join(narrow)}): narrow layers carry most of the accuracy "
                  "loss of wide blocks and little of the latency.", ""]
    lines += ["## Block structure of the shipped model", "", "```", result.verification.summary(), "```", "",
              "## Packed weights (`weights.safetensors`)", "", "```", packed_table, "```", "",
              "## Latency and size", "", bench_table, "", "![latency](bench/latency.png)", "",
              "## Artifacts", "",
              "| file | what |", "|---|---|",
              "| `dense.keras`, `sparse.keras` | the dense model and the stripped block-sparse model |",
              "| `plan.json` | the plan (`blockprune.SparsityPlan.load`) |",
              "| `weights.safetensors` | packed weights (`blockprune inspect`) |",
              "| `export/bB-tT/` | per deployment point (batch B, T threads): `.tflite`, `.onnx` and `.openvino.onnx`, "
              "sparse and dense, each with `<file>.runtime.json` run options; `export.json` says how each layer runs "
              "and why; `export/bB-tT-MODE/` the same quantized (`--quantize`), dense baselines alike |",
              "| `bench/` | `bench.json`, `bench.md`, plots |",
              "| `data.npz` | the data used |", "",
              f"Run time: {seconds:.0f} s."]
    for r in records:
        for w in r.warnings:
            lines.append(f"\nWarning ({Path(r.path).name}): {w}")
    return "\n".join(lines) + "\n"

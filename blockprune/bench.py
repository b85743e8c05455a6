"""``blockprune bench``: latency and size of exported models, dense vs sparse, in one run.

For every exported pair (``<name>.<fmt>`` and its dense baseline ``<name>.dense.<fmt>``) and
every batch size and thread count: warm-up, then ``rounds`` rounds of ``reps`` timed calls,
dense and sparse interleaved so drifts in machine load hit both alike. Reported per
configuration: median, p10 and p90 of the call times, the speedup (dense median / sparse
median), and the ideal ``1 / (1 - sparsity)`` beside it. Each file's output is compared with
the Keras model saved in the export folder. Targets whose hardware is absent get the
cost-model estimate, labelled as such, next to what the local CPU measured.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .targets import parse_target

__all__ = ["BenchConfig", "BenchResult", "bench", "compare_across", "estimate_export", "merge_results", "split_kept_dense", "write_reports", "plot_latency", "plot_speedup_vs_sparsity"]


@dataclass
class BenchConfig:
    """One measured configuration (a sparse file and its dense baseline in one runtime).

    ``lowering`` says how the file's layers run (e.g. ``gather-matmul x2, dense x1``);
    ``exported_for`` the deployment point the file was chosen for; ``precision`` its weights'
    (``float32``, ``float16``, ``dynamic``, ``int8``: ``blockprune.quantize``), its dense
    baseline's alike; ``vs_fastest_dense`` the sparse file against the fastest dense file
    measured at the same batch and threads in any runtime and precision of this run
    (``fastest_dense`` names it); ``same_bytes`` that the "sparse" file is its dense baseline
    (kept dense), so its speedup is the noise of timing one file twice.
    """

    runtime: str
    format: str
    batch: int
    threads: int
    dense_median_us: float
    sparse_median_us: float
    speedup: float
    dense_p10_us: float
    dense_p90_us: float
    sparse_p10_us: float
    sparse_p90_us: float
    lowering: str
    exported_for: str = ""
    vs_fastest_dense: float | None = None
    fastest_dense: str = ""
    precision: str = "float32"
    same_bytes: bool = False


def split_kept_dense(configs) -> tuple[list[BenchConfig], list[BenchConfig]]:
    """``(lowered, copies)``: the configurations whose sparse file differs from its dense baseline,
    and those whose file is the baseline itself (kept dense; their speedup is timing noise)."""
    return [c for c in configs if not c.same_bytes], [c for c in configs if c.same_bytes]


@dataclass
class BenchResult:
    """Everything ``bench`` measured for one export folder."""

    export_dir: str
    model: str
    target: str
    native: bool
    sparsity: float
    ideal_speedup: float
    configs: list[BenchConfig] = field(default_factory=list)
    sizes: list[dict] = field(default_factory=list)
    agreement: list[dict] = field(default_factory=list)
    estimate: dict | None = None
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _runs_at(record: dict, batch: int) -> bool:
    """Whether the file of an export record runs at ``batch`` (one with a recurrent loop only at its own)."""
    fixed = record["runtime_options"].get("fixed_batch")
    return fixed is None or fixed == batch


def _pairs(export_dir: Path) -> tuple[dict, list[tuple[dict, dict]]]:
    from .convert import OUTPUTS

    manifest_path = export_dir / "export.json"
    if not manifest_path.is_file():
        raise ValueError(f"{export_dir}: no export.json; export the model first (blockprune export ... -o DIR)")
    try:
        manifest = json.loads(manifest_path.read_text())
        records = manifest["records"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{manifest_path}: not an export manifest ({e})") from None
    pairs = []
    for sparse in (r for r in records if r["variant"] == "sparse"):
        fmt = OUTPUTS.get(sparse["format"], (sparse["format"],))[0]
        dense = next((r for r in records if r["variant"] == "dense" and r["format"] == fmt), None)
        if dense is None:
            raise ValueError(f"{export_dir}: {Path(sparse['path']).name} has no dense baseline; export without "
                             "--no-dense-baseline to benchmark it")
        pairs.append((sparse, dense))
    return manifest, pairs


def _layout(record: dict, same_bytes: bool = False) -> str:
    """How a file's layers run, counted: ``gather-matmul x2, dense x1``."""
    counts: dict[str, int] = {}
    for lay in record["layers"]:
        counts[lay["format"]] = counts.get(lay["format"], 0) + 1
    text = ", ".join(f"{k} x{v}" for k, v in counts.items()) or "-"
    if record["runtime_options"].get("kept_dense"):
        text = f"kept dense ({text})"
    # the same file timed twice: its "speedup" is the measurement's noise
    return f"{text}; same bytes as the dense file" if same_bytes else text


def _precision(record: dict) -> str:
    """The precision of an exported file's weights (exports before ``--quantize``: float32, or
    dynamic-range int8 for an int8 target)."""
    options = record["runtime_options"]
    mode = options.get("quantize") or ("dynamic" if options.get("dtype") == "int8" else "none")
    return "float32" if mode == "none" else mode


def _local(export_dir: Path, record: dict) -> Path:
    """The record's file inside ``export_dir`` (the folder may have moved since export)."""
    return export_dir / Path(record["path"]).name


def _overall_sparsity(record: dict) -> float:
    total = sum(lay.get("n_weights", 0) for lay in record["layers"])
    zero = sum(lay.get("n_weights", 0) * lay["sparsity"] for lay in record["layers"])
    return zero / total if total else 0.0


#: Ops that run other subgraphs: the estimate reads the main subgraph only.
_CONTROL_FLOW = {"WHILE", "IF", "CALL_ONCE"}


def _op_us(tflite_bytes: bytes, target) -> float | None:
    """Estimated microseconds of every op of a dense ``.tflite`` (batch 1) on the target: a
    roofline per op, its FLOPs (matmuls and convolutions: 2 x outputs x reduction length; other
    ops: one per output value) against the bytes of every tensor it reads and writes. None for a
    file with control flow (a recurrent loop): its loop body is not in the op list."""
    from .cost import roofline_us
    from .runtimes import runtime

    def values(t) -> int:
        return int(np.prod([max(1, int(d)) for d in t["shape"]]))

    reduction = {"FULLY_CONNECTED": lambda ins: ins[1]["shape"][-1],  # weights [out, in]
                 "BATCH_MATMUL": lambda ins: ins[0]["shape"][-1],
                 "CONV_2D": lambda ins: np.prod(ins[1]["shape"][1:]),  # filter [out, kh, kw, in]
                 "DEPTHWISE_CONV_2D": lambda ins: np.prod(ins[1]["shape"][1:3]),  # [1, kh, kw, c]
                 "CONV_3D": lambda ins: np.prod(ins[1]["shape"][:-1])}  # [kd, kh, kw, in, out]
    ops, tensors = runtime("litert").ops(tflite_bytes, run=True)
    if any(op["op_name"] in _CONTROL_FLOW for op in ops):
        return None
    total = 0.0
    for op in ops:
        ins = [tensors[i] for i in op["inputs"] if i >= 0]
        outs = [tensors[i] for i in op["outputs"] if i >= 0]
        out_values = sum(values(t) for t in outs)
        k = reduction[op["op_name"]](ins) if op["op_name"] in reduction and len(ins) > 1 else None
        flops = 2.0 * out_values * int(k) if k else float(out_values)
        nbytes = sum(values(t) * np.dtype(t["dtype"]).itemsize for t in ins + outs)
        total += roofline_us(flops, nbytes, target)
    return total


def _estimate(target, record: dict, dense_tflite: Path | None) -> dict | None:
    """Cost-model latency of the model on the target's own hardware, dense vs block-sparse.

    The whole model when its dense ``.tflite`` is at hand (every op, from the file); each pruned
    weight's matmul then runs at the target's block-sparse estimate instead of its dense one.
    Without the file, the matmuls alone, and the record says so.
    """
    from .cost import estimate

    dense = sparse = 0.0
    for lay in record["layers"]:
        if not lay.get("view_shape"):
            continue
        view, positions = tuple(lay["view_shape"]), int(lay.get("positions", 1))
        if lay.get("block_shape"):
            e = estimate(view, tuple(lay["block_shape"]), lay.get("block_sparsity", 0.0), target, positions=positions)
            dense, sparse = dense + e.dense_us, sparse + e.sparse_us
        else:  # not pruned: dense on both sides
            e = estimate(view, (1, 1), 0.0, target, positions=positions)
            dense, sparse = dense + e.dense_us, sparse + e.dense_us
    if not sparse:
        return None
    out = {"hardware": target.hardware, "matmul_dense_us": dense, "matmul_sparse_us": sparse,
           "matmul_speedup": dense / sparse}
    whole = _op_us(dense_tflite.read_bytes(), target) if dense_tflite is not None and dense_tflite.is_file() else None
    if whole is None:  # no dense .tflite, or one whose loops the estimate cannot read
        return {**out, "kind": "cost-model ESTIMATE of the matmuls only (batch 1), not measured",
                "dense_us": dense, "sparse_us": sparse, "speedup": dense / sparse}
    whole_sparse = max(whole - (dense - sparse), sparse)  # the ops around the matmuls stay as they are
    return {**out, "kind": "cost-model ESTIMATE of the whole model (batch 1), not measured",
            "dense_us": whole, "sparse_us": whole_sparse, "speedup": whole / whole_sparse}


def _manifest_target(export_dir: Path, manifest: dict):
    """The target descriptor an export folder records, or None (older folders)."""
    return parse_target(manifest["target_descriptor"], f"{export_dir}/export.json") \
        if "target_descriptor" in manifest else None


def _folder_estimate(export_dir: Path, target, pairs) -> dict | None:
    if target is None or target.native or not pairs:
        return None
    dense_tflite = next((d for _, d in pairs if d["format"] == "tflite"), None)
    return _estimate(target, pairs[0][0], dense_tflite and _local(export_dir, dense_tflite))


def estimate_export(export_dir) -> dict | None:
    """The cost-model estimate of an export folder's model on its target's own hardware (None
    for a target whose hardware is here, or a folder without a sparse file)."""
    export_dir = Path(export_dir)
    manifest, pairs = _pairs(export_dir)
    return _folder_estimate(export_dir, _manifest_target(export_dir, manifest), pairs)


def bench(export_dir, batches=(1, 8), threads=(1, 2), rounds: int = 5, reps: int = 50, warmup: int = 10,
          progress: bool = True, fresh_process: bool = False) -> BenchResult:
    """Measures every dense/sparse pair in an export folder.

    Args:
        export_dir: a folder written by ``blockprune.export.export`` (with dense baselines and
            the Keras model).
        batches: batch sizes to measure.
        threads: runtime thread counts to measure.
        rounds, reps, warmup: timing repetitions (per configuration and file).
        progress: show a progress bar on the terminal.
        fresh_process: time each dense/sparse pair in a new Python process that runs nothing
            else, as a deployment does (``timing.latencies_in_fresh_process``). A process that
            has trained and converted models times differently: MobileNetV2's cpu-wide file read
            1.37x inside the suite and 1.56-1.63x in three new processes (docs/DESIGN.md section 4).

    Returns:
        A ``BenchResult``.

    Raises:
        ValueError: the folder is not an export folder, or a bad batch / thread count.
    """
    import keras

    from .cost import ideal_speedup
    from .runtimes import compare, keras_outputs, make_runner, outputs_of, read_options, runtime, sample_inputs
    from .timing import MIN_ROUND_S, interleaved_latencies, latencies_in_fresh_process

    export_dir = Path(export_dir)
    for name, values in (("batch", batches), ("threads", threads)):
        if not values or any(not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{name} values must be positive integers, got {list(values)}")
    manifest, pairs = _pairs(export_dir)
    model_path = export_dir / f"{manifest['model']}.keras"
    if not model_path.is_file():
        raise ValueError(f"{export_dir}: no {model_path.name} to compare outputs with; re-export the model")
    model = keras.models.load_model(model_path, compile=False)
    target = _manifest_target(export_dir, manifest)
    first = pairs[0][0] if pairs else None
    sparsity = _overall_sparsity(first) if first else 0.0
    result = BenchResult(str(export_dir), manifest["model"], manifest["target"], bool(target and target.native),
                         sparsity, ideal_speedup(sparsity))
    result.estimate = _folder_estimate(export_dir, target, pairs)
    jobs = [(s, d, b, t) for s, d in pairs for b in batches for t in threads if _runs_at(s, b) and _runs_at(d, b)]
    for s, _ in pairs:
        fixed = s["runtime_options"].get("fixed_batch")
        if fixed and any(b != fixed for b in batches):
            result.skipped.append(f"{Path(s['path']).name}: runs only at batch {fixed} (a recurrent loop is converted "
                                  "for a fixed batch); other batches not measured")
    interactive = progress and sys.stdout.isatty()
    bar = keras.utils.Progbar(len(jobs), unit_name="configuration") if interactive and jobs else None
    x = sample_inputs(model, max(batches), seed=1)[0]
    # inputs and Keras's outputs, once per batch (None: any batch): every file is compared with them
    references = {None: ([x], keras_outputs(model, [x]))}
    point = manifest.get("point")
    exported_for = f"b{point['batch']} t{point['threads']}" if point else ""
    checked = set()
    for sparse, dense in pairs:
        rt = sparse["runtime_options"]["runtime"]
        result.sizes.append({"format": sparse["format"], "weights": _precision(sparse),
                             "dense_bytes": dense["bytes"], "sparse_bytes": sparse["bytes"],
                             "dense_gzip_bytes": dense["gzip_bytes"], "sparse_gzip_bytes": sparse["gzip_bytes"]})
        for rec in (sparse, dense):
            name = Path(rec["path"]).name
            if (name, rt) in checked:
                continue
            checked.add((name, rt))
            fixed = rec["runtime_options"].get("fixed_batch")
            if fixed not in references:
                inputs = [sample_inputs(model, fixed, seed=1)[0]]
                references[fixed] = (inputs, keras_outputs(model, inputs))
            xs, reference = references[fixed]
            err, rel = compare(reference, outputs_of(make_runner(_local(export_dir, rec), runtime_name=rt), model, xs))
            result.agreement.append({"file": name, "runtime": runtime(rt).label, "max_abs_error": err,
                                     "rel_error": rel})
    for i, (sparse, dense, batch, n_threads) in enumerate(jobs):
        rt = sparse["runtime_options"]["runtime"]
        x = sample_inputs(model, batch)[0]
        data = {kind: _local(export_dir, rec).read_bytes() for kind, rec in (("dense", dense), ("sparse", sparse))}
        if fresh_process:
            files = {kind: (data[kind], read_options(_local(export_dir, rec)))
                     for kind, rec in (("dense", dense), ("sparse", sparse))}
            stats = latencies_in_fresh_process(files, rt, n_threads, [x], rounds, reps, warmup)
        else:
            runners = {"dense": make_runner(_local(export_dir, dense), n_threads, runtime_name=rt),
                       "sparse": make_runner(_local(export_dir, sparse), n_threads)}
            stats = interleaved_latencies(runners, x, rounds, reps, warmup, min_round_s=MIN_ROUND_S)
        label = runtime(rt).label
        (dm, d10, d90), (sm, s10, s90) = stats["dense"], stats["sparse"]
        same = data["sparse"] == data["dense"]
        result.configs.append(BenchConfig(label, sparse["format"], batch, n_threads, dm, sm, dm / sm, d10, d90, s10,
                                          s90, _layout(sparse, same), exported_for, precision=_precision(sparse),
                                          same_bytes=same))
        if bar:
            bar.update(i + 1)
        elif progress:  # a log, not a terminal: one line per configuration
            print(f"  [{i + 1}/{len(jobs)}] {label} batch {batch} threads {n_threads}: {dm / sm:.2f}x", flush=True)
    _against_fastest_dense(result.configs)
    return result


def _against_fastest_dense(configs: list[BenchConfig]) -> None:
    """Sets each configuration's speedup over the fastest dense file measured at its batch and
    threads, in any runtime and precision."""
    for c in configs:
        same = [o for o in configs if (o.batch, o.threads) == (c.batch, c.threads)]
        fastest = min(same, key=lambda o: o.dense_median_us)
        c.vs_fastest_dense = fastest.dense_median_us / c.sparse_median_us
        c.fastest_dense = f"{fastest.runtime} {fastest.precision}"


def compare_across(results: list[BenchResult]) -> None:
    """Compares every configuration with the fastest dense file of its model measured at its
    batch and threads in any of ``results`` (export folders of one model: float and quantized
    exports, or one per deployment point)."""
    for model in {r.model for r in results}:
        _against_fastest_dense([c for r in results if r.model == model for c in r.configs])


def merge_results(results: list[BenchResult]) -> BenchResult:
    """One result from several export folders of the same model (e.g. one per deployment point
    and precision): every configuration, the sizes and agreement of the first folder of each
    precision, and each configuration compared with the fastest dense file measured at its
    batch and threads."""
    import dataclasses

    first = results[0]
    by_precision = {}
    for r in results:
        by_precision.setdefault(r.configs[0].precision if r.configs else "", r)
    merged = dataclasses.replace(first, configs=[c for r in results for c in r.configs],
                                 sizes=[s for r in by_precision.values() for s in r.sizes],
                                 agreement=[a for r in by_precision.values() for a in r.agreement])
    _against_fastest_dense(merged.configs)
    return merged


# --------------------------------------------------------------------------- reports

def table(result: BenchResult) -> str:
    """The terminal / markdown table of one result."""
    where = "this machine's CPU" if result.native else "this machine's CPU, emulating the target"
    lines = [f"Model '{result.model}', target '{result.target}', {result.sparsity:.1%} of its matmul weights zero; "
             f"ideal speedup 1/(1-s) = {result.ideal_speedup:.2f}x. Measured on {where}.", "",
             "| runtime | weights | exported for | layers run as | batch | threads | dense median us (p10-p90) "
             "| sparse median us (p10-p90) | speedup | vs fastest dense here | ideal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in result.configs:
        lines.append(f"| {c.runtime} | {c.precision} | {c.exported_for or '-'} | {c.lowering} | {c.batch} | {c.threads} | "
                     f"{c.dense_median_us:.0f} ({c.dense_p10_us:.0f}-{c.dense_p90_us:.0f}) | {c.sparse_median_us:.0f} "
                     f"({c.sparse_p10_us:.0f}-{c.sparse_p90_us:.0f}) | {c.speedup:.2f}x | "
                     f"{c.vs_fastest_dense:.2f}x ({c.fastest_dense}) | {result.ideal_speedup:.2f}x |")
    lowered, copies = split_kept_dense(result.configs)
    if lowered:
        best = max(lowered, key=lambda c: c.speedup)
        worst = min(lowered, key=lambda c: c.speedup)
        worst_any = min(result.configs, key=lambda c: c.vs_fastest_dense)
        lines += ["", f"Best {best.speedup:.2f}x ({best.runtime}, batch {best.batch}, {best.threads} thread(s)); "
                      f"worst {worst.speedup:.2f}x ({worst.runtime}, batch {worst.batch}, {worst.threads} thread(s)); "
                      f"worst against the fastest dense file here {worst_any.vs_fastest_dense:.2f}x "
                      f"({worst_any.runtime}, batch {worst_any.batch}, {worst_any.threads} thread(s))."]
    if copies:
        lines += ["", f"{len(copies)} file(s) kept dense (the same bytes as the dense file; speedups "
                      f"{min(c.speedup for c in copies):.2f}-{max(c.speedup for c in copies):.2f}x are the noise of "
                      "timing one file twice)."]
    lines += [f"Not measured: {note}." for note in result.skipped]
    if result.estimate:
        e = result.estimate
        lines += ["", f"Target hardware ({e['hardware']}): {e['speedup']:.2f}x ({e['dense_us']:.0f} -> "
                      f"{e['sparse_us']:.0f} us; its matmuls alone {e['matmul_speedup']:.2f}x), {e['kind']}."]
    lines += ["", "| file | weights | dense bytes | sparse bytes | dense gzip | sparse gzip |", "|---|---|---|---|---|---|"]
    for s in result.sizes:
        lines.append(f"| .{s['format']} | {s.get('weights', 'float32')} | {s['dense_bytes']:,} | {s['sparse_bytes']:,} | "
                     f"{s['dense_gzip_bytes']:,} | {s['sparse_gzip_bytes']:,} |")
    lines += ["", "| file | runtime | max abs error vs Keras | relative |", "|---|---|---|---|"]
    for a in result.agreement:
        lines.append(f"| {a['file']} | {a.get('runtime', '-')} | {a['max_abs_error']:.3g} | {a['rel_error']:.3g} |")
    return "\n".join(lines)


def plot_latency(result: BenchResult, path) -> Path:
    """Grouped bars: dense vs sparse median latency per configuration (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c.runtime}\nb{c.batch} t{c.threads}" for c in result.configs]
    xs = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4))
    ax.bar(xs - 0.2, [c.dense_median_us for c in result.configs], 0.4, label="dense")
    ax.bar(xs + 0.2, [c.sparse_median_us for c in result.configs], 0.4, label="sparse")
    for x, c in zip(xs, result.configs):
        ax.annotate(f"{c.speedup:.1f}x", (x + 0.2, c.sparse_median_us), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("median latency (us)")
    ax.set_title(f"{result.model} on {result.target}: {result.sparsity:.0%} sparse")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_speedup_vs_sparsity(results: list[BenchResult], path) -> Path:
    """Measured speedup against sparsity, one line per configuration, with the ideal curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({(c.runtime, c.batch, c.threads) for r in results for c in r.configs})
    ordered = sorted(results, key=lambda r: r.sparsity)
    for key in keys:
        pts = [(r.sparsity, c.speedup) for r in ordered for c in r.configs if (c.runtime, c.batch, c.threads) == key]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{key[0]} b{key[1]} t{key[2]}")
    s = np.linspace(min(r.sparsity for r in results), max(r.sparsity for r in results), 50)
    ax.plot(s, 1 / (1 - s), "k--", label="ideal 1/(1-s)")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("speedup over dense")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def write_reports(results: list[BenchResult], out_dir) -> dict[str, Path]:
    """Writes ``bench.json``, ``bench.md`` and PNG plots into ``out_dir``.

    Returns:
        ``{"json": ..., "md": ..., "plots": [...]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"results": [r.to_dict() for r in results],
            "configurations": [{"model": r.model, "target": r.target, "sparsity": r.sparsity, "runtime": c.runtime,
                                "batch": c.batch, "threads": c.threads, "dense_median_us": c.dense_median_us,
                                "sparse_median_us": c.sparse_median_us, "speedup": c.speedup,
                                "vs_fastest_dense": c.vs_fastest_dense, "exported_for": c.exported_for,
                                "precision": c.precision, "fastest_dense": c.fastest_dense}
                               for r in results for c in r.configs]}
    with atomic_path(out / "bench.json") as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    plots = []
    md = ["# blockprune bench", ""]
    for i, r in enumerate(results):
        name = f"latency_{i}.png" if len(results) > 1 else "latency.png"
        plots.append(plot_latency(r, out / name))
        md += [table(r), "", f"![latency]({name})", ""]
    if len({round(r.sparsity, 3) for r in results}) > 1:
        plots.append(plot_speedup_vs_sparsity(results, out / "speedup_vs_sparsity.png"))
        md += ["![speedup vs sparsity](speedup_vs_sparsity.png)", ""]
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text("\n".join(md))
    return {"json": out / "bench.json", "md": out / "bench.md", "plots": plots}


def default_threads() -> tuple[int, ...]:
    """1 and all cores (2 on these machines)."""
    n = os.cpu_count() or 1
    return (1,) if n == 1 else (1, n)


"""``blockprune tune``: measure block shapes per layer shape, on this machine, into a profile.

For every distinct prunable layer shape of a model (its ``[in, out]`` view and matmul rows
per inference), every block shape the target allows that divides it, and every candidate
sparsity, a single-layer model with a mask of that pattern is exported through the target's
lowering (the same exporter users run, verified against Keras) and timed in the target's
runtimes; the dense layer is timed too. Then the whole model is exported and timed, dense and
pruned uniformly to each candidate sparsity (with the fastest measured blocks), so a plan can
predict the model's latency and not only the sum of its layers'. Measurements already in the
profile are reused, and tuning stops at a time budget.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import keras
import numpy as np

from .checks import SPARSITY_LADDER, fits
from .lower import format_name
from .masks import block_mask
from .modelwalk import find_weights, target_sites
from .profile import Measurement, ModelMeasurement, Profile, model_key
from .targets import fast_runtimes, load_target
from .timing import machine_info, median_latency_us

__all__ = ["tune", "measure_layer", "measure_model", "layer_shapes", "tuned_lowerings", "tuned_runtimes",
           "PROBED_KINDS"]

#: Layer kinds a single-layer Dense probe stands for (a 1x1 convolution is a matmul over positions).
PROBED_KINDS = ("dense", "conv1x1")


def layer_shapes(model, target, batch: int = 1) -> list[tuple[tuple[int, int], int]]:
    """Distinct ``(view_shape, rows)`` of the weights the target can lower, in model order."""
    target = load_target(target)
    seen = []
    for site in target_sites(model, target):
        if site.kind not in PROBED_KINDS or site.weight != "kernel" or not target.large_enough(site):
            continue
        key = (tuple(site.view.view_shape), batch * site.positions)
        if key not in seen:
            seen.append(key)
    return seen


def tuned_lowerings(target, runtime: str) -> list[tuple[str, str]]:
    """``(lowering, variant)`` pairs ``tune`` measures for ``runtime`` (an export output: ``tflite``,
    ``onnx`` or ``openvino``): every form of the target's lowering when it rewrites layers, else the
    target's lowering itself."""
    from .convert import OUTPUTS
    from .lower import lowering

    fmt = OUTPUTS[runtime][0]
    entry = lowering(getattr(target.lowering, fmt))
    if not entry.rewrites:
        return [(entry.name, "")]
    return [(entry.name, v) for v in entry.variants_for(fmt)]


def tuned_runtimes(target) -> list[str]:
    """The export outputs ``tune`` measures: those whose lowering for ``target`` is not dense
    (OpenVINO, which reads the ``.onnx``, where it is installed and ONNX's lowering is not dense)."""
    from .runtimes import available

    outputs = fast_runtimes(target)
    return outputs + (["openvino"] if "onnx" in outputs and available("openvino") else [])


def measure_layer(target, runtime: str, view_shape, rows: int, block_shape, sparsity: float, threads: int = 1,
                  rounds: int = 3, reps: int = 30, seed: int = 0, lowering=None) -> float:
    """Median latency (us) of one Dense layer ``[in, out]`` with the given block pattern,
    exported for the target and run with its recorded options (``block_shape=None``: dense).

    ``lowering`` is a ``(lowering, variant)`` pair (default: the first of ``tuned_lowerings``);
    it is used as given, unmeasured and unchecked, so the profile says what it costs."""
    from .export import export_file
    from .runtimes import make_runner

    target = load_target(target)
    n_in, n_out = view_shape
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((n_in,))
    layer = keras.layers.Dense(n_out, use_bias=False, name="layer")
    model = keras.Model(inputs, layer(inputs), name="probe")
    if block_shape is not None:
        k = layer.kernel.numpy()
        layer.kernel.assign(k * block_mask(k, block_shape, sparsity, balanced=target.balanced))
    from .lower import lowering as catalogue_entry

    choice = lowering or tuned_lowerings(target, runtime)[0]
    choices = {"layer/kernel": choice} if catalogue_entry(choice[0]).rewrites else None
    from .export import file_name

    with tempfile.TemporaryDirectory() as tmp:
        record = export_file(model, target, Path(tmp) / file_name("probe", runtime), runtime, allow_dense=True,
                             dense=block_shape is None, choices=choices, select="target", check=False)
        run = make_runner(record.path, num_threads=threads)
        x = np.random.default_rng(seed).normal(size=(rows, n_in)).astype("float32")
        return median_latency_us(run, x, rounds, reps)


def measure_model(model, target, runtime: str, plan=None, batch: int = 1, threads: int = 1, rounds: int = 3,
                  reps: int = 30, seed: int = 0) -> float:
    """Median latency (us) of the whole model exported for the target (``plan=None``: dense;
    else pruned one-shot to the plan), on one input batch."""
    from .export import export_file, file_name
    from .runtimes import make_runner
    from .pruning import prune_once

    source = model if plan is None else prune_once(model, plan)
    with tempfile.TemporaryDirectory() as tmp:
        # the target's lowering in its default form, unmeasured and unchecked (no probes inside a measurement)
        record = export_file(source, target, Path(tmp) / file_name("model", runtime), runtime, plan=plan,
                             allow_dense=True, select="target", check=False, dense=plan is None)
        run = make_runner(record.path, num_threads=threads)
        shape = [batch] + [d or 1 for d in model.inputs[0].shape[1:]]
        x = np.random.default_rng(seed).normal(size=shape).astype("float32")
        return median_latency_us(run, x, rounds, reps)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("tensorflow-cpu", "keras", "ai-edge-litert", "onnxruntime", "blockprune"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is recorded as absent
            out[pkg] = None
    return out


def tune(model, target, sparsities=SPARSITY_LADDER, batch: int = 1, threads: int = 1, profile: Profile | None = None,
         time_budget_s: float = 600.0, rounds: int = 3, reps: int = 30, progress: bool = True,
         whole_model: bool = True) -> Profile:
    """Measures the target's block shapes on every distinct prunable layer shape of ``model``.

    Args:
        model: a Keras model (only its layer shapes matter).
        target: target name, path or descriptor.
        sparsities: candidate sparsities to measure.
        batch: batch size of the measurement (rows = batch x positions).
        threads: runtime threads.
        profile: an existing profile to extend; measurements it has are not repeated.
        whole_model: also time the whole model, dense and at each sparsity (single-input models).
        time_budget_s: stop measuring after this many seconds (the profile keeps what it has).
        rounds, reps: timing repetitions per measurement.
        progress: print a progress bar.

    Returns:
        The profile (new or extended).

    Raises:
        ValueError: a profile for another target, a model with no layer the target can lower, a batch or
            thread count below 1, or a negative time budget (0 measures nothing new).
    """
    target = load_target(target)
    for name, value, least in (("batch", batch, 1), ("threads", threads, 1), ("time_budget_s", time_budget_s, 0)):
        if not value >= least:
            raise ValueError(f"tune for target '{target.name}': {name}={value} must be at least {least}")
    if profile is None:
        profile = Profile(target.name, machine_info(), _versions())
    elif profile.target != target.name:
        raise ValueError(f"profile was measured for target '{profile.target}', not '{target.name}'")
    runtimes = tuned_runtimes(target)
    if not runtimes:
        raise ValueError(f"target '{target.name}' runs every layer dense on this machine's runtimes; nothing to tune")
    shapes = layer_shapes(model, target, batch)
    if not shapes:
        raise ValueError(f"model '{model.name}' has no layer that target '{target.name}' can lower "
                         f"({', '.join(PROBED_KINDS)} of at least {target.min_weights} weights"
                         + (f" or {target.min_macs} multiply-adds per sample" if target.min_macs else "") + ")")
    jobs = []
    for view, rows in shapes:
        for rt in runtimes:
            jobs.append((rt, view, rows, None, 0.0, ("dense", "")))
            for block in target.block_shapes:
                if fits(view, block):
                    jobs += [(rt, view, rows, block, s, low) for s in sparsities for low in tuned_lowerings(target, rt)]
    todo = [j for j in jobs if not profile.has(j[0], j[1], j[2], threads, j[3], j[4], format_name(*j[5]))]
    bar = keras.utils.Progbar(len(todo), unit_name="measurement") if progress and todo and sys.stdout.isatty() else None
    started = time.time()
    for i, (rt, view, rows, block, s, low) in enumerate(todo):
        if time.time() - started > time_budget_s:
            if progress:
                print(f"time budget of {time_budget_s:.0f} s reached: {len(todo) - i} measurements left "
                      "(rerun with the same profile to continue)", flush=True)
            break
        median = measure_layer(target, rt, view, rows, block, s, threads, rounds, reps, lowering=low if block else None)
        profile.add(Measurement(rt, tuple(view), rows, threads, tuple(block) if block else None, s, median,
                                format_name(*low)))
        if bar:
            bar.update(i + 1)
        elif progress:
            what = "dense" if block is None else f"{block} at {s:.0%}, {format_name(*low)}"
            print(f"  [{i + 1}/{len(todo)}] {rt} {view[0]}x{view[1]} rows {rows}: {what}: {median:.1f} us", flush=True)
    if whole_model and len(model.inputs) == 1:
        _tune_whole_model(model, target, profile, runtimes, sparsities, batch, threads, rounds, reps,
                          started + time_budget_s, progress)
    elif whole_model and progress:
        print(f"model '{model.name}' has {len(model.inputs)} inputs: whole-model timing skipped", flush=True)
    return profile


def _tune_whole_model(model, target, profile, runtimes, sparsities, batch, threads, rounds, reps, deadline,
                      progress) -> None:
    """Times the whole model dense and pruned uniformly to each sparsity (the plan the profile gives)."""
    from .plan import plan

    key = model_key(model.name, find_weights(model))
    done = {(m.runtime, round(m.sparsity, 4)) for m in profile.models
            if (m.model, m.batch, m.threads) == (key, batch, threads)}
    todo = [(rt, s) for rt in runtimes for s in (0.0, *sparsities) if (rt, round(s, 4)) not in done]
    for i, (rt, s) in enumerate(todo):
        if time.time() > deadline:
            if progress:
                print(f"time budget reached: {len(todo) - i} whole-model measurements left", flush=True)
            return
        p = plan(model, target, sparsity=s or max(sparsities), profile=profile, runtime=rt, batch=batch,
                 threads=threads)
        dense_us, sparse_us, _ = p.predicted_us
        # Few and decisive: timed longer than the single layers.
        median = measure_model(model, target, rt, p if s else None, batch, threads, max(rounds, 5), max(reps, 30))
        profile.add_model(ModelMeasurement(key, rt, batch, threads, s, sparse_us if s else dense_us,
                                           p.weight_bytes if s else p.dense_weight_bytes, median))
        if progress:
            what = "dense" if not s else f"all at {s:.0%}"
            print(f"  [model {i + 1}/{len(todo)}] {rt} {model.name} {what}: {median:.1f} us "
                  f"(its layers alone: {sparse_us if s else dense_us:.1f} us)", flush=True)

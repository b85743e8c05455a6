"""Choosing each weight's lowering by measurement, at the point a file is exported for.

For every weight whose zeros come in blocks, the candidates are the catalogue's lowerings that
can rewrite it for the file's format (each layout or form of them) and plain dense ("pruned, not
lowered"). A quick probe builds a model of just that layer (a Dense layer over the weight's
``[in, out]`` view for matmuls, a copy of the convolution for convolutions) with the same
weights, converts it once per candidate, and times the candidates against each other in the
file's runtime at the deployment point (batch, threads), interleaved. The fastest wins; probes
of identical layers are made once. Nothing here is a guess: where no candidate beats dense, the
weight stays dense and its record says so, with both latencies.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

__all__ = ["Choice", "choose"]


@dataclass(frozen=True)
class Choice:
    """The lowering chosen for one weight.

    Attributes:
        weight: ``layer/weight``.
        lowering, variant: the chosen catalogue entry and form (``dense`` when none was faster).
        dense_us, sparse_us: the probe's median latency of the layer dense and as chosen.
        tried: ``{"lowering (variant)": us}`` for every candidate probed.
        reason: why this choice (for the record).
    """

    weight: str
    lowering: str
    variant: str
    dense_us: float | None = None
    sparse_us: float | None = None
    tried: tuple = ()
    reason: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.lowering, self.variant)


def _label(lowering: str, variant: str) -> str:
    return f"{lowering} ({variant})" if variant else lowering


def _holder(model, ws):
    """The graph-node layer holding ``ws`` when it is a convolution's own kernel, else None."""
    if ws.kind not in ("conv", "conv1x1") or ws.site.weight != "kernel":
        return None
    from .kerasgraph import layer_paths

    paths = layer_paths(model)
    return next((lay for lay in model.layers if paths.get(id(lay)) == ws.layer), None)


def _probe_model(model, ws):
    """``(probe model, its structure)``: a model of just the layer holding ``ws``, same weights.

    A convolution is copied with its configuration and input shape; any matmul (Dense, 1x1
    convolution read as a matmul, EinsumDense) is a Dense layer over the weight's ``[in, out]``
    view, applied to ``positions`` rows per sample.
    """
    import keras

    from .modelwalk import WeightSite
    from .structure import ModelStructure, WeightStructure
    from .views import WeightView

    layer = _holder(model, ws)
    if layer is not None:
        clone = layer.__class__.from_config({**layer.get_config(), "name": "probe"})
        inputs = keras.Input(tuple(layer.input.shape[1:]))
        probe = keras.Model(inputs, clone(inputs), name="probe")
        clone.set_weights(layer.get_weights())
        kernel, kind, view, positions = clone.kernel, ws.kind, ws.view, ws.site.positions
    else:
        n_in, n_out = ws.view_shape
        inputs = keras.Input((ws.site.positions, n_in) if ws.site.positions > 1 else (n_in,))
        dense = keras.layers.Dense(n_out, use_bias=False, name="probe")
        probe = keras.Model(inputs, dense(inputs), name="probe")
        dense.kernel.assign(ws.matrix)
        kernel, kind, view, positions = dense.kernel, "dense", WeightView.for_dense((n_in, n_out)), ws.site.positions
    site = WeightSite("probe", "kernel", type(probe.layers[-1]).__name__, kind, tuple(kernel.shape),
                      ws.site.view if layer is not None else view, positions, None, kernel)
    probe_ws = WeightStructure.measure(site, view.to_2d(np.asarray(kernel.numpy())), [ws.block_shape], view)
    return probe, ModelStructure((probe_ws,))


def _signature(model, ws, output: str, batch: int, threads: int) -> tuple:
    """What a probe's latency depends on: identical layers are probed once."""
    layer = _holder(model, ws)
    config = ()
    if layer is not None:
        c = layer.get_config()
        config = (tuple(layer.input.shape[1:]), str(c.get("kernel_size")), str(c.get("strides")), c.get("padding"),
                  str(c.get("dilation_rate")))
    return (output, batch, threads, ws.kind if config else "dense", ws.view_shape, ws.site.positions, ws.block_shape,
            ws.kept_per_block_column, config)


def _read_features(model, ws, structure, chosen) -> np.ndarray | None:
    """The output features of the layer holding ``ws`` that the layer reading it reads, when that
    layer's weight was chosen a lowering that gathers its input features and this layer, run
    dense, is one ``blockprune.lower.narrow`` narrows to them; else None. (Balancing may add a
    few padded rows to the gather; the probe leaves them out.)"""
    from .kerasgraph import layer_paths, sole_consumer
    from .lower.narrow import GATHERING, producer

    if ws.site.weight != "kernel" or ws.view != ws.site.view:
        return None
    paths = layer_paths(model)
    layer = next((lay for lay in model.layers if paths.get(id(lay)) == ws.layer), None)
    if layer is None or not producer(layer):
        return None
    reader = sole_consumer(model, layer)
    if reader is None or not hasattr(reader, "kernel"):
        return None
    name = f"{paths[id(reader)]}/kernel"
    choice = chosen.get(name)
    if choice is None or choice.lowering not in GATHERING:
        return None
    if choice.lowering == "gather-matmul" and structure.get(name).block_shape[0] != 1:
        return None  # not narrowed: a reader in taller blocks reads a multiple of its block rows
    kernel = np.asarray(reader.kernel.numpy())
    read = np.flatnonzero(np.any(kernel.reshape(-1, *kernel.shape[-2:]) != 0, axis=(0, 2)))
    return read if len(read) < kernel.shape[-2] else None


def _narrowed_probe(probe, read: np.ndarray):
    """The probe's layer computing only output features ``read``, as a model of its own."""
    import keras

    from .lower.narrow import narrowed_producer

    layer = probe.layers[-1]
    inputs = keras.Input(tuple(layer.input.shape[1:]))
    return keras.Model(inputs, narrowed_producer(layer, read, layer.input.shape)(inputs), name="probe")


def _from_profile(profile, output: str, ws, options, batch: int, threads: int) -> dict | None:
    """``{(lowering, variant): us}`` for every option from a tuning profile, or None when it lacks one.

    Profiles hold single Dense layers over ``[in, out]`` views, timed per export output (``tflite``,
    ``onnx``, ``openvino``), so only matmul weights are read, and only the output's own timings."""
    from .lower import format_name

    if profile is None or ws.view != ws.site.view or ws.kind not in ("dense", "conv1x1", "einsum_dense"):
        return None
    rows = batch * ws.site.positions
    timed = {}
    for lowering, variant in options:
        if lowering == "dense":
            t = profile.latency(output, ws.view_shape, rows, threads, None, 0.0)
        else:
            t = profile.latency(output, ws.view_shape, rows, threads, ws.block_shape, ws.block_sparsity,
                                format_name(lowering, variant))
        if t is None:
            return None
        timed[(lowering, variant)] = t
    return timed


def choose(model, target, output: str, structure, batch: int = 1, threads: int = 1, rounds: int = 3,
           reps: int = 20, progress: bool = False, profile=None, quantization=None) -> dict[str, Choice]:
    """Chooses, per blocked weight, the fastest lowering for export output ``output`` by probes.

    Args:
        model: the stripped Keras model.
        target: a ``TargetDescriptor``.
        output: ``tflite``, ``onnx`` or ``openvino`` (``blockprune.convert.OUTPUTS``).
        structure: the model's ``ModelStructure``.
        batch, threads: the deployment point.
        rounds, reps: timing repetitions per probe.
        progress: print one line per probe.
        profile: a ``blockprune.profile.Profile`` for this target: a weight whose every candidate
            it measured (same view, rows, threads, block; sparsity interpolated) is chosen from
            it, without a probe.
        quantization: a ``blockprune.quantize.Quantization``: every probe (dense included) is
            quantized so (int8 calibrated on random inputs, which changes no kernel choice).

    Returns:
        ``{weight: Choice}`` for every blocked weight (dense ones included, with the reason).
    """
    from .convert import OUTPUTS, build_file
    from .lower import candidates, format_name, rewritable
    from .quantize import Quantization
    from .runtimes import runtime, sample_inputs
    from .timing import interleaved_latencies

    fmt, runtime_name = OUTPUTS[output]
    rt = runtime(runtime_name)
    # probes of full-integer files calibrate on random inputs: ranges change no kernel choice
    probe_quantization = None if quantization is None else Quantization(quantization.mode)
    cache: dict[tuple, dict] = {}
    out: dict[str, Choice] = {}
    blocked = [ws for ws in structure if ws.blocked]
    int_weights = quantization is not None and quantization.mode in ("dynamic", "int8")
    # last layer first: a layer run dense computes only the features a gathering reader reads
    # (blockprune.lower.narrow), so its dense probe depends on its reader's choice
    for done, ws in enumerate(reversed(blocked), 1):
        options = [c for c in candidates(ws, fmt, int_weights) if c[0] == "dense" or rewritable(model, ws, c[0])]
        if len(options) == 1:
            out[ws.name] = Choice(ws.name, "dense", "", reason=f"kept dense: no lowering rewrites this {ws.kind} "
                                                                  f"layer in {tuple(ws.block_shape)} blocks for .{fmt} "
                                                                  "files")
            continue
        read = _read_features(model, ws, structure, out)
        key = (*_signature(model, ws, output, batch, threads), None if read is None else len(read))
        measured = _from_profile(profile, output, ws, options, batch, threads) if read is None else None
        if measured is not None:
            cache[key] = (measured, "tuning profile")
        if key not in cache:
            probe, probe_structure = _probe_model(model, ws)
            runners = {}
            for lowering, variant in options:
                pw = probe_structure.weights[0]
                dense = lowering == "dense"
                built = build_file(_narrowed_probe(probe, read) if dense and read is not None else probe, target,
                                   output, probe_structure, choices={pw.name: (lowering, variant)}, dense=dense,
                                   quantization=probe_quantization)
                runners[(lowering, variant)] = rt.runner(built.data, built.options, threads)
            x = sample_inputs(probe, batch)
            cache[key] = ({k: v[0] for k, v in interleaved_latencies(runners, x, rounds, reps, warmup=3).items()},
                          "probe")
        timed, source = cache[key]
        best = min(timed, key=timed.get)
        tried = tuple((_label(*k), round(v, 1)) for k, v in timed.items())
        dense_us = timed[("dense", "")]
        precision = "" if quantization is None or quantization.mode == "none" else f", {quantization.label} weights"
        where = f"at batch {batch}, {threads} thread{'s' if threads > 1 else ''} in {rt.label} ({source}{precision})"
        narrowed = "" if read is None else f" (computing the {len(read)} of {ws.view_shape[1]} outputs its reader reads)"
        if best == ("dense", ""):
            reason = (f"kept dense: dense {dense_us:.0f} us{narrowed} beats every lowering "
                      f"({', '.join(f'{n} {t:.0f} us' for n, t in tried if n != 'dense')}) {where}")
        else:
            reason = (f"{format_name(*best)}: {timed[best]:.0f} us vs dense {dense_us:.0f} us{narrowed} "
                      f"({dense_us / timed[best]:.2f}x) {where}")
        out[ws.name] = Choice(ws.name, best[0], best[1], dense_us, timed[best], tried, reason)
        if progress:
            print(f"  [{done}/{len(blocked)}] {rt.label} {ws.name}: {reason}", file=sys.stderr, flush=True)
    return {ws.name: out[ws.name] for ws in blocked}

"""The runtime layer: every runtime blockprune runs files in, behind one small interface.

A ``Runtime`` reads files of some formats and turns a file's bytes and its recorded run
options (``<file>.runtime.json``, written by the exporter) into a ``run(*inputs) -> output``
function. The exporter verifies files through it, and ``bench`` and ``tune`` time them through
it, so every user of a file runs it the same way. Adding a runtime is one new class here and
one entry in ``RUNTIMES``.

Also here: the sample inputs files are checked on, and the comparison of a file's output with
the Keras reference.

Example:
    >>> run = make_runner("exported/model.tflite", num_threads=1)   # doctest: +SKIP
    >>> y = run(x)                                                   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["Runtime", "LiteRT", "OnnxRuntime", "OpenVINO", "RUNTIMES", "available", "runtime", "runtimes_for", "make_runner",
           "read_options", "sample_inputs", "compare", "keras_outputs", "outputs_of", "evaluate_file"]


def sample_inputs(model, batch: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Random inputs for every input of ``model`` (unknown dimensions become 1): normal values
    for float inputs; for integer inputs (token ids), integers below the vocabulary of the
    Embedding layers that read them (0 or 1 when no Embedding does)."""
    from .kerasgraph import input_readers

    rng = np.random.default_rng(seed)
    samples = []
    for i, t in enumerate(model.inputs):
        shape = [batch] + [d if d is not None else 1 for d in t.shape[1:]]
        dtype = str(t.dtype)
        if "int" in dtype or "bool" in dtype:
            sizes = [r.input_dim for r in input_readers(model, i) if hasattr(r, "input_dim")]
            samples.append(rng.integers(0, min(sizes) if sizes else 2, size=shape).astype(dtype))
        else:
            samples.append(rng.normal(size=shape).astype(dtype if "float" in dtype else "float32"))
    return samples


def compare(reference, got) -> tuple[float, float]:
    """``(max_abs_error, relative_error)`` of ``got`` against ``reference`` (relative to its
    largest magnitude). For a model with several outputs, both are lists: each reference output
    is compared with the file's output of the same shape that agrees best (runtimes order a
    file's outputs their own way), each file output used once; the worst pair counts, and an
    output with no counterpart counts as infinitely wrong."""
    if isinstance(reference, (list, tuple)):
        left = [np.asarray(g) for g in (got if isinstance(got, (list, tuple)) else [got])]
        worst = (0.0, 0.0)
        for ref in reference:
            ref = np.asarray(ref)
            scored = [(compare(ref, g), i) for i, g in enumerate(left) if g.shape == ref.shape]
            if not scored:
                return float("inf"), float("inf")
            (err, rel), i = min(scored, key=lambda t: t[0][1])
            left.pop(i)
            worst = max(worst, (err, rel), key=lambda t: t[1])
        return worst
    reference = np.asarray(reference)
    err = float(np.max(np.abs(reference - got))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) or 1.0
    return err, err / scale


def outputs_of(run, model, xs) -> np.ndarray | list[np.ndarray]:
    """What a runner computes on ``xs``: its first output, or every output for a model with several."""
    return run.outputs(*xs) if len(model.outputs) > 1 else run(*xs)


def keras_outputs(model, xs) -> np.ndarray | list[np.ndarray]:
    """The Keras model's output on ``xs`` (a list for a model with several outputs)."""
    out = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


class Runtime:
    """One inference runtime.

    Attributes:
        name: the key recorded in ``<file>.runtime.json`` (``"litert"``).
        label: the name people know it by, for tables (``"LiteRT"``).
        formats: the file formats it reads (``("tflite",)``).
    """

    name = ""
    label = ""
    formats: tuple[str, ...] = ()
    package = ""  # the distribution whose version identifies the runtime

    def runner(self, model_bytes: bytes, options: dict | None = None, num_threads: int | None = None):
        """A function ``run(*inputs) -> first output`` for a model file's bytes."""
        raise NotImplementedError

    def version(self) -> str | None:
        """The installed version of the runtime's package, or None."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(self.package)
        except PackageNotFoundError:
            return None


class _TfliteRunner:
    """Runs a LiteRT interpreter; resizes and re-allocates only when the input shapes change.
    A file with a fixed batch (``fixed_batch``, a recurrent loop) runs only at that batch."""

    def __init__(self, interp, fixed_batch: int | None = None):
        self.interp = interp
        self.fixed_batch = fixed_batch
        self.inputs = interp.get_input_details()
        self.output_indices = [d["index"] for d in interp.get_output_details()]
        self.output = self.output_indices[0]
        self.shapes = None

    def outputs(self, *xs) -> list[np.ndarray]:
        """Every output of the model (in the file's order)."""
        self(*xs)
        return [self.interp.get_tensor(i) for i in self.output_indices]

    def __call__(self, *xs):
        shapes = [x.shape for x in xs]
        if shapes != self.shapes:
            if self.fixed_batch and any(s[0] != self.fixed_batch for s in shapes):
                raise ValueError(f"this .tflite runs only at batch {self.fixed_batch}, got batch {shapes[0][0]}: its "
                                 "recurrent layers are a WHILE loop over a fixed batch; export with --batch "
                                 f"{shapes[0][0]} for that batch")
            for d, x in zip(self.inputs, xs):
                self.interp.resize_tensor_input(d["index"], list(x.shape))
            self.interp.allocate_tensors()
            self.shapes = shapes
        for d, x in zip(self.inputs, xs):
            self.interp.set_tensor(d["index"], x)
        self.interp.invoke()
        return self.interp.get_tensor(self.output)


class LiteRT(Runtime):
    """LiteRT (``ai-edge-litert``), the TFLite interpreter, XNNPACK by default.

    Options: ``default_delegates`` (False runs the builtin kernels only: dynamic-range int8
    block-sparse models give wrong outputs under XNNPACK).
    """

    name, label, formats, package = "litert", "LiteRT", ("tflite",), "ai-edge-litert"

    def interpreter(self, model_bytes: bytes, default_delegates: bool = True, num_threads: int | None = None):
        """An interpreter for a ``.tflite`` flatbuffer."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.AUTO if default_delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        return Interpreter(model_content=model_bytes, num_threads=num_threads, experimental_op_resolver_type=resolver)

    def runner(self, model_bytes: bytes, options: dict | None = None, num_threads: int | None = None):
        delegates = (options or {}).get("default_delegates", True)
        return _TfliteRunner(self.interpreter(model_bytes, delegates, num_threads), (options or {}).get("fixed_batch"))

    def ops(self, model_bytes: bytes, run: bool = False) -> tuple[list[dict], dict[int, dict]]:
        """``(ops, tensors)`` of a flatbuffer: each op with its name and input/output tensor
        indices, and every tensor's details (shape, name, sparsity parameters) by index.
        ``run`` invokes the model once on zeros first, so that shapes computed at run time
        (a reshape to a shape read from a tensor) are the real ones."""
        interp = self.interpreter(model_bytes, default_delegates=False)
        if run:
            interp.allocate_tensors()
            for d in interp.get_input_details():
                interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            interp.invoke()
        tensors = {t["index"]: t for t in interp.get_tensor_details()}
        return interp._get_ops_details(), tensors  # the only API that lists ops with their tensors


class OnnxRuntime(Runtime):
    """ONNX Runtime's CPU execution provider."""

    name, label, formats, package = "onnxruntime", "ONNX Runtime", ("onnx",), "onnxruntime"

    def session(self, model_bytes: bytes, num_threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if num_threads:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        # Worker threads spin while a run lasts, not after it: otherwise an idle session's spinning
        # threads take a core from the next session (measured here: two sessions of one file timed
        # 279 and 440 us in turn at 2 threads; with this, 200-215 us both).
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])

    def runner(self, model_bytes: bytes, options: dict | None = None, num_threads: int | None = None):
        return _OnnxRunner(self.session(model_bytes, num_threads))


class _OnnxRunner:
    """Runs an ONNX Runtime session: ``run(*inputs)`` gives the first output, ``outputs`` all."""

    def __init__(self, session):
        self.session = session
        self.names = [i.name for i in session.get_inputs()]

    def outputs(self, *xs) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.names, xs)))

    def __call__(self, *xs):
        return self.outputs(*xs)[0]


class _OpenVinoRunner:
    """Runs an OpenVINO model compiled for the CPU; recompiles with static shapes when the input
    shapes change (OpenVINO is fastest on static shapes)."""

    def __init__(self, core, model, config):
        self.core, self.model, self.config = core, model, config
        self.shapes, self.request = None, None

    def __call__(self, *xs):
        shapes = [tuple(x.shape) for x in xs]
        if shapes != self.shapes:
            model = self.model.clone()
            try:
                model.reshape({model.inputs[i]: list(s) for i, s in enumerate(shapes)})
                compiled = self.core.compile_model(model, "CPU", self.config)
            except RuntimeError:
                # OpenVINO 2026.4's static shape inference rejects some valid graphs (a Softmax over
                # axis 0 after a Gather of a transposed pooled tensor) that it runs with dynamic shapes
                compiled = self.core.compile_model(self.model, "CPU", self.config)
            self.request = compiled.create_infer_request()
            self.shapes = shapes
        import openvino as ov

        # Tensors that share the arrays' memory and one output read: infer(list) costs ~60 us more per call.
        for i, x in enumerate(xs):
            self.request.set_input_tensor(i, ov.Tensor(np.ascontiguousarray(x), shared_memory=True))
        self.request.infer()
        return self.request.get_output_tensor(0).data.copy()

    def outputs(self, *xs) -> list[np.ndarray]:
        """Every output of the model (in the file's order)."""
        self(*xs)
        return [self.request.get_output_tensor(i).data.copy() for i in range(len(self.model.outputs))]


class OpenVINO(Runtime):
    """OpenVINO's CPU plugin, reading the exported ``.onnx`` directly."""

    name, label, formats, package = "openvino", "OpenVINO", ("onnx",), "openvino"

    def runner(self, model_bytes: bytes, options: dict | None = None, num_threads: int | None = None):
        import openvino as ov

        core = ov.Core()
        # f32: on CPUs with bf16 units OpenVINO would otherwise compute in bf16 (not what Keras computes)
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        return _OpenVinoRunner(core, core.read_model(model=model_bytes), config)


#: Every runtime blockprune knows, by the name recorded in run options.
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (LiteRT(), OnnxRuntime(), OpenVINO())}


def runtime(name: str) -> Runtime:
    """The runtime recorded as ``name`` in run options."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r} (known: {', '.join(RUNTIMES)})") from None


def available(name: str) -> bool:
    """Whether runtime ``name``'s package is installed here."""
    return runtime(name).version() is not None


def runtimes_for(fmt: str) -> list[Runtime]:
    """The runtimes that read files of format ``fmt`` (``"tflite"``, ``"onnx"``)."""
    return [r for r in RUNTIMES.values() if fmt in r.formats]


def read_options(path) -> dict:
    """The run options recorded beside an exported file (``<file>.runtime.json``)."""
    path = Path(path)
    options_path = path.with_name(path.name + ".runtime.json")
    if not options_path.is_file():
        raise ValueError(f"{path}: no {options_path.name} beside it; export it with blockprune to record how it runs")
    try:
        return json.loads(options_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{options_path}: not a runtime options file ({e}); export the model again") from None


def make_runner(path, num_threads: int | None = None, runtime_name: str | None = None):
    """A function ``run(*inputs) -> output`` for an exported file, with its recorded options.

    Args:
        path: a ``.tflite`` or ``.onnx`` written by ``blockprune.export`` (its ``.runtime.json``
            beside it).
        num_threads: threads for the runtime (default: the runtime's).
        runtime_name: run it in this runtime instead of the recorded one (another runtime that
            reads the same format, e.g. a dense ``.onnx`` baseline in OpenVINO).
    """
    options = read_options(path)
    chosen = runtime(runtime_name or options["runtime"])
    fmt = Path(path).suffix.lstrip(".")
    if fmt not in chosen.formats:
        raise ValueError(f"{path}: {chosen.label} does not read .{fmt} files")
    return chosen.runner(Path(path).read_bytes(), options, num_threads)


def evaluate_file(path, x, y, n_classes: int | None = None, batch: int = 256, runtime_name: str | None = None) -> dict:
    """Accuracy (``n_classes`` given: integer labels) or mean squared error of an exported file
    on ``(x, y)``, run in its recorded runtime (or ``runtime_name``) in chunks of ``batch``.

    A file that runs at one fixed batch only (a recurrent loop) runs at that batch, the last
    chunk padded.
    """
    run = make_runner(path, runtime_name=runtime_name)
    x = np.asarray(x, dtype=np.float32)
    step = getattr(run, "fixed_batch", None) or batch
    outputs = []
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        if getattr(run, "fixed_batch", None) and n < step:
            chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(run(chunk))[:n])
    pred = np.concatenate(outputs)
    if n_classes is not None:
        return {"accuracy": float(np.mean(np.argmax(pred, axis=-1) == np.asarray(y)))}
    return {"mse": float(np.mean((pred - np.asarray(y)) ** 2))}


"""The ``blockprune`` command: a thin shell over the public Python API.

Each subcommand calls one public function and prints its result as a table, or as JSON with
``--json``. Bad input exits with status 2 and a one-line message, never a traceback (set
``BLOCKPRUNE_DEBUG=1`` to see the traceback and TensorFlow's unfiltered native logs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from ._quiet import filtered_stderr
from ._text import text_table
from .masks import POOLING_TYPES
from .quantize import QUANTIZE_MODES
from .run import NARROW_INPUTS, NARROW_SPARSITY

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1  # an unexpected failure (a converter or runtime error), not bad input
#: Subcommands that convert models (``backends.require_tensorflow``); the others run on any backend.
TENSORFLOW_COMMANDS = frozenset({"tune", "export", "bench", "run"})


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, as every blockprune error is."""

    def error(self, message):  # noqa: D401 - argparse's hook
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _quiet_tensorflow() -> None:
    """Asks TensorFlow for errors only (its native start-up lines are filtered in ``main``)."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tf.function retracing notices from repeated predict() calls are not the user's concern.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- targets

def _targets_table(targets) -> str:
    rows = [("name", "dtype", "blocks [in,out]", "balanced", "tflite", "onnx", "latency", "description")]
    for t in targets:
        blocks = " ".join(f"({b[0]},{b[1]})" for b in t.block_shapes)
        device = "measured here" if t.native else "cost model"
        rows.append((t.name, t.dtype, blocks, "yes" if t.balanced else "no", t.lowering.tflite,
                     t.lowering.onnx, device, t.description))
    return text_table(rows, rule=True)


def cmd_targets(args) -> int:
    from .targets import list_targets, load_target

    targets = [load_target(p) for p in args.file] if args.file else list_targets()
    if args.json:
        print(json.dumps([t.to_dict() for t in targets], indent=2))
    else:
        print(_targets_table(targets))
        print("\nBlock shapes are (rows, cols) over the [in, out] view of each kernel as Keras stores it.")
    return 0


# --------------------------------------------------------------------------- plan

def load_keras_model(path: str, imports: list[str] | None = None):
    """Loads a ``.keras`` model for the CLI, with one-line errors."""
    import importlib

    for module in imports or []:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"--import {module}: {e}") from None
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"model file {path!r} does not exist")
    if p.suffix not in (".keras", ".h5"):
        raise ValueError(f"model file {path!r} is not a .keras file (save it with model.save('model.keras'))")
    import keras

    try:
        return keras.models.load_model(p, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load Keras model {path!r}: {first} (custom layers must be registered with "
                         "keras.saving.register_keras_serializable in a module passed with --import)") from None


def cmd_plan(args) -> int:
    from .plan import plan
    from .targets import load_target

    target = load_target(args.target)  # fail fast, before a model loads
    overrides = _overrides(args)
    if args.model:
        model = load_keras_model(args.model, args.imports)
    else:
        from .examples import EXAMPLES, example_model

        if not args.json:
            print(f"No MODEL given: planning the built-in example '{args.example}' ({EXAMPLES[args.example]}).\n")
        model = example_model(args.example)
    profile = None
    if args.profile:
        from .profile import Profile

        profile = Profile.load(args.profile)
    sensitivity = None
    if args.sensitivity_data:
        from .data import load_data

        sensitivity = load_data(args.sensitivity_data)
    p = plan(model, target, sparsity=args.sparsity, overrides=overrides, profile=profile, runtime=args.runtime,
             batch=args.batch, threads=args.threads, latency_budget_us=args.budget_us, speedup=args.speedup,
             overall_sparsity=args.overall_sparsity, sensitivity=sensitivity)
    if args.output:
        p.save(args.output)
    if args.json:
        print(p.to_json())
    else:
        print(p.summary())
        if args.output:
            print(f"\nPlan written to {args.output}")
    return 0


def cmd_tune(args) -> int:
    from .profile import Profile
    from .targets import load_target

    target = load_target(args.target)
    try:
        sparsities = [float(v) for v in args.sparsities.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sparsities {args.sparsities!r} is not a comma-separated list of numbers") from None
    bad = [v for v in sparsities if not 0 < v < 1]
    if bad or not sparsities:
        raise ValueError(f"--sparsities: {bad[0] if bad else args.sparsities!r} is outside (0, 1)")
    out = Path(args.output)
    existing = Profile.load(out) if out.is_file() else None
    if args.model:
        model = load_keras_model(args.model, args.imports)
    else:
        from .examples import example_model

        model = example_model(args.example)
    from .tune import tune

    profile = tune(model, target, sparsities=sparsities, batch=args.batch, threads=args.threads, profile=existing,
                   time_budget_s=args.time_budget)
    profile.save(out)
    print(f"Wrote {out}: {len(profile.measurements)} measurements for target '{target.name}'. Plan with: "
          f"blockprune plan MODEL --target {target.name} --profile {out}")
    return 0


# --------------------------------------------------------------------------- prune

def _overrides(args) -> dict:
    overrides = {pattern: spec for pattern, spec in args.override or []}
    for pattern in args.skip or []:
        overrides[pattern] = "skip"
    return overrides


def _distillation(args):
    """The ``Distillation`` the training flags ask for, or None."""
    if not args.distill:
        return None
    from .pruning.finetune import Distillation

    return Distillation(args.distill_temperature, args.distill_alpha)


def _add_training_options(p) -> None:
    p.add_argument("--no-permute", action="store_true",
                   help="keep the output channels in their order (default: regroup the outputs of Dense layers "
                        "pruned in wide blocks where that keeps more weight; same function, same speed)")
    p.add_argument("--distill", action="store_true", help="learn from the dense model's outputs too (distillation)")
    p.add_argument("--distill-temperature", type=_float, default=4.0, help="distillation temperature (default: 4)")
    p.add_argument("--distill-alpha", type=_float, default=0.7,
                   help="weight of the dense model's soft targets against the labels (default: 0.7)")
    p.add_argument("--quantize-aware", action="store_true",
                   help="fine-tune with simulated int8 weights and outputs (fake-quant; the masks are kept), for "
                        "files exported with --quantize int8 or dynamic")
    p.add_argument("--block-score", choices=POOLING_TYPES, default="AVG",
                   help="what ranks the blocks: the mean, the maximum or the root mean square (L2) of their "
                        "weights' magnitudes (default: AVG)")
    p.add_argument("--lr-decay", action="store_true",
                   help="hold the learning rate until the final sparsity, then decay it to zero on a cosine "
                        "(default: constant)")


def cmd_prune(args) -> int:
    from .data import load_data
    from ._atomic import write_text_atomic
    from .plan import SparsityPlan
    from .targets import load_target

    out = Path(args.output)
    if out.suffix != ".keras":
        raise ValueError(f"-o {args.output}: the output model must end in .keras")
    plan_out = out.with_suffix(".plan.json")
    checkpoint = out.with_name(f"{out.stem}.checkpoint.keras")
    pinned = SparsityPlan.load(args.plan) if args.plan else None
    if pinned is None:
        load_target(args.target)  # fail fast, before a model loads
    data = load_data(args.data)
    model = load_keras_model(args.model, args.imports)
    import keras

    from .plan import plan as make_plan
    from .pruning.api import save_model_atomic
    from .pruning.finetune import finetune

    keras.utils.set_random_seed(args.seed)
    p = pinned or make_plan(model, args.target, sparsity=args.sparsity, overrides=_overrides(args))
    print(p.summary(), end="\n\n")
    if args.resume and checkpoint.is_file():
        print(f"Resuming from {checkpoint}")
    try:
        result = finetune(model, p, data, epochs=args.epochs, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, checkpoint=checkpoint, resume=args.resume,
                          verbose=1 if sys.stdout.isatty() else 2, permute=not args.no_permute,
                          distill=_distillation(args), quantize_aware=args.quantize_aware,
                          block_pooling_type=args.block_score, lr_decay=args.lr_decay)
    except KeyboardInterrupt:
        hint = f"; rerun with --resume to continue from {checkpoint}" if checkpoint.is_file() else ""
        print(f"blockprune prune: interrupted{hint}", file=sys.stderr)
        return 130
    for q in result.permutations:
        print(f"Regrouped the outputs of '{q.layer}' (and the inputs of '{q.reader}'): {q.gain:.3f}x the weight "
              "magnitude kept at the planned sparsity, same function")
    print("\nBlock structure of the stripped model:")
    print(result.verification.summary())
    if not result.verification.ok:
        raise ValueError(f"the pruned model does not have the planned block structure for target "
                         f"'{p.target.name}'; nothing was written (checkpoint kept at {checkpoint})")
    save_model_atomic(result.model, out)
    write_text_atomic(plan_out, p.to_json() + "\n")
    checkpoint.unlink(missing_ok=True)
    if result.dense_metrics:
        for key, dense in result.dense_metrics.items():
            sparse = result.sparse_metrics[key]
            print(f"\nTest {key}: dense {dense:.4f}, block-sparse {sparse:.4f} ({sparse - dense:+.4f})")
    print(f"Wrote {out} (stripped block-sparse model) and {plan_out}")
    if args.json:
        print(json.dumps({"model": str(out), "plan": str(plan_out), "verification": result.verification.to_dict(),
                          "dense_metrics": result.dense_metrics, "sparse_metrics": result.sparse_metrics}))
    return 0


# --------------------------------------------------------------------------- pack / inspect / export

def cmd_pack(args) -> int:
    from .packfile import inspect_table, pack_model, save_packed
    from .targets import load_target

    target = load_target(args.target)
    model = load_keras_model(args.model, args.imports)
    layers = pack_model(model, target)
    if not layers:
        raise ValueError(f"model '{model.name}' has no weight that target '{target.name}' can prune")
    if all(layer.block_shape is None for layer in layers):
        raise ValueError(f"model '{model.name}' has no block-sparse weight for target '{target.name}': nothing to "
                         f"pack (prune it first: blockprune prune {args.model} -t {target.name})")
    path = save_packed(args.output, layers, {"target": target.name, "model": model.name})
    print(inspect_table(layers))
    print(f"\nWrote {path}")
    return 0


def cmd_inspect(args) -> int:
    from .packfile import inspect_table, load_packed

    layers, header = load_packed(args.file)
    if args.json:
        print(json.dumps({k: v for k, v in header.items()}, indent=2))
    else:
        print(f"{args.file}: {len(layers)} weights, target {header.get('target', '?')}, "
              f"model {header.get('model', '?')}; checksums OK\n")
        print(inspect_table(layers))
    return 0


def _records_table(records) -> str:
    rows = [("file", "runtime", "bytes", "gzip bytes", "max abs err", "vs dense here", "layers (how each runs)")]
    for r in records:
        formats = ", ".join(f"{lay['name']}={lay['format']}" for lay in r.layers) or "-"
        check = "-"
        if r.check:
            check = f"{r.check['speedup']:.2f}x" + (" -> kept dense" if r.check.get("kept_dense") else "")
        rows.append((Path(r.path).name, r.runtime_options.get("runtime", "-"), f"{r.bytes:,}", f"{r.gzip_bytes:,}",
                     f"{r.max_abs_error:.2g}", check, formats))
    return text_table(rows)


def _formats(text: str) -> list[str]:
    from .convert import OUTPUTS

    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in OUTPUTS]
    if bad or not formats:
        raise ValueError(f"--format {text!r}: expected a comma-separated list of {', '.join(OUTPUTS)}")
    return formats


def _quantization(args, model, target):
    """The ``Quantization`` of ``--quantize``; ``int8`` calibrates on ``--data`` (default: the
    built-in digits), which must fit the model's input."""
    from .quantize import Quantization, calibration_samples

    if args.quantize != "int8":
        if args.data:
            raise ValueError(f"--data {args.data!r} is used only by --quantize int8 (got --quantize {args.quantize})")
        return Quantization(args.quantize)
    from .data import load_data

    data = load_data(args.data)
    return Quantization("int8", calibration_samples(model, data, target.name))


def cmd_export(args) -> int:
    from .export import export
    from .plan import SparsityPlan
    from .targets import load_target

    formats = _formats(args.format) if args.format else None
    plan = SparsityPlan.load(args.plan) if args.plan else None
    target = plan.target if plan else load_target(args.target)
    model = load_keras_model(args.model, args.imports)
    profile = None
    if args.profile:
        from .profile import Profile

        profile = Profile.load(args.profile)
    quantization = _quantization(args, model, target)
    records = export(model, target, args.output, formats, plan=plan, allow_dense=args.allow_dense,
                     dense_baseline=not args.no_dense_baseline, batch=args.batch, threads=args.threads,
                     select=args.select, progress=not args.json, profile=profile, quantize=quantization)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    print(_records_table(records))
    for r in records:
        for w in r.warnings:
            print(f"warning: {Path(r.path).name}: {w}", file=sys.stderr)
    precision = "" if quantization.mode == "none" else f", {quantization.label} weights (the dense baselines too)"
    print(f"\nExported for batch {args.batch}, {args.threads} thread(s){precision}. Each file was run in its runtime and matched "
          f"Keras; run options are in <file>.runtime.json, and why each layer runs as it does is in "
          f"{args.output}/export.json")
    return 0


# --------------------------------------------------------------------------- bench / run

def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 1,8")
    return values


def cmd_bench(args) -> int:
    from .bench import bench, compare_across, default_threads, table, write_reports

    dirs = []
    for source in args.source:
        path = Path(source)
        if path.suffix == ".keras":
            from .export import export

            model = load_keras_model(source, args.imports)
            export_dir = Path(args.output) / f"export-{path.stem}"
            print(f"Exporting {source} for target '{args.target}' into {export_dir}")
            export(model, args.target, export_dir)
            dirs.append(export_dir)
        elif path.is_dir():
            dirs.append(path)
        else:
            raise ValueError(f"{source!r} is neither an export folder nor a .keras model")
    threads = args.threads or list(default_threads())
    results = [bench(d, batches=args.batch, threads=threads, rounds=args.rounds, reps=args.reps) for d in dirs]
    compare_across(results)  # float and quantized exports of one model: against the fastest dense of any
    written = write_reports(results, args.output)
    for r in results:
        print("\n" + table(r))
    print(f"\nWrote {written['json']}, {written['md']} and {len(written['plots'])} plot(s)")
    return 0


def cmd_run(args) -> int:
    from .run import run

    result = run(args.out, model=args.model, data=args.data, target=args.target, sparsity=args.sparsity,
                 epochs=args.epochs, dense_epochs=args.dense_epochs, seed=args.seed, permute=not args.no_permute,
                 distill=_distillation(args), quantize=args.quantize, quantize_aware=args.quantize_aware,
                 block_pooling_type=args.block_score, lr_decay=args.lr_decay)
    if result.dense_accuracy is not None:
        print(f"\nTest accuracy: dense {result.dense_accuracy:.2%}, block-sparse {result.sparse_accuracy:.2%}")
    for key, value in result.speedups.items():
        kept = " (kept dense: the dense file itself, timed twice)" if key in result.kept_dense else ""
        print(f"  speedup {key}: {value:.2f}x{kept}")
    print(f"\nReport: {result.report}")
    return 0


# --------------------------------------------------------------------------- main

def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _add_target(p) -> None:
    p.add_argument("--target", "-t", default="cpu-wide",
                   help="shipped target name or path to a .toml descriptor (default: cpu-wide)")


def _add_import(p) -> None:
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                   help="import this module first (to register custom layers)")


def _add_overrides(p) -> None:
    p.add_argument("--override", nargs=2, action="append", metavar=("PATTERN", "SPEC"),
                   help="per-layer change: PATTERN is a layer name, layer/weight, or regex; "
                        "SPEC is 'skip' or e.g. 'block=4x1,sparsity=0.5' (repeatable)")
    p.add_argument("--skip", action="append", metavar="PATTERN", help="leave matching layers dense (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from .checks import SPARSITY_LADDER
    from .examples import EXAMPLES

    parser = _Parser(prog="blockprune", description="Hardware-aware block sparsity for Keras 3 models.")
    parser.add_argument("--version", action="version", version=f"blockprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("targets", help="list hardware targets",
                       description="List the shipped hardware targets (or the descriptor files given).")
    p.add_argument("file", nargs="*", help="descriptor .toml files to validate and show instead")
    p.add_argument("--json", action="store_true", help="print a JSON list with the descriptors' TOML fields")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("plan", help="plan block shapes and sparsity for a model",
                       description="Choose a block shape and sparsity for every prunable weight of a Keras model "
                                   "for a target, and explain every skipped weight.")
    p.add_argument("model", nargs="?", help="a .keras model file; omitted: the built-in example model")
    p.add_argument("--example", choices=sorted(EXAMPLES), default="mlp",
                   help="built-in model to plan when MODEL is omitted (default: mlp)")
    _add_target(p)
    p.add_argument("--sparsity", "-s", type=_float, default=0.9, help="fraction of blocks to zero (default: 0.9)")
    _add_overrides(p)
    _add_import(p)
    p.add_argument("--profile", help="a tuning profile (blockprune tune): choose the fastest measured block shapes")
    p.add_argument("--runtime", choices=["tflite", "onnx"], help="runtime whose measurements to use")
    p.add_argument("--batch", type=int, default=1, help="batch size of the measurements to use (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="threads of the measurements to use (default: 1)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--speedup", type=_float, help="allocate per-layer sparsity to reach this predicted speedup")
    budget.add_argument("--budget-us", type=_float, help="allocate per-layer sparsity to meet this matmul latency")
    budget.add_argument("--overall-sparsity", type=_float,
                        help="allocate per-layer sparsity (each at most --sparsity) so this fraction of the prunable "
                             "weights is zero at the lowest predicted latency")
    p.add_argument("--sensitivity-data",
                   help="with a budget: measure each weight's accuracy sensitivity on this data's test split (.npz or "
                        "digits, animal-shapes) and spend sparsity where it costs the least loss per microsecond")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("-o", "--output", help="write the plan as JSON to this file")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("tune", help="measure the target's block shapes on this model's layer shapes",
                       description="For every distinct prunable layer shape, every allowed block shape and every "
                                   "candidate sparsity, export a single-layer model through the target's lowering and "
                                   "time it here. Measurements go to a profile (JSON), reused on the next run.")
    p.add_argument("model", nargs="?", help="a .keras model; omitted: the built-in example (--example)")
    p.add_argument("--example", choices=sorted(EXAMPLES), default="mlp2048", help="built-in model (default: mlp2048)")
    _add_target(p)
    ladder = ",".join(map(str, SPARSITY_LADDER))
    p.add_argument("--sparsities", default=ladder, help=f"candidate sparsities (default: {ladder})")
    p.add_argument("--batch", type=int, default=1, help="batch size to measure at (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads (default: 1)")
    p.add_argument("--time-budget", type=_float, default=600, help="stop after this many seconds (default: 600)")
    _add_import(p)
    p.add_argument("-o", "--output", required=True, help="the profile JSON (extended if it exists)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("prune", help="prune a trained model to a plan while fine-tuning",
                       description="Plan, then fine-tune with block masks on a cubic polynomial schedule, strip "
                                   "the wrappers, verify the block structure, and write the block-sparse model "
                                   "and its plan. Interrupted runs continue with --resume.")
    p.add_argument("model", help="a trained .keras model")
    _add_target(p)
    p.add_argument("--sparsity", "-s", type=_float, default=0.9, help="fraction of blocks to zero (default: 0.9)")
    p.add_argument("--plan", help="use this plan JSON instead of planning (pins target and sparsity)")
    p.add_argument("--data", help=".npz with x_train, y_train (and x_test, y_test), or a built-in dataset: digits "
                                  "(default), animal-shapes")
    p.add_argument("--epochs", type=int, default=10, help="epochs of pruning and fine-tuning (default: 10)")
    p.add_argument("--batch-size", type=int, default=32, help="default: 32")
    p.add_argument("--learning-rate", type=_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint after an interruption")
    _add_training_options(p)
    _add_overrides(p)
    _add_import(p)
    p.add_argument("--json", action="store_true", help="also print a JSON summary line")
    p.add_argument("-o", "--output", required=True, help="the stripped model to write (.keras); the plan goes "
                                                         "beside it as .plan.json")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("pack", help="pack a block-sparse model's weights into a safetensors file",
                       description="Read each prunable weight's block structure from its zeros and pack it "
                                   "(blocked-ELL for balanced targets, else BSR; dense when it has no zero block).")
    p.add_argument("model", help="a stripped block-sparse .keras model")
    _add_target(p)
    _add_import(p)
    p.add_argument("-o", "--output", required=True, help="the packed-weights file to write (.safetensors)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("inspect", help="show a packed-weights file, layer by layer",
                       description="Check a packed-weights file's checksums and print, per layer, the format, "
                                   "sparsity, bytes dense vs packed and the index overhead.")
    p.add_argument("file", help="a .safetensors file written by 'blockprune pack'")
    p.add_argument("--json", action="store_true", help="print the file's metadata as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("export", help="export verified .tflite/.onnx files that execute the sparsity",
                       description="Export a stripped block-sparse model for a target (its block structure is read "
                                   "from the weights and checked against the target), run every file in its "
                                   "runtime against Keras, and write it with its run options.")
    p.add_argument("model", help="a stripped block-sparse .keras model (as 'blockprune prune' writes it)")
    _add_target(p)
    p.add_argument("--format", help="outputs: tflite, onnx, openvino, comma-separated (default: all three where "
                                     "OpenVINO is installed)")
    p.add_argument("--batch", type=int, default=1, help="deployment batch size the files are chosen for (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="deployment thread count (default: 1)")
    p.add_argument("--select", choices=["measure", "target"], default="measure",
                   help="choose each layer's lowering by timing the candidates here (measure, the default) or use "
                        "the target's lowering as given (target); either way a file slower than dense is not "
                        "written")
    p.add_argument("--profile", help="a tuning profile (blockprune tune) to choose lowerings from without probes "
                                     "where it measured them")
    p.add_argument("--plan", help="plan JSON pinning the expected block structure (and the target)")
    p.add_argument("--allow-dense", action="store_true",
                   help="write files even when a block-sparse layer would run dense (a warning, not an error)")
    p.add_argument("--no-dense-baseline", action="store_true", help="skip the dense baseline files")
    p.add_argument("--quantize", choices=QUANTIZE_MODES, default="none",
                   help="quantize every file, its dense baseline alike: float16 weights, dynamic (int8 weights), or "
                        "int8 (int8 weights and activations, calibrated on --data) (default: none)")
    p.add_argument("--data", help="with --quantize int8: representative inputs (.npz with x_train, or digits, "
                                  "animal-shapes; default: digits), shaped like the model's input")
    _add_import(p)
    p.add_argument("--json", action="store_true", help="print the export records as JSON")
    p.add_argument("-o", "--output", required=True, help="folder to write into")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="measure exported models: latency and size, dense vs sparse",
                       description="Time every dense/sparse pair of an export folder in LiteRT and ONNX Runtime with "
                                   "its recorded options (warm-up, rounds, median and p10/p90), compare outputs with "
                                   "Keras, and write bench.json, bench.md and plots. Several folders (e.g. several "
                                   "sparsities) also give a speedup-vs-sparsity plot.")
    p.add_argument("source", nargs="+", help="export folders, or .keras models to export on the fly with --target")
    _add_target(p)
    p.add_argument("--batch", type=_int_list, default=[1, 8], help="batch sizes (default: 1,8)")
    p.add_argument("--threads", type=_int_list, help="thread counts (default: 1 and all cores)")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds (default: 5)")
    p.add_argument("--reps", type=int, default=50, help="timed calls per round (default: 50)")
    _add_import(p)
    p.add_argument("-o", "--output", default="bench-out", help="folder for the reports (default: bench-out)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("run", help="the whole pipeline on built-in data: train, plan, prune, export, measure",
                       description="Train (or load) a dense model, plan for the target, prune with a cubic schedule "
                                   "and fine-tune, strip, pack, export .tflite and .onnx, benchmark, and write a "
                                   "report folder. With no arguments: scikit-learn's digits and a built-in MLP.")
    p.add_argument("--model", help="a trained .keras model (default: the built-in digits MLP, trained here)")
    p.add_argument("--data", help=".npz with x_train, y_train, x_test, y_test, or a built-in dataset: digits "
                                  "(default), animal-shapes")
    _add_target(p)
    p.add_argument("--sparsity", "-s", type=_float, default=0.9,
                   help=f"fraction of blocks to zero (default: 0.9); weights reading fewer than {NARROW_INPUTS} input "
                        f"features (convolutions in channel blocks: input channels) are capped at "
                        f"{NARROW_SPARSITY * 100:.0f}%%")
    p.add_argument("--epochs", type=int, default=30, help="pruning + fine-tuning epochs (default: 30)")
    p.add_argument("--dense-epochs", type=int, default=30, help="dense training epochs of the built-in model")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_training_options(p)
    p.add_argument("--quantize", default="auto",
                   help="quantized exports beside the float32 ones, comma-separated: float16, dynamic, int8 (full "
                        "integer, calibrated on the training data); each is measured against its own-precision dense "
                        "file and the fastest dense file of any precision, and run on the test data. Default auto: "
                        "dynamic and int8, a mode that fails to export is reported instead of stopping the run; "
                        "none: float32 only")
    p.add_argument("--out", default="blockprune-out", help="report folder (default: blockprune-out)")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``blockprune`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    debug = bool(os.environ.get("BLOCKPRUNE_DEBUG"))
    if not debug:
        _quiet_tensorflow()
    try:
        if args.command in TENSORFLOW_COMMANDS:  # before any work, not after a training run
            from .backends import require_tensorflow

            require_tensorflow(f"blockprune {args.command}")
        with filtered_stderr(enabled=not debug):
            return args.func(args)
    except KeyboardInterrupt:
        print(f"blockprune {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure reaches the user as one line
        if debug:  # the whole chain, also the causes a one-line error hides (`raise ... from None`)
            cause = e
            while cause is not None:
                cause.__suppress_context__ = False
                cause = cause.__cause__ or cause.__context__
            raise
        bad_input = isinstance(e, (ValueError, TypeError, KeyError, OSError))
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        kind = "" if bad_input else f"{type(e).__name__}: "
        text = " ".join(str(message).split())  # one line, whatever the library wrote
        print(f"blockprune {args.command}: error: {kind}{text}" + ("" if bad_input else
              " (BLOCKPRUNE_DEBUG=1 shows the traceback)"), file=sys.stderr)
        return EXIT_BAD_INPUT if bad_input else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

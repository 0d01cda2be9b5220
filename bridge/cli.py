"""The ``bridge`` command line: build, tune, inspect, run, targets, layers."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.progress import (
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bridge.commands.console import console, err_console, progress_bar
from bridge.commands.options import add_custom_layers
from bridge.commands.options import one_line as _one_line
from bridge.errors import BridgeError, InputError

NPY_MAGIC = b"\x93NUMPY"


def _shape(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{num_bytes} B"
        num_bytes /= 1024
    return ""


def _io_table(model) -> Table:
    table = Table(title="Signature", show_edge=False)
    for column in ("", "name", "shape", "dtype"):
        table.add_column(column)
    for kind, infos in (("input", model.inputs), ("output", model.outputs)):
        for info in infos:
            shape = [info.symbol(axis) or d for axis, d in enumerate(info.shape)]
            table.add_row(kind, escape(info.name), _shape(shape), info.dtype)
    return table


def cmd_build(args: argparse.Namespace) -> int:
    import bridge
    from bridge.deploy import check_toolchain

    outputs = args.outputs.split(",") if args.outputs else None
    started = time.perf_counter()
    # the cross compiler, runner and runtime libraries first: never compile in vain
    notify = lambda text: err_console.print(escape(text), soft_wrap=True)  # noqa: E731
    check_toolchain(_spec(args.target), bundle=args.bundle, notify=notify)
    if args.tune:
        _print_tuning(_tune(args, args.tune))
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("starting", total=None)
        model = bridge.build(
            args.model,
            args.weights,
            target=args.target,
            batch_size=args.batch_size,
            outputs=outputs,
            separate_params=args.separate_params,
            optimize_for=args.optimize_for,
            tuning_db=args.tuning_db,
            progress=lambda stage, done: bar.update(task, description=_stage(stage, done)),
            custom_layers=args.custom_layers,
            **_quantize_options(args),
            input_shapes=_input_shapes(args.input_shape),
        )
        bar.update(task, description="bundling" if args.bundle else "exporting")
        stem = args.name or Path(args.model).name.split(".")[0]
        out = Path(args.output)
        library = (
            model.export(out, bundle=True) if args.bundle else model.export(out / f"{stem}.so")
        )
    build_seconds = time.perf_counter() - started
    console.print(_io_table(model))
    meta = model.metadata
    console.print(
        f"model       {escape(meta['model'])} "
        f"({_origin(meta['model_type'], meta['keras_version'])}), "
        f"{meta['layers']} {'operators' if meta['model_type'] == 'tflite' else 'layers'}"
    )
    console.print(f"target      {escape(meta['target_name'])} ({meta['arch']}, {meta['device']})")
    if args.target and _spec(args.target).is_native:
        console.print(f"portable    {escape(_native_note(_spec(args.target)))}")
    console.print(f"build time  {build_seconds:.1f} s")
    if "quantization" in meta:
        _print_quantization(meta["quantization"])
    console.print(f"artifact    {escape(str(library))} ({_size(library.stat().st_size)})")
    console.print(f"size        {_sizes(meta, library)}")
    if args.bundle:
        total = sum(p.stat().st_size for p in library.parent.iterdir() if p.is_file())
        console.print(
            f"bundle      {escape(str(library.parent))}/ ({_size(total)}): ./run in0.npy --out DIR"
        )
    return 0


def _sizes(meta: dict, library: Path) -> str:
    """The summary's size line: library + weights file against the model's weights."""
    from bridge.runtime import params_path

    params = params_path(library)
    weights = params.stat().st_size if meta.get("params") and params.is_file() else 0
    total = library.stat().st_size + weights
    line = f"library {_size(library.stat().st_size)} + params {_size(weights)} = {_size(total)}"
    if meta.get("weights_bytes"):
        line += f" ({total / meta['weights_bytes']:.2f}x the weights)"
    if meta.get("arena_bytes") is not None:
        line += f"; activations {_size(meta['arena_bytes'])} per call"
    return f"{line}; optimize_for={meta.get('optimize_for')}"


def _stage(stage: str, done: float | None) -> str:
    """A build stage for the spinner, with its progress when it reports one."""
    return escape(stage if done is None else f"{stage} ({done:.0%})")


def _quantize_options(args: argparse.Namespace) -> dict:
    """bridge.build's quantize= arguments from --quantize/--calibration (none without)."""
    if not args.quantize:
        if args.calibration:
            raise InputError("--calibration is used with --quantize int8")
        return {}
    if not args.calibration:
        raise InputError("--quantize int8 needs --calibration data.npz (arrays by input name)")
    return {
        "quantize": args.quantize,
        "calibration": args.calibration,
        "calibration_method": args.calibration_method,
        "percentile": args.percentile,
    }


def _print_quantization(info: dict) -> None:
    """The build summary's int8 lines: float layers, agreement with the float model."""
    floats = info["float_layers"]
    method = info["calibration_method"]
    if info.get("percentile") is not None:
        method = f"{method} {info['percentile']}"
    console.print(
        f"quantized   int8 ({method}, {info['calibration_samples']} samples): "
        f"{info['integer_layers']} layers on integer kernels, {len(floats)} in float"
    )
    for row in floats:
        console.print(
            f"  float     {escape(row['layer'])} ({row['class']}): {escape(row['reason'])}"
        )
    for row in info["agreement"]:
        line = (
            f"agreement   {escape(row['output'])}: max |error| {row['max_abs_error']:.4g}, "
            f"mean {row['mean_abs_error']:.4g}"
        )
        if "top1_agreement" in row:
            line += f", top-1 {row['top1_agreement']:.1%}"
        console.print(line + " (int8 vs float on the calibration samples)")
    if info.get("agreement_note"):
        console.print(f"agreement   {escape(info['agreement_note'])}")


def _spec(target: str):
    from bridge.targets import resolve

    return resolve(target)


def _native_note(spec) -> str:
    """The build summary's warning that a native library needs this very CPU's features."""
    from bridge.targets import cpu_features, host_cpu, portable_hint

    features = ", ".join(cpu_features(spec)) or "no extensions beyond the baseline"
    return (
        f"no: built for this CPU ({host_cpu()}; relies on {features}); "
        f"for other machines build with {portable_hint(spec.arch)}"
    )


def _tune(args: argparse.Namespace, budget: str):
    """``bridge.tune`` for ``bridge tune`` and ``bridge build --tune``, with a progress bar on
    stderr: a spinner while reading and measuring, then the share of the budget spent."""
    import bridge

    with progress_bar() as show:
        return bridge.tune(
            args.model,
            args.weights,
            target=args.target,
            budget=int(budget) if budget.isdigit() else budget,
            batch_size=args.batch_size,
            optimize_for=getattr(args, "optimize_for", "balanced"),
            tuning_db=args.tuning_db,
            rpc_tracker=args.rpc_tracker,
            rpc_key=args.rpc_key,
            custom_layers=args.custom_layers,
            progress=show,
            input_shapes=_input_shapes(args.input_shape),
        )


def _print_tuning(report) -> None:
    table = Table(title="Tuned kernels", show_edge=False)
    for column in ("kernel", "calls", "default ms", "tuned ms", "speedup", "trials", "wrong"):
        table.add_column(column, justify="left" if column == "kernel" else "right")
    for k in sorted(report.kernels, key=lambda k: -k.weight * k.default_ms):
        speedup = f"{k.speedup:.2f}x" if k.best_ms < k.default_ms else "default kept"
        speedup = speedup if k.trials else "not reached"
        row = (
            escape(k.name),
            k.weight,
            f"{k.default_ms:.4f}",
            f"{k.best_ms:.4f}",
            speedup,
            k.trials,
        )
        table.add_row(*map(str, row), str(k.wrong))
    if report.kernels:
        console.print(table)
    console.print(
        f"tuning      {len(report.kernels)} kernels in {report.seconds:.0f} s, {report.trials}"
        f" candidates, {report.improved} faster, {report.wrong} wrong dropped;"
        f" {report.skipped} tuned before"
    )
    if report.kernels:
        before, after = report.estimate_ms(False), report.estimate_ms(True)
        console.print(f"kernels     {before:.2f} ms -> {after:.2f} ms (summed, per call)")
    console.print(f"database    {escape(str(report.database))}")


def cmd_tune(args: argparse.Namespace) -> int:
    _print_tuning(_tune(args, args.budget))
    return 0


def _origin(kind: str, keras_version: str) -> str:
    return "TFLite" if kind == "tflite" else f"{kind}, Keras {keras_version or '?'}"


def cmd_targets(args: argparse.Namespace) -> int:
    from bridge.targets import presets

    table = Table(show_edge=False)
    for column in ("preset", "arch", "device", "description"):
        table.add_column(column)
    for name, spec in presets().items():
        table.add_row(escape(name), spec.arch, spec.device, escape(spec.description))
    console.print(table)
    console.print(
        "'llvm' = native (this CPU); 'cuda' = cuda-sm80. TVM tags and target dicts (JSON) work too."
    )
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from bridge.convert.support import UNSUPPORTED, family_notes, layers_markdown, support_table

    if args.markdown:
        print(layers_markdown(), end="")
        return 0
    table = Table(title="Supported layers", show_edge=False)
    for column in ("family", "Keras classes", "notes"):
        table.add_column(column)
    families, notes = support_table(), family_notes()
    for family, classes in families.items():
        table.add_row(escape(family), escape(", ".join(classes)), escape(notes[family]))
    console.print(table)
    console.print(f"{sum(map(len, families.values()))} classes in {len(families)} families")
    unsupported = Table(title="Deliberately unsupported", show_edge=False)
    unsupported.add_column("Keras class", no_wrap=True)
    unsupported.add_column("why")
    for name, reason in UNSUPPORTED.items():
        unsupported.add_row(escape(name), escape(reason))
    console.print(unsupported)
    return 0


def _batch(text: str) -> int | None:
    """--batch-size: a number, or 'dynamic' for a symbolic batch dimension."""
    if text.lower() in ("dynamic", "none", "any"):
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("batch size must be >= 1 or 'dynamic'")
    return value


def _input_shape(text: str) -> tuple[str | None, tuple]:
    """--input-shape [NAME=]D,D,...: each D a size, a symbol's name (kept symbolic) or '?'
    (as the model declares it)."""
    name, _, dims = text.rpartition("=")
    parts = [p.strip() for p in dims.split(",")]
    if not dims or any(not p for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected NAME=1,50,300 (sizes, names or ?), got {text!r}"
        )
    shape = tuple(
        None if p in ("?", "None", "none") else int(p) if p.isdigit() else p for p in parts
    )
    return name or None, shape


def _input_shapes(given: list[tuple[str | None, tuple]] | None):
    """The --input-shape options as build's input_shapes: a dict by name, or the one shape of
    a single-input model."""
    if not given:
        return None
    if len(given) == 1 and given[0][0] is None:
        return given[0][1]
    if any(name is None for name, _ in given):
        raise InputError("--input-shape: name every input (NAME=1,50,300) when giving several")
    shapes = dict(given)
    if len(shapes) != len(given):
        raise InputError("--input-shape: an input is given twice")
    return shapes


def cmd_inspect(args: argparse.Namespace) -> int:
    from bridge.api import inspect

    report = inspect(
        args.model,
        args.weights,
        custom_layers=args.custom_layers,
        input_shapes=_input_shapes(args.input_shape),
    )
    if report.kind == "tflite":
        console.print(f"{escape(report.name)}: TFLite model")
    else:
        console.print(
            f"{escape(report.name)}: {report.kind} model, Keras {report.keras_version or '?'}"
        )
    table = Table(show_edge=False)
    for column in ("layer", "class", "output shape", "params", "status"):
        table.add_column(column, overflow="fold")
    for row in report.layers:
        shapes = ", ".join(_shape(s) for s in row.output_shapes) if row.output_shapes else "-"
        status = "[green]ok[/]" if row.status == "ok" else f"[red]{escape(row.status)}[/]"
        table.add_row(escape(row.path), escape(row.class_name), shapes, f"{row.params:,}", status)
    console.print(table)
    total = sum(r.params for r in report.layers)
    bad = [r for r in report.layers if r.status != "ok"]
    console.print(
        f"{len(report.layers)} layers, {total:,} parameters, "
        f"{'all supported' if not bad else f'{len(bad)} unsupported'}"
    )
    return 0 if not bad else 1


def _load_npy(file: str) -> np.ndarray:
    """One ``--input`` array: a .npy file, never unpickled."""
    path = Path(file)
    if not path.is_file():
        raise InputError(f"{file}: {'is a folder' if path.is_dir() else 'no such file'}")
    with path.open("rb") as handle:
        if handle.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise InputError(f"{file}: not a .npy array file (save it with numpy.save)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise InputError(f"{file}: holds Python objects, not a numeric array") from exc
        raise InputError(f"{file}: not a readable .npy array file ({_one_line(exc)})") from exc
    except (OSError, EOFError) as exc:
        raise InputError(f"{file}: not a readable .npy array file ({_one_line(exc)})") from exc


def _parse_inputs(
    specs: list[str], names: list[str], files: dict[str, str]
) -> dict[str, np.ndarray]:
    """``--input`` values (``file.npy`` or ``NAME=file.npy``) -> arrays by input name; fills
    ``files`` (input name -> file)."""
    arrays: dict[str, np.ndarray] = {}
    for index, spec in enumerate(specs):
        name, _, file = spec.rpartition("=")
        if not name and index >= len(names):
            raise InputError(
                f"{file}: {len(specs)} inputs given, the model takes {len(names)} "
                f"({', '.join(names)})"
            )
        name = name or names[index]
        if name in files:
            twice = "the same file given twice" if files[name] == file else f"also {files[name]}"
            raise InputError(f"{file}: input {name!r} given twice ({twice})")
        files[name] = file
        arrays[name] = _load_npy(file)
    return arrays


def _out_dir(text: str) -> Path:
    """``--out``: a folder (made if missing), refused before running when it is a file."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise InputError(f"{text}: --out exists and is not a folder")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    import bridge

    out_dir = _out_dir(args.out) if args.out else None
    model = bridge.load(args.artifact)
    files: dict[str, str] = {}
    inputs = _parse_inputs(args.input, [i.name for i in model.inputs], files)
    try:
        result = model(inputs)
    except InputError as exc:  # name the file holding the input the model refused
        file = next((f for name, f in files.items() if repr(name) in str(exc)), None)
        raise InputError(f"{file}: {exc}" if file else str(exc)) from exc
    outputs = result if isinstance(result, list) else [result]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for index, (info, value) in enumerate(zip(model.outputs, outputs)):
            file = out_dir / f"output{index}.npy"
            np.save(file, value)
            console.print(f"{escape(info.name)}: {_shape(value.shape)} -> {escape(str(file))}")
        return 0
    for info, value in zip(model.outputs, outputs):
        console.print(f"[bold]{escape(info.name)}[/] {_shape(value.shape)} {value.dtype}")
        console.print(escape(np.array2string(value, threshold=200, precision=6)))
    return 0


def _tuning_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--tuning-db", help="tuning database folder (default: ~/.cache/bridge/tuning)"
    )
    command.add_argument(
        "--rpc-tracker", metavar="HOST:PORT", help="measure on a remote device via this tracker"
    )
    command.add_argument("--rpc-key", help="the remote device's key at the tracker")




INPUT_SHAPE_OPTION = {
    "type": _input_shape,
    "action": "append",
    "metavar": "NAME=D,D,..",
    "help": "an input's shape where the model leaves sizes unknown: sizes, a name to keep a "
    "dimension symbolic (NAME=1,T,300: one build runs every T) or ? as declared; repeat per "
    "input (NAME= may be left out for a single-input model)",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``bridge run: error: ...``, exit 2."""

    def error(self, message: str):
        _print_error(f"{self.prog}: {message} (see {self.prog} --help)")
        raise SystemExit(2)


def version() -> str:
    """``bridge --version``: bridge's and TVM's versions (read without importing TVM)."""
    import importlib.metadata

    try:
        tvm = importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError:
        tvm = "not installed"
    from bridge import __version__

    return f"bridge {__version__} (Apache TVM {tvm})"


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="bridge",
        description="Keras models to native libraries through Apache TVM, without TensorFlow.",
    )
    top.add_argument("--version", action="version", version=version())
    sub = top.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="compile a model and export a library")
    build.add_argument("model", help=".keras, .h5, architecture .json or .tflite")
    build.add_argument("weights", nargs="?", help="weights file (with a .json architecture)")
    build.add_argument(
        "--target",
        default="llvm",
        help="a preset (see 'bridge targets'), 'llvm' (this CPU), a TVM tag or JSON",
    )
    build.add_argument("-o", "--output", default="out", help="output folder (default: out/)")
    build.add_argument("--name", help="library file name (default: the model file's stem)")
    build.add_argument("--batch-size", type=_batch, default=1, help="N, or 'dynamic'")
    build.add_argument(
        "--bundle",
        action="store_true",
        help="write a folder that runs on the target without Python (./run)",
    )
    build.add_argument(
        "--separate-params",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="weights in a .params file beside the library, transformed at build time "
        "(default); --no-separate-params embeds them (one file; loading holds them 3-4 times)",
    )
    build.add_argument(
        "--optimize-for",
        choices=("speed", "balanced", "size"),
        default="balanced",
        help="Winograd convolutions (faster, weights 1.8-4x larger): where they pay most within "
        "+20%% of the weights (balanced, default), wherever they pay (speed), nowhere (size)",
    )
    build.add_argument(
        "--outputs", help="comma-separated layer (TFLite: tensor) names to use as outputs"
    )
    build.add_argument(
        "--tune", metavar="BUDGET", help="tune first: a time ('20m', '90s') or a trial count"
    )
    _tuning_arguments(build)
    add_custom_layers(build)
    build.add_argument("--input-shape", **INPUT_SHAPE_OPTION)
    build.add_argument(
        "--quantize",
        choices=["int8"],
        help="run on int8 kernels (Keras models; needs --calibration)",
    )
    build.add_argument(
        "--calibration",
        metavar="DATA.npz",
        help="calibration samples: .npz with an array per input name (or one array), or .npy",
    )
    build.add_argument(
        "--calibration-method",
        choices=["minmax", "percentile"],
        default="minmax",
        help="activation ranges: min/max (default) or a percentile of the values",
    )
    build.add_argument(
        "--percentile", type=float, default=99.99, help="with --calibration-method percentile"
    )
    build.set_defaults(func=cmd_build)

    tune = sub.add_parser(
        "tune", help="search faster kernels for a model (stored per target, used by every build)"
    )
    tune.add_argument("model", help=".keras, .h5, architecture .json or .tflite")
    tune.add_argument("weights", nargs="?", help="weights file (with a .json architecture)")
    tune.add_argument("--target", default="llvm", help="a preset, 'llvm' (this CPU), tag or JSON")
    tune.add_argument("--budget", default="20m", help="a time ('20m', '90s') or a trial count")
    tune.add_argument("--batch-size", type=_batch, default=1, help="N (as you will build it)")
    add_custom_layers(tune)
    tune.add_argument("--input-shape", **INPUT_SHAPE_OPTION)
    _tuning_arguments(tune)
    tune.set_defaults(func=cmd_tune)

    targets = sub.add_parser("targets", help="list target presets")
    targets.set_defaults(func=cmd_targets)

    inspect = sub.add_parser("inspect", help="list layers, shapes, parameters and support")
    inspect.add_argument("model")
    inspect.add_argument("weights", nargs="?")
    add_custom_layers(inspect)
    inspect.add_argument("--input-shape", **INPUT_SHAPE_OPTION)
    inspect.set_defaults(func=cmd_inspect)

    layers = sub.add_parser("layers", help="list the supported Keras layers (and unsupported)")
    layers.add_argument(
        "--markdown", action="store_true", help="print README's support table (Markdown)"
    )
    layers.set_defaults(func=cmd_layers)

    run = sub.add_parser("run", help="run an exported library on .npy inputs")
    run.add_argument("artifact", help="exported .so (with its .meta.json beside it)")
    run.add_argument(
        "--input",
        "-i",
        action="append",
        required=True,
        help="an input .npy, optionally NAME=file.npy; repeat for several inputs",
    )
    run.add_argument(
        "--out", help="folder to write output0.npy, output1.npy, ... to (default: print them)"
    )
    run.set_defaults(func=cmd_run)
    from bridge.commands import compare as compare_command

    compare_command.add_parser(sub)
    from bridge.commands import report as report_command

    report_command.add_parser(sub)
    from bridge.commands import profile as profile_command

    profile_command.add_parser(sub)
    return top


def _print_error(message: str) -> None:
    """``error: message`` on stderr, markup escaped and never wrapped."""
    err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _os_error(exc: OSError) -> str:
    """``path: reason`` for a file system error."""
    reason = exc.strerror or _one_line(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure is one ``error:`` line on stderr and exit code 2
    (130 when interrupted). ``BRIDGE_TRACEBACK=1`` shows the traceback of unexpected ones."""
    try:
        args = parser().parse_args(argv)
        return args.func(args)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130
    except BridgeError as exc:
        _print_error(str(exc))  # problem lists keep their one line per layer
        return 2
    except OSError as exc:
        _print_error(_os_error(exc))
        return 2
    except Exception as exc:
        if os.environ.get("BRIDGE_TRACEBACK") == "1":
            raise
        _print_error(f"{type(exc).__name__}: {_one_line(exc)} (BRIDGE_TRACEBACK=1 shows where)")
        return 2


if __name__ == "__main__":
    sys.exit(main())

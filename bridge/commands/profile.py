"""``bridge profile``: where the time goes, per Keras layer (TFLite operator), with the fused
kernels each layer runs in.

``bridge profile MODEL`` builds MODEL for ``--target`` (or loads an exported ``.so``) and times
it here; ``bridge profile --from out.json MODEL`` renders what a bundle's ``./run --profile
out.json`` measured on a device, with the metadata of MODEL (the bundle folder, its ``.so`` or
``.meta.json``; a model file is compiled for ``--target`` to get it). Exit code 0, or 2 on bad
input (``bridge.cli.main`` turns typed errors into one ``error:`` line).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from bridge.commands.console import console, err_console, progress_bar
from bridge.commands.options import add_custom_layers
from bridge.profile import BUILTIN_PREFIX, UNATTRIBUTED_ROW

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK"
EXPORTED = (".so", ".dylib", ".dll")
KERNELS_SHOWN = 20


def add_parser(sub) -> None:
    """Add ``bridge profile`` to the ``bridge`` subparsers ``sub``."""
    command = sub.add_parser(
        "profile", help="time every layer (fused kernels attributed to their layers)"
    )
    command.add_argument(
        "model", help=".keras, .h5, architecture .json or .tflite; or an exported .so / bundle"
    )
    command.add_argument("weights", nargs="?", help="weights file (with a .json architecture)")
    command.add_argument(
        "--target", default="llvm", help="build for this target (default: llvm, this CPU)"
    )
    command.add_argument(
        "--inputs", help="x.npy (one input) or x.npz keyed by input name (default: random)"
    )
    command.add_argument(
        "--batch-size", type=_positive, default=1, help="build for batch N (default 1)"
    )
    command.add_argument("--runs", type=_positive, default=10, help="median of N runs (default 10)")
    command.add_argument(
        "--from",
        dest="from_json",
        metavar="RAW.json",
        help="render a device's measurements (./run --profile RAW.json) instead of timing here",
    )
    command.add_argument("--json", metavar="FILE", help="also write the profile as JSON")
    add_custom_layers(command)
    command.set_defaults(func=run)


def _positive(text: str) -> int:
    """--runs, --batch-size: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """``bridge profile``: print the per-layer table (and the fusion groups)."""
    from bridge import profile as profiling

    with progress_bar() as show:
        if args.from_json:
            raw = profiling.read_json(args.from_json)  # a bad file fails before compiling
            rendered = raw.get("format") == profiling.FORMAT
            metadata = None if rendered else _metadata(args, show)
            show("rendering", None)
            result = profiling.load(args.from_json, metadata)
        else:
            arrays = _read_inputs(args.inputs) if args.inputs else None  # before compiling
            model = _model(args, show)
            inputs = None if arrays is None else _match_inputs(args.inputs, arrays, model)
            result = model.profile(inputs, runs=args.runs, progress=show)
    print_profile(result)
    if args.json:
        result.save(args.json)
        console.print(f"profile     {escape(args.json)}")
    return 0


def _is_exported(path: Path) -> bool:
    return path.is_dir() or path.suffix in EXPORTED or path.name.endswith(".meta.json")


def _model(args: argparse.Namespace, show):
    """The model to time: an exported library loaded, or MODEL built for ``--target``."""
    import bridge

    path = Path(args.model)
    if _is_exported(path):
        if path.is_dir() or path.name.endswith(".meta.json"):
            from bridge.errors import InputError

            raise InputError(
                f"{path}: time an exported .so here, or render a bundle's measurements with "
                f"--from (./run --profile out.json on the device)"
            )
        show(f"loading {path.name}", None)
        return bridge.load(path)
    _check_runs_here(args.target)
    return bridge.build(
        args.model,
        args.weights,
        target=args.target,
        batch_size=args.batch_size,
        progress=show,
        custom_layers=args.custom_layers,
    )


def _check_runs_here(target: str) -> None:
    """Refuse, before compiling, a target whose code cannot run on this machine's CPU."""
    from bridge.errors import DeviceError
    from bridge.targets import host_arch, resolve

    spec = resolve(target)
    if spec.arch != host_arch():
        raise DeviceError(
            f"{spec.name} ({spec.arch}) code does not run on this {host_arch()} machine: build a "
            f"bundle (bridge build MODEL --target {spec.name} --bundle), run './run in0.npy "
            f"--profile out.json' on the device, then 'bridge profile --from out.json BUNDLE'"
        )


def _metadata(args: argparse.Namespace, show) -> dict[str, Any]:
    """MODEL's artifact metadata: read from an export, or compiled for ``--target``."""
    from bridge.profile import read_metadata

    path = Path(args.model)
    if _is_exported(path):
        return read_metadata(path)
    import bridge

    model = bridge.build(
        args.model,
        args.weights,
        target=args.target,
        batch_size=args.batch_size,
        progress=show,
        custom_layers=args.custom_layers,
    )
    return model.metadata


def _read_inputs(file: str) -> Any:
    """``--inputs``: the array of a .npy, or the arrays of a .npz by key (never unpickled)."""
    import numpy as np

    from bridge.errors import InputError

    path = Path(file)
    if not path.is_file():
        raise InputError(f"{file}: {'is a folder' if path.is_dir() else 'no such file'}")
    with path.open("rb") as handle:
        magic = handle.read(len(NPY_MAGIC))
    if not magic.startswith(ZIP_MAGIC) and magic != NPY_MAGIC:
        raise InputError(f"{file}: not a .npy or .npz file (save it with numpy.save/savez)")
    try:
        if magic == NPY_MAGIC:
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{file}: not a readable numpy file ({reason})") from exc


def _match_inputs(file: str, arrays: Any, model) -> Any:
    """``--inputs`` checked against the model's inputs: one array for a one-input model, or
    one array per input name."""
    from bridge.errors import InputError

    names = [i.name for i in model.inputs]
    if not isinstance(arrays, dict):
        if len(names) != 1:
            raise InputError(
                f"{file}: the model takes {len(names)} inputs ({', '.join(names)}); give a .npz "
                f"keyed by input name"
            )
        return arrays
    if sorted(arrays) != sorted(names):
        raise InputError(f"{file}: keys {sorted(arrays)} do not match the model's inputs {names}")
    return arrays


def _micros(us: float) -> str:
    return f"{us:,.1f}"


def _flops(count: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return str(count)


def _bytes(count: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def layer_table(result) -> Table:
    """One row per layer in model order: time, share, FLOPs, bytes, GFLOP/s, kernels."""
    title = f"{escape(result.model)} on {escape(result.target)}: time per layer"
    table = Table(title=title, show_edge=False)
    table.add_column("layer", overflow="fold", min_width=10)  # names in full, folded if long
    table.add_column("class", overflow="ellipsis", max_width=24)
    for column in ("µs", "share", "FLOPs", "bytes", "GFLOP/s"):
        table.add_column(column, justify="right", no_wrap=True)
    # on a narrow terminal cut short: the kernels table below names each in full
    table.add_column("kernels", overflow="ellipsis", max_width=40)
    for row in result.layers:
        kernels = _kernels_cell(row.kernels)
        table.add_row(
            escape(row.layer),
            escape(row.class_name),
            _micros(row.us),
            f"{row.share:.1%}",
            _flops(row.flops) if row.flops else "-",
            _bytes(row.bytes) if row.bytes else "-",
            f"{row.gflops:.2f}" if row.flops and row.us > 0 else "-",
            kernels,
        )
    return table


def _kernels_cell(names: list[str]) -> str:
    """A layer's kernels (the VM's builtins counted, not listed)."""
    builtins = [n for n in names if n.startswith(BUILTIN_PREFIX)]
    shown = [escape(n) for n in names if not n.startswith(BUILTIN_PREFIX)]
    if builtins:
        shown.append(f"{BUILTIN_PREFIX}* ({len(builtins)})")
    return ", ".join(shown)


def fusion_table(result) -> Table:
    """The slowest kernels with the layers fused into each (the fusion groups)."""
    table = Table(title="Kernels (fusion groups)", show_edge=False)
    for column in ("kernel", "calls", "µs", "share", "layers"):
        left = column in ("kernel", "layers")
        table.add_column(
            column, justify="left" if left else "right", overflow="fold", no_wrap=not left
        )
    total = result.total_us or 1.0
    for kernel in result.kernels[:KERNELS_SHOWN]:
        table.add_row(
            escape(kernel.name),
            str(kernel.calls),
            _micros(kernel.us),
            f"{kernel.us / total:.1%}",
            escape(" + ".join(kernel.layers)),
        )
    return table


def print_profile(result) -> None:
    """The layer table, the fusion groups and a summary line."""
    console.print(layer_table(result))
    console.print(fusion_table(result))
    hidden = len(result.kernels) - KERNELS_SHOWN
    if hidden > 0:
        console.print(f"[dim]{hidden} faster kernels not shown (--json lists them all)[/]")
    unknown = [row for row in result.layers if row.layer == UNATTRIBUTED_ROW]
    if unknown:
        err_console.print(
            f"[yellow]note:[/] {len(unknown[0].kernels)} kernel(s) are not in the model's "
            "metadata (was the profile measured with this build, for this target?)",
            soft_wrap=True,
        )
    where = "measured on the device" if result.source == "runner" else "measured here"
    console.print(
        f"total       {_micros(result.total_us)} µs per call ({where}, median of "
        f"{result.runs} runs, {result.threads} threads, {result.device})"
    )

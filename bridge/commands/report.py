"""``bridge report``: one self-contained HTML page about a model (see :mod:`bridge.report`).

It builds the model for ``--target`` (the build facts: time, library size, peak memory), runs
the per-layer comparison against ``--compare`` (a ``python -m bridge.reference`` ``.npz``,
whose inputs it uses, or a table saved by ``bridge compare --json``), renders ``--profile``
(a runner's ``run --profile out.json`` or a saved profile) or, when the target runs here,
profiles the model on this machine, and writes the page to ``-o``. Exit code 0 when the page
is written (a divergent layer is shown on it, not an error); 2 on bad input.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from bridge.commands.console import console, err_console, progress_bar
from bridge.commands.options import add_custom_layers
from bridge.errors import DeviceError, InputError


def add_parser(sub) -> None:
    """Add ``bridge report`` to the ``bridge`` subparsers ``sub``."""
    command = sub.add_parser(
        "report",
        help="one HTML page: layers, shapes, fused kernels, per-layer latency and error, build",
    )
    command.add_argument("model", help=".keras, .h5, architecture .json or .tflite")
    command.add_argument("weights", nargs="?", help="weights file (with a .json architecture)")
    command.add_argument(
        "--target",
        default="llvm",
        help="a preset (see 'bridge targets'), 'llvm' (this CPU), a TVM tag or JSON",
    )
    command.add_argument(
        "--compare",
        metavar="REF",
        help="a reference .npz from 'python -m bridge.reference' (its inputs are used), or a "
        "table saved by 'bridge compare --json'",
    )
    command.add_argument(
        "--profile",
        metavar="JSON",
        help="a profile from the bundle's './run --profile out.json' or 'bridge profile --json' "
        "(default: profile here when the target runs on this machine)",
    )
    command.add_argument("--runs", type=int, default=10, help="profile runs (median; default 10)")
    command.add_argument("-o", "--output", default="report.html", help="the page to write")
    add_custom_layers(command)
    command.set_defaults(func=run)


def _existing(path: str | None, option: str) -> Path | None:
    """An input file named by ``option``, refused before any work when it is not a file."""
    if path is None:
        return None
    found = Path(path)
    if not found.is_file():
        reason = "is a folder" if found.is_dir() else "no such file"
        raise InputError(f"{path}: {reason} ({option})")
    return found


def _output(path: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise InputError(f"{path}: -o is a folder; name the page, e.g. {out / 'report.html'}")
    return out


def run(args: argparse.Namespace) -> int:
    """``bridge report``: write the page; 0 when written."""
    from bridge.deploy import check_toolchain
    from bridge.targets import resolve

    compare_file = _existing(args.compare, "--compare")
    profile_file = _existing(args.profile, "--profile")
    output = _output(args.output)
    if args.runs < 1:
        raise InputError(f"--runs must be at least 1, got {args.runs}")
    spec = resolve(args.target)
    check_toolchain(spec, bundle=False, notify=lambda text: err_console.print(escape(text)))
    with progress_bar() as show:
        parts = collect(args, spec, compare_file, profile_file, show)
        show("writing the page", None)
        from bridge import report

        report.write(output, parts.pop("graph"), **parts)
    _summary(output, parts)
    return 0


def collect(args, spec, compare_file: Path | None, profile_file: Path | None, show) -> dict:
    """The page's parts: the inspect report, the build facts, the compare and profile dicts."""
    import bridge
    from bridge import report

    started = time.perf_counter()
    model = bridge.build(
        args.model, args.weights, target=spec, progress=show, custom_layers=args.custom_layers
    )
    seconds = time.perf_counter() - started
    peak = report.peak_memory_bytes()  # this process's high-water mark: the build's
    show("exporting", None)
    with tempfile.TemporaryDirectory() as tmp:
        library = model.export(Path(tmp) / "model.so")
        build = report.build_facts(model.metadata, library=library, peak_memory=peak, spec=spec)
    build.setdefault("build_seconds", round(seconds, 3))
    show("inspecting", None)
    graph = bridge.inspect(args.model, args.weights, custom_layers=args.custom_layers)
    compare, inputs = None, None
    if compare_file is not None:
        compare, inputs = _compare(args, compare_file, show)
    profile = _profile(model, profile_file, inputs, args.runs, show)
    return {"graph": graph, "build": build, "compare": compare, "profile": profile}


def _compare(args, path: Path, show) -> tuple[dict, Any]:
    """The compare dict (a saved table, or a run against a reference .npz) and the inputs it
    ran on (None for a saved table)."""
    comparing = importlib.import_module("bridge.compare")  # the module, not bridge.compare()

    if path.suffix.lower() == ".json":
        return comparing.load(path).to_dict(), None
    table = comparing.compare(
        args.model,
        args.weights,
        reference=str(path),
        target=args.target,
        progress=show,
        custom_layers=args.custom_layers,
    )
    return table.to_dict(), _reference_inputs(path)


def _reference_inputs(path: Path) -> dict | None:
    """The inputs a reference .npz holds (``__input__:<name>`` keys), by input name."""
    import numpy as np

    from bridge.reference import INPUT_PREFIX

    with np.load(path, allow_pickle=False) as data:
        found = {k[len(INPUT_PREFIX) :]: data[k] for k in data.files if k.startswith(INPUT_PREFIX)}
    return found or None


def _profile(model, path: Path | None, inputs: Any, runs: int, show) -> dict | None:
    """The profile dict: ``path`` rendered with the build's metadata, or measured here; None
    (with a note) when the target does not run on this machine."""
    profiling = importlib.import_module("bridge.profile")

    if path is not None:
        return profiling.load(path, model.metadata).to_dict()
    try:
        return model.profile(_fit_batch(model, inputs), runs=runs, progress=show).to_dict()
    except DeviceError:
        target = model.metadata.get("target_name", "the target")
        err_console.print(
            f"[yellow]no profile:[/] {escape(target)} code does not run on this machine; profile "
            f"it on the device (bridge build --target {escape(target)} --bundle, then ./run "
            "--profile out.json there) and pass --profile out.json",
            soft_wrap=True,
        )
        return None


def _fit_batch(model, inputs: dict | None) -> dict | None:
    """The reference's inputs cut to the model's static batch (a reference may hold several
    samples; the page profiles one call as built)."""
    if inputs is None:
        return None
    batches = {info.name: info.shape[0] if info.shape else None for info in model.inputs}
    return {
        name: array[: batches[name]] if isinstance(batches.get(name), int) else array
        for name, array in inputs.items()
    }


def _summary(output: Path, parts: dict) -> None:
    """What the page says, in a few lines on stdout."""
    from bridge.report import fmt_bytes, fmt_us

    build, compare, profile = parts["build"], parts["compare"], parts["profile"]
    console.print(
        f"build       {escape(str(build.get('target_name')))}: "
        f"{build.get('build_seconds', 0):.1f} s, library {fmt_bytes(build.get('library_bytes'))},"
        f" peak memory {fmt_bytes(build.get('peak_memory_bytes'))}",
        soft_wrap=True,
    )
    if profile is not None:
        console.print(f"latency     {fmt_us(profile.get('total_us'))} per call")
    if compare is not None:
        first = compare.get("first_divergent")
        line = f"first divergent layer: {escape(first)}" if first else "every layer agrees"
        console.print(f"compare     {line}", soft_wrap=True)
    console.print(
        f"report      {escape(str(output))} ({fmt_bytes(output.stat().st_size)})", soft_wrap=True
    )

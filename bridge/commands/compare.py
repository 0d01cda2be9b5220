"""``bridge compare``: every layer's output against a reference, the first divergent one named.

Exit code 0 when every layer agrees within the tolerance, 1 when one diverges, 2 on bad input
(``bridge.cli.main`` turns typed errors into one ``error:`` line and exit code 2).
"""

from __future__ import annotations

import argparse
import math

from rich.markup import escape
from rich.table import Table

from bridge.commands.console import console, progress_bar
from bridge.commands.options import add_custom_layers


def add_parser(sub) -> None:
    """Add ``bridge compare`` to the ``bridge`` subparsers ``sub``."""
    command = sub.add_parser(
        "compare",
        help="compare every layer's output with a reference; name the first divergent layer",
    )
    command.add_argument("model", help=".keras, .h5, architecture .json or .tflite")
    command.add_argument("weights", nargs="?", help="weights file (with a .json architecture)")
    command.add_argument(
        "--inputs",
        help="x.npy (one input) or x.npz keyed by input name (default: the reference's inputs)",
    )
    command.add_argument(
        "--reference",
        help="a .npz from 'python -m bridge.reference', or 'litert' (.tflite), 'int8' (the "
        "float build against its int8 build) or 'native' (this machine against --target); "
        "default: 'litert' for .tflite, 'native' with another --target",
    )
    command.add_argument(
        "--target",
        default="llvm",
        help="build the compared model for this target (an aarch64 preset runs under qemu)",
    )
    command.add_argument("--atol", type=float, help="absolute tolerance (default 1e-5)")
    command.add_argument(
        "--rtol",
        type=float,
        help="tolerance relative to each layer's largest reference value (default 1e-3; 0.05 "
        "against int8)",
    )
    command.add_argument(
        "--cosine", type=float, help="least cosine similarity (default 0.999; 0.99 against int8)"
    )
    command.add_argument(
        "--calibration", help="inputs to calibrate the int8 build on (default: --inputs)"
    )
    command.add_argument(
        "--runner-outputs",
        metavar="DIR",
        help="the compared outputs, written on the device by the bundle's ./run --out DIR",
    )
    command.add_argument(
        "--bundle-out",
        metavar="DIR",
        help="also write the all-layers bundle (and its in<i>.npy inputs) there, for a device",
    )
    command.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    add_custom_layers(command)
    command.set_defaults(func=run)


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def render(table) -> Table:
    """The comparison as a rich table, the first divergent layer highlighted."""
    out = Table(title=f"Compared with {escape(table.reference)}", show_edge=False)
    for column in ("layer", "class", "shape", "max abs", "max rel", "cosine", ""):
        out.add_column(column, justify="left" if column in ("layer", "class") else "right")
    first = table.first_divergent
    for row in table.rows:
        shape = "(" + ", ".join(map(str, row.shape)) + ")"
        cosine = "-" if row.cosine is None else f"{row.cosine:.6f}"
        status = "[green]ok[/]" if row.ok else "[red]differs[/]"
        if row.note:
            status += f" [dim]({escape(row.note)})[/]"
        style = "bold red" if row.layer == first else None
        out.add_row(
            escape(row.layer),
            escape(row.class_name),
            shape,
            _number(row.max_abs),
            _number(row.max_rel),
            cosine,
            status,
            style=style,
        )
    return out


def run(args: argparse.Namespace) -> int:
    """``bridge compare``: 0 when every layer agrees, 1 when one diverges."""
    from bridge.compare import compare

    with progress_bar() as show:
        table = compare(
            args.model,
            args.weights,
            inputs=args.inputs,
            reference=args.reference,
            target=args.target,
            atol=args.atol,
            rtol=args.rtol,
            cosine=args.cosine,
            calibration=args.calibration,
            runner_outputs=args.runner_outputs,
            bundle_out=args.bundle_out,
            custom_layers=args.custom_layers,
            progress=show,
        )
    console.print(render(table))
    missing = table.unreferenced
    if missing:
        names = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        console.print(
            f"{len(missing)} layer(s) not in the reference, not compared: {names}",
            highlight=False,
        )
    if args.json:
        table.save(args.json)
    tol = table.tolerance
    rule = f"atol={tol.atol:g}, rtol={tol.rtol:g}, cosine>={tol.cosine:g}"
    first = table.first_divergent
    if first is None:
        console.print(f"all {len(table.rows)} layers agree ({rule})", highlight=False)
        return 0
    bad = sum(1 for row in table.rows if not row.ok)
    console.print(f"{bad} of {len(table.rows)} layers differ ({rule})", highlight=False)
    print(f"first divergent layer: {first}")
    return 1

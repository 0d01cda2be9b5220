"""Options shared by several ``bridge`` subcommands (one definition, every command the same)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def custom_layers(spec: str) -> dict:
    """--custom-layers MODULE:NAME or FILE.py:NAME: the dict of converters named by the user
    (their own code, imported like any Python module; nothing from the model file runs)."""
    source, _, attribute = spec.rpartition(":")
    if not source or not attribute:
        raise argparse.ArgumentTypeError(f"expected MODULE:NAME or FILE.py:NAME, got {spec!r}")
    try:
        table = getattr(_import(source), attribute)
    except Exception as exc:  # the user's own module: any failure is reported in one line
        raise argparse.ArgumentTypeError(f"cannot load {spec!r}: {one_line(exc)}") from exc
    if not isinstance(table, dict):
        raise argparse.ArgumentTypeError(f"{spec!r} is a {type(table).__name__}, not a dict")
    return table


def _import(source: str):
    """The module ``source`` names: a ``.py`` file, or a module importable from the cwd."""
    if source.endswith(".py"):
        path = Path(source).resolve()
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.parent))  # so the file can import its neighbours
        try:
            module_spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        return module
    sys.path.insert(0, str(Path.cwd()))
    return importlib.import_module(source)


CUSTOM_LAYERS_OPTION = {
    "type": custom_layers,
    "metavar": "MODULE:NAME",
    "help": "converters for custom/Lambda layers: a dict NAME in a module or a .py file "
    "(e.g. my_converters.py:CUSTOM_LAYERS); see README 'Custom layers'",
}


def add_custom_layers(command: argparse.ArgumentParser) -> None:
    """Give ``command`` the ``--custom-layers`` option (``args.custom_layers``, default None)."""
    command.add_argument("--custom-layers", **CUSTOM_LAYERS_OPTION)

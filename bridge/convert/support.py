"""What bridge converts, for people: the support table by family, each family's note, and the
Markdown README's "Supported layers" section holds (``bridge layers --markdown``)."""

from __future__ import annotations

import importlib

from bridge.convert.layers import all_converters
from bridge.convert.registry import ALIASES, UNSUPPORTED

__all__ = ["ALIASES", "UNSUPPORTED", "family_notes", "layers_markdown", "support_table"]


def support_table() -> dict[str, list[str]]:
    """Family (module in ``bridge/convert/layers/``) -> its registered Keras classes, sorted."""
    table: dict[str, list[str]] = {}
    for name, converter in sorted(all_converters().items()):
        table.setdefault(converter.family, []).append(name)
    return dict(sorted(table.items()))


def family_notes() -> dict[str, str]:
    """Family -> the first paragraph of its module's docstring, on one line."""
    notes = {}
    for family in support_table():
        doc = importlib.import_module(f"bridge.convert.layers.{family}").__doc__ or ""
        notes[family] = " ".join(doc.strip().split("\n\n")[0].split())
    return notes


def layers_markdown() -> str:
    """The support table as Markdown, from the registry (README's "Supported layers" holds it)."""
    from bridge.convert.activations import ACTIVATIONS

    families, notes = support_table(), family_notes()
    lines = [
        "| family (`bridge/convert/layers/`) | Keras classes | notes |",
        "|---|---|---|",
        *(
            f"| {family} | {', '.join(classes)} | {notes[family]} |"
            for family, classes in families.items()
        ),
        "",
        f"{sum(map(len, families.values()))} classes in {len(families)} families. "
        f"Activation functions (`activation=` and `Activation`): {', '.join(sorted(ACTIVATIONS))}.",
        "Aliases (files hold the class's own name): "
        + ", ".join(f"{a} = {c}" for a, c in ALIASES.items())
        + ".",
        "",
        "| deliberately unsupported | why |",
        "|---|---|",
        *(f"| {name} | {reason} |" for name, reason in UNSUPPORTED.items()),
    ]
    return "\n".join(lines) + "\n"

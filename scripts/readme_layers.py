"""Rewrite README's generated support table from the converter registry.

    python scripts/readme_layers.py        # after adding or changing a converter

The block between the README markers is ``bridge layers --markdown``; tests/test_registry.py fails
while they differ.
"""

from __future__ import annotations

from pathlib import Path

from bridge.cli import layers_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- generated: bridge layers --markdown -->\n", "<!-- end generated -->"


def main() -> None:
    text = README.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(head + START + layers_markdown() + END + tail)


if __name__ == "__main__":
    main()

"""Rewrite README's generated support table from the converter registry.

    python scripts/readme_layers.py        # after adding or changing a converter

The block between the README markers is ``bridge layers --markdown``; tests/test_registry.py fails
while they differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's bridge, whichever one is installed

from bridge.convert.support import layers_markdown  # noqa: E402

README = ROOT / "README.md"
START, END = "<!-- generated: bridge layers --markdown -->\n", "<!-- end generated -->"


def main() -> None:
    text = README.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(head + START + layers_markdown() + END + tail)


if __name__ == "__main__":
    main()

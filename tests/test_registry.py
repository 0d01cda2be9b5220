"""Meta-tests: every registered converter has a numeric test fixture; one family per module."""

from __future__ import annotations

import gzip
import json
import zipfile

import h5py

from bridge.convert.registry import all_converters, register, registry_key
from tests.conftest import APPS, KERAS2, KERAS3


def _classes(config) -> set[str]:
    found = set()
    if isinstance(config, dict):
        if "class_name" in config:
            found.add(registry_key(config["class_name"], config.get("module")))
        for value in config.values():
            found |= _classes(value)
    elif isinstance(config, list):
        for value in config:
            found |= _classes(value)
    return found


def classes_with_fixtures() -> set[str]:
    """Keras classes appearing in any numeric layer fixture (both versions)."""
    found: set[str] = set()
    for path in KERAS3.glob("layers/*.keras"):
        with zipfile.ZipFile(path) as archive:
            found |= _classes(json.loads(archive.read("config.json")))
    for path in KERAS2.glob("layers/*.h5"):
        with h5py.File(path) as handle:
            found |= _classes(json.loads(handle.attrs["model_config"]))
    for path in [*APPS.glob("*.json"), *APPS.glob("*.json.gz")]:  # compared with Keras too
        if ".manifest." not in path.name:
            text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text()
            found |= _classes(json.loads(text))
    return found


def test_every_registered_converter_has_a_numeric_test():
    untested = sorted(set(all_converters()) - classes_with_fixtures())
    assert not untested, f"converters without a layer fixture: {untested}"


def test_duplicate_registration_is_refused():
    import pytest

    with pytest.raises(RuntimeError, match="registered twice"):
        register("Dense")(lambda ctx, inputs: inputs[0])


def test_families_are_modules():
    families = {c.family for c in all_converters().values()}
    assert {"conv", "pooling", "core", "merging", "normalization", "reshaping"} <= families


def test_readme_lists_every_supported_layer():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("## Supported layers", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in all_converters() if name not in table]
    assert not missing, f"README's layer table lacks {missing}"


def test_readme_table_rows_match_registry_families():
    from pathlib import Path

    from bridge.convert.registry import UNSUPPORTED, support_table

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Supported layers", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[0].split():
            rows[cells[0].split()[0]] = cells[1]
    for family, classes in support_table().items():
        assert family in rows, f"README's layer table has no row for family {family!r}"
        misplaced = [name for name in classes if name not in rows[family]]
        assert not misplaced, f"README row {family!r} lacks {misplaced}"
    assert all(name in section for name in UNSUPPORTED)

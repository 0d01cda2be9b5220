"""Meta-tests: every registered converter has a numeric test fixture; one family per module."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import h5py

from bridge.convert.layers import all_converters
from bridge.convert.registry import register, registry_key
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


README = Path(__file__).parent.parent / "README.md"


def generated_block(text: str) -> str:
    start = "<!-- generated: bridge layers --markdown -->\n"
    return text.split(start, 1)[1].split("<!-- end generated -->", 1)[0]


def test_readme_table_is_generated_from_the_registry():
    from bridge.convert.support import layers_markdown

    assert generated_block(README.read_text()) == layers_markdown(), (
        "README's layer table is stale: run scripts/readme_layers.py"
    )


def test_every_keras_layer_class_is_accounted_for():
    """Every class keras.layers exports (Keras 3.15, recorded by the fixture generator) is
    supported, an alias of one, or deliberately unsupported with a reason."""
    from bridge.convert.registry import ALIASES, PARTS, UNSUPPORTED

    exported = json.loads((KERAS3 / "layer_classes.json").read_text())["classes"]
    # cells are converted as part of the RNN whose config holds them (registered as parts)
    known = set(all_converters()) | set(UNSUPPORTED) | set(PARTS)
    missing = sorted(
        name
        for name, own in exported.items()
        if name not in known and (own not in known or ALIASES.get(name, own) != own)
    )
    assert not missing, f"keras.layers classes neither supported nor explained: {missing}"
    assert not set(UNSUPPORTED) & set(all_converters())
    assert {"LSTMCell", "StackedRNNCells"} <= set(PARTS)


def test_sublayer_groups_are_registration_data():
    """Where Keras 3 keeps a layer's sub-layer variables comes from its converter's
    registration (the weights reader is handed it), including StackedRNNCells' numbering."""
    from bridge.convert.layers import lookup

    assert lookup("LSTM").sublayer_groups({}) == ["cell"]
    assert lookup("TimeDistributed").sublayer_groups({}) == ["layer"]
    assert lookup("Dense").sublayer_groups({"units": 3}) == []
    stacked = {
        "cell": {
            "class_name": "StackedRNNCells",
            "config": {"cells": [{"class_name": "LSTMCell"}, {"class_name": "LSTMCell"}]},
        }
    }
    assert lookup("RNN").sublayer_groups(stacked) == [
        "cell/cells/lstm_cell",
        "cell/cells/lstm_cell_1",
    ]
    groups = lookup("Bidirectional").sublayer_groups({"layer": {"config": {}}})
    assert groups == ["forward_layer/cell", "backward_layer/cell"]

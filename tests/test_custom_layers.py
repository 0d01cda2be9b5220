"""Custom layers and Lambda layers through user converters (``custom_layers=``), against a model
saved by real Keras 3 and tf.keras 2.15 (a registered ``mypkg>ScaleShift`` with weights and a
Lambda; tests/fixtures/generate.py ``gen_custom``). Tolerance as in test_layers."""

from __future__ import annotations

import numpy as np
import pytest

import bridge
from bridge.cli import main
from bridge.errors import UnsupportedModelError
from tests.conftest import EXAMPLES, KERAS2, KERAS3, assert_matches, load_script, reference

CONVERTERS = EXAMPLES / "custom_layer" / "converters.py"
FILES = [KERAS3 / "custom" / "custom_scale.keras", KERAS2 / "custom" / "custom_scale.h5"]


def example_converters() -> dict:
    return load_script(CONVERTERS, "custom_layer_converters").CUSTOM_LAYERS


@pytest.mark.parametrize("model_file", FILES, ids=lambda p: p.parent.parent.name)
def test_custom_and_lambda_layers_match_keras(model_file):
    inputs, outputs = reference(model_file.with_suffix(".npz"))
    model = bridge.build(model_file, batch_size=2, custom_layers=example_converters())
    assert_matches(model(*inputs), outputs)


@pytest.mark.parametrize("model_file", FILES, ids=lambda p: p.parent.parent.name)
def test_without_converters_preflight_says_how_to_supply_them(model_file):
    with pytest.raises(UnsupportedModelError) as info:
        bridge.to_relax(model_file)
    problems = {p.layer: p.reason for p in info.value.problems}
    assert set(problems) == {"scale_shift", "double_minus_one"}
    assert "custom_layers={'mypkg>ScaleShift'" in problems["scale_shift"]
    assert "custom_layers={'double_minus_one'" in problems["double_minus_one"]
    assert "never executes" in problems["double_minus_one"]


def test_a_converter_without_its_weights_is_reported():
    converters = dict(example_converters())
    converters["mypkg>ScaleShift"] = lambda ctx, inputs: inputs[0]  # declares no weights
    with pytest.raises(UnsupportedModelError, match="holds 2 weight arrays"):
        bridge.to_relax(FILES[0], custom_layers=converters)


def test_custom_layers_values_are_checked():
    with pytest.raises(TypeError, match="custom_layers"):
        bridge.to_relax(FILES[0], custom_layers={"mypkg>ScaleShift": 3})


def test_cli_custom_layers_option(tmp_path, capsys):
    argv = ["inspect", str(FILES[0]), "--custom-layers", f"{CONVERTERS}:CUSTOM_LAYERS"]
    assert main(argv) == 0
    assert "all supported" in capsys.readouterr().out
    assert main(["inspect", str(FILES[0])]) == 1


def test_cli_custom_layers_on_compare_profile_and_report(tmp_path, capsys):
    """Every command that builds the model takes --custom-layers (without it each refuses)."""
    inputs, _ = reference(FILES[0].with_suffix(".npz"))
    x = tmp_path / "x.npy"
    np.save(x, inputs[0])
    option = ["--custom-layers", f"{CONVERTERS}:CUSTOM_LAYERS"]
    commands = {
        "compare": ["compare", str(FILES[0]), "--reference", "int8", "--inputs", str(x)],
        "profile": ["profile", str(FILES[0]), "--runs", "1"],
        "report": ["report", str(FILES[0]), "--runs", "1", "-o", str(tmp_path / "r.html")],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        assert "scale_shift" in capsys.readouterr().err, name
        assert main(argv + option) == 0, name
        out = capsys.readouterr().out
        assert "scale_shift" in out or "r.html" in out, name

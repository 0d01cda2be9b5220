"""The bridge CLI: build, inspect, run."""

from __future__ import annotations

import numpy as np

from bridge.cli import main
from tests.conftest import KERAS3, reference

MODELS = KERAS3 / "models"


def test_build_inspect_run(tmp_path, capsys):
    assert (
        main(
            [
                "build",
                str(MODELS / "seq_cnn.json"),
                str(MODELS / "seq_cnn.weights.h5"),
                "--target",
                "llvm",
                "-o",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    for word in ("input", "output", "layers", "build time", "artifact", "seq_cnn.so"):
        assert word in text
    library = tmp_path / "out" / "seq_cnn.so"
    assert library.is_file() and (tmp_path / "out" / "seq_cnn.meta.json").is_file()

    inputs, outputs = reference(MODELS / "seq_cnn.npz")
    np.save(tmp_path / "x.npy", inputs[0][:1])
    assert (
        main(
            [
                "run",
                str(library),
                "--input",
                str(tmp_path / "x.npy"),
                "--out",
                str(tmp_path / "res"),
            ]
        )
        == 0
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "res" / "output0.npy"), outputs[0][:1], rtol=1e-4, atol=1e-5
    )
    assert main(["run", str(library), "--input", str(tmp_path / "x.npy")]) == 0
    assert "out" in capsys.readouterr().out


def test_inspect_lists_layers_and_support(capsys):
    assert main(["inspect", str(MODELS / "seq_cnn.keras")]) == 0
    text = capsys.readouterr().out
    assert "sequential" in text and "Conv2D" in text and "(1, 14, 14, 8)" in text
    assert "all supported" in text


def test_inspect_reports_unsupported(capsys):
    assert main(["inspect", str(KERAS3 / "errors" / "lambda_model.keras")]) == 1
    text = capsys.readouterr().out
    assert "Lambda" in text and "unsupported" in text


def test_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["build", str(tmp_path / "missing.keras")]) == 2
    assert "not found" in capsys.readouterr().err


def test_layers_prints_the_registry_and_unsupported(capsys):
    from bridge.convert.registry import UNSUPPORTED, all_converters

    assert main(["layers"]) == 0
    text = capsys.readouterr().out
    for name, converter in all_converters().items():
        assert name in text and converter.family in text
    for name in UNSUPPORTED:
        assert name in text
    assert "string" in text and "Deliberately unsupported" in text


def test_layers_markdown_is_readmes_table(capsys):
    from bridge.cli import layers_markdown

    assert main(["layers", "--markdown"]) == 0
    assert capsys.readouterr().out == layers_markdown()

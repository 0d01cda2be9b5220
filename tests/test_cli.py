"""The bridge CLI: build, inspect, run."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bridge.cli import main
from tests.conftest import EXAMPLES, KERAS3, reference

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
    # a native build says it needs this CPU, and which preset is portable
    assert "built for this CPU" in text and "--target x86-64" in text
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
    from bridge.convert.layers import all_converters
    from bridge.convert.registry import UNSUPPORTED

    assert main(["layers"]) == 0
    text = capsys.readouterr().out
    for name, converter in all_converters().items():
        assert name in text and converter.family in text
    for name in UNSUPPORTED:
        assert name in text
    assert "string" in text and "Deliberately unsupported" in text


def test_layers_markdown_is_readmes_table(capsys):
    import bridge.cli

    assert not hasattr(bridge.cli, "layers_markdown"), "the support table lives in convert"
    from bridge.convert.support import layers_markdown

    assert main(["layers", "--markdown"]) == 0
    assert capsys.readouterr().out == layers_markdown()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """seq_cnn exported once for the ``run`` error paths."""
    import bridge

    return bridge.build(MODELS / "seq_cnn.keras").export(
        tmp_path_factory.mktemp("lib") / "seq_cnn.so"
    )


def one_error_line(capsys, *needles: str) -> str:
    """The command printed exactly one stderr line, an ``error:`` naming ``needles``."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
    assert "Traceback" not in captured.err + captured.out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_run_missing_input_file(library, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "x.npy"
    assert main(["run", str(library), "-i", str(missing)]) == 2
    one_error_line(capsys, str(missing), "no such file")


def test_run_refuses_non_npy_without_pickle_advice(library, tmp_path, capsys):
    text = tmp_path / "x.txt"
    text.write_text("1 2 3\n")
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.zeros(3))
    for file, words in (
        (text, "not a .npy array file"),
        (npz, "not a .npy array file"),
        (pickled, "Python objects"),
    ):
        assert main(["run", str(library), "-i", str(file)]) == 2
        line = one_error_line(capsys, str(file), words)
        assert "pickle" not in line


def test_run_out_is_a_file(library, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28, 1), np.float32))
    (tmp_path / "taken").write_text("")
    argv = ["run", str(library), "-i", str(tmp_path / "x.npy"), "--out", str(tmp_path / "taken")]
    assert main(argv) == 2
    one_error_line(capsys, str(tmp_path / "taken"), "not a folder")


def test_run_same_input_twice(library, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 28, 28, 1), np.float32))
    assert main(["run", str(library), "-i", str(x), "-i", str(x)]) == 2
    one_error_line(capsys, str(x), "given")
    name = bridge_input_name(library)
    assert main(["run", str(library), "-i", f"{name}={x}", "-i", f"{name}={x}"]) == 2
    one_error_line(capsys, str(x), f"{name!r} given twice")


def bridge_input_name(library) -> str:
    import bridge

    return bridge.load(library).inputs[0].name


@pytest.mark.parametrize(
    "argv",
    [
        ["build"],
        ["build", "m.keras", "--batch-size", "0"],
        ["run", "x.so"],
        ["frobnicate"],
        ["inspect", "m.keras", "--custom-layers", "nomodule_here_xyz:TABLE"],
    ],
)
def test_usage_errors_are_one_line(argv, capsys):
    assert main(argv) == 2
    one_error_line(capsys, "bridge")


def test_every_subcommand_reports_missing_files_in_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing.keras")
    for argv in (
        ["build", missing],
        ["tune", missing, "--budget", "1"],
        ["inspect", missing],
        ["run", str(tmp_path / "missing.so"), "-i", "x.npy"],
    ):
        assert main(argv) == 2, argv
        one_error_line(capsys, "missing.")


def test_os_errors_and_interrupts_are_one_line(monkeypatch, tmp_path, capsys):
    import bridge.api

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "m.keras"))

    monkeypatch.setattr(bridge.api, "inspect", denied)
    assert main(["inspect", str(tmp_path / "m.keras")]) == 2
    one_error_line(capsys, "m.keras", "Permission denied")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bridge.api, "inspect", interrupted)
    assert main(["inspect", str(tmp_path / "m.keras")]) == 130
    one_error_line(capsys, "interrupted")


def test_error_text_keeps_brackets(monkeypatch, tmp_path, capsys):
    """rich markup must not eat ``[tune]`` (the install command would install nothing)."""
    import bridge
    from bridge.errors import TuningError

    def missing_extras(*args, **kwargs):
        raise TuningError("tuning needs xgboost: pip install 'bridge[tune]' [bold]x[/]")

    monkeypatch.setattr(bridge, "tune", missing_extras)
    assert main(["tune", str(MODELS / "seq_cnn.keras"), "--budget", "1"]) == 2
    one_error_line(capsys, "pip install 'bridge[tune]' [bold]x[/]")


def test_long_errors_are_not_wrapped(tmp_path, capsys):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "missing.keras"
    assert main(["inspect", str(deep)]) == 2
    one_error_line(capsys, str(deep))


def test_version(capsys):
    assert main(["--version"]) == 0
    text = capsys.readouterr().out
    assert "bridge 0." in text and "TVM 0.27" in text
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "TVM" in result.stdout


def test_subprocess_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "run", str(tmp_path / "m.so"), "-i", "x.npy"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "m.so" in result.stderr


def test_portable_build_has_no_native_warning(tmp_path, capsys):
    model = str(MODELS / "seq_cnn.keras")
    assert main(["build", model, "--target", "x86-64", "-o", str(tmp_path)]) == 0
    assert "built for this CPU" not in capsys.readouterr().out


def readme_block(heading: str) -> list[str]:
    """The commands (argument lists) of the first ```sh block under a README heading."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text[text.index(f"\n## {heading}\n") :]
    block = section[section.index("```sh\n") + 6 :]
    block = block[: block.index("```")]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_readme_tflite_example_runs_as_written(tmp_path):
    """From a fresh clone's root: the README's TFLite commands, then the example script."""
    (tmp_path / "examples").symlink_to(EXAMPLES)
    commands = readme_block("TFLite models")
    assert any("examples/tflite/cnn.tflite" in c for c in commands)
    assert any("examples/run_tflite_example.py" in c for c in commands)
    for command in commands:
        program, *args = command
        prefix = {"bridge": [sys.executable, "-m", "bridge.cli"], "python": [sys.executable]}
        result = subprocess.run(
            [*prefix[program], *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, (command, result.stderr[-2000:])
    assert "OK: bridge matches LiteRT" in result.stdout


def test_run_wrong_shape_names_the_file(library, tmp_path, capsys):
    x = tmp_path / "small.npy"
    np.save(x, np.zeros((2, 3), np.float32))
    assert main(["run", str(library), "-i", str(x)]) == 2
    one_error_line(capsys, f"{x}: input", "[2, 3]")

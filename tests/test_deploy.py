"""Deployment: bundles that run with no Python (x86 under env -i, aarch64 under qemu),
dynamic batch, weights kept in a separate file, Jetson bundles with sm_87 device code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import bridge
from bridge.cuda import device_code
from bridge.runtime import metadata_path, params_path
from bridge.targets import resolve
from tests.conftest import KERAS3, assert_matches, needs_tools, reference, run_bundle

MODELS = KERAS3 / "models"


def test_x86_bundle_runs_without_python(tmp_path):
    inputs, outputs = reference(MODELS / "func_multi_io.npz")
    bridge.build(MODELS / "func_multi_io.keras", target="x86-64", batch_size=2).export(
        tmp_path / "bundle", bundle=True
    )
    folder = tmp_path / "bundle"
    for name in (
        "model.so",
        "model.meta.json",
        "run",
        "libtvm_runtime.so",
        "libtvm_ffi.so",
        "README.txt",
    ):
        assert (folder / name).is_file(), name
    assert_matches(run_bundle(folder, inputs), outputs)
    bench = subprocess.run(
        ["./run", "in0.npy", "in1.npy", "--out", "r2", "--bench", "5"],
        cwd=folder,
        env={},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "median" in bench.stdout


@pytest.mark.parametrize(
    "preset, model",
    [
        ("rpi4", "models/seq_cnn"),
        ("aarch64", "models/seq_cnn"),
        ("aarch64", "layers/conv2d_winograd"),  # Winograd kernels with NEON's 4 lanes
        ("aarch64", "layers/activation_swish"),  # bridge's sigmoid and exp on NEON
        ("aarch64", "layers/activation_exponential"),
    ],
)
def test_aarch64_bundle_runs_under_qemu(preset, model, tmp_path):
    needs_tools(resolve(preset), "qemu-aarch64")
    qemu = shutil.which("qemu-aarch64")
    inputs, outputs = reference(KERAS3 / f"{model}.npz")
    bridge.build(KERAS3 / f"{model}.keras", target=preset, batch_size=len(inputs[0])).export(
        tmp_path / "bundle", bundle=True
    )
    got = run_bundle(tmp_path / "bundle", inputs, qemu, "-L", "/usr/aarch64-linux-gnu")
    assert_matches(got, outputs)


def test_dynamic_batch_one_artifact_many_batches(tmp_path):
    inputs, outputs = reference(MODELS / "seq_cnn.npz")
    model = bridge.build(MODELS / "seq_cnn.keras", batch_size=None)
    assert model.inputs[0].shape[0] is None
    batch7 = np.concatenate([inputs[0]] * 4)[:7]
    loaded = bridge.load(model.export(tmp_path / "model.so"))
    expected7 = np.concatenate([outputs[0]] * 4)[:7]
    for m in (model, loaded):
        assert_matches(m(inputs[0][:1]), outputs[0][:1])
        assert_matches(m(batch7), expected7)
    bundle = tmp_path / "bundle"
    model.export(bundle, bundle=True)
    assert_matches(run_bundle(bundle, [batch7]), [expected7])
    assert_matches(run_bundle(bundle, [inputs[0][:1]]), [outputs[0][:1]])


def test_separate_params_file(tmp_path):
    inputs, outputs = reference(MODELS / "seq_cnn.npz")
    model = bridge.build(MODELS / "seq_cnn.keras", batch_size=2, separate_params=True)
    embedded = bridge.build(MODELS / "seq_cnn.keras", batch_size=2, separate_params=False)
    embedded = embedded.export(tmp_path / "e.so")
    library = model.export(tmp_path / "sep" / "model.so")
    assert params_path(library).is_file()
    _, params = bridge.to_relax(MODELS / "seq_cnn.keras")
    kernel = params["fc/kernel"].tobytes()  # used as stored by the matmul, so kept verbatim
    assert kernel in embedded.read_bytes() and kernel not in library.read_bytes()
    meta = json.loads(metadata_path(library).read_text())
    assert "conv1/kernel" in meta["params"]
    assert_matches(bridge.load(library)(*inputs), outputs)
    bundle = tmp_path / "bundle"
    model.export(bundle, bundle=True)
    assert (bundle / "model.params").is_file()
    assert_matches(run_bundle(bundle, inputs), outputs)


def test_missing_params_file_is_reported(tmp_path):
    model = bridge.build(MODELS / "seq_cnn.keras", separate_params=True)
    library = model.export(tmp_path / "model.so")
    params_path(library).unlink()
    with pytest.raises(bridge.errors.ArtifactError, match=r"model\.params"):
        bridge.load(library)


def test_jetson_bundle_has_aarch64_host_and_sm87_device_code(tmp_path):
    needs_tools(resolve("jetson-orin-nano"))
    bridge.build(MODELS / "seq_cnn.keras", target="jetson-orin-nano").export(
        tmp_path / "jetson", bundle=True
    )
    folder = tmp_path / "jetson"
    assert device_code(folder / "model.so") == [("fatbin", ["sm_87"])]
    for name in ("run", "model.so", "libtvm_runtime.so", "libtvm_ffi.so", "libtvm_runtime_cuda.so"):
        header = (folder / name).read_bytes()[:20]
        assert int.from_bytes(header[18:20], "little") == 183, f"{name} is not aarch64"


def test_cli_bundle(tmp_path):
    from bridge.cli import main

    assert (
        main(
            [
                "build",
                str(MODELS / "seq_cnn.keras"),
                "--target",
                "x86-64",
                "--bundle",
                "--batch-size",
                "dynamic",
                "-o",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    inputs, outputs = reference(MODELS / "seq_cnn.npz")
    assert_matches(run_bundle(tmp_path / "b", inputs), outputs)


# --- the runner's command line -------------------------------------------------------------


def check_runner_errors(folder, tmp_path, *prefix: str) -> None:
    """``run`` with no inputs, a wrong shape or dtype: exit 2, which input, expected and given
    shape, and usage; --bench without --out writes nothing; threads default to the cores."""
    run = [*prefix, str(folder / "run")]
    shape = json.loads((folder / "model.meta.json").read_text())["inputs"][0]["shape"]
    expected = "(" + ", ".join(map(str, shape)) + ")"
    work = tmp_path / "cwd"
    work.mkdir()
    invoke = lambda *args: subprocess.run(  # noqa: E731
        [*run, *args], cwd=work, env={}, capture_output=True, text=True, timeout=300
    )

    result = invoke()
    assert result.returncode == 2, result.stderr
    assert "no input files given" in result.stderr and expected in result.stderr
    assert "usage: run" in result.stderr and "Check failed" not in result.stderr

    np.save(work / "wrong.npy", np.zeros((2, 5), np.float32))
    result = invoke("wrong.npy")
    assert result.returncode == 2, result.stderr
    assert "wrong.npy: input" in result.stderr
    assert f"expects float32 {expected}, got float32 (2, 5)" in result.stderr
    assert "usage: run" in result.stderr

    np.save(work / "ints.npy", np.zeros(shape, np.int32))
    result = invoke("ints.npy")
    assert result.returncode == 2 and "got int32" in result.stderr, result.stderr

    np.save(work / "x.npy", np.zeros(shape, np.float32))
    result = invoke("x.npy", "x.npy")
    assert result.returncode == 2 and "2 input file(s) given" in result.stderr, result.stderr

    before = sorted(p.name for p in work.iterdir())
    result = invoke("x.npy", "--bench", "2")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in work.iterdir()) == before, "--bench without --out wrote files"
    cores = len(os.sched_getaffinity(0))
    assert f"on {cores} thread(s)" in result.stdout, result.stdout
    result = invoke("x.npy", "--bench", "1", "--threads", "1")
    assert "on 1 thread(s)" in result.stdout, result.stdout
    assert "usage: run" in invoke("--help").stdout


def test_x86_runner_reports_bad_arguments(tmp_path):
    bridge.build(MODELS / "seq_cnn.keras", target="x86-64").export(tmp_path / "bundle", bundle=True)
    check_runner_errors(tmp_path / "bundle", tmp_path)


def test_aarch64_runner_reports_bad_arguments(tmp_path):
    needs_tools(resolve("aarch64"), "qemu-aarch64")
    bridge.build(MODELS / "seq_cnn.keras", target="aarch64").export(
        tmp_path / "bundle", bundle=True
    )
    qemu = shutil.which("qemu-aarch64")
    check_runner_errors(tmp_path / "bundle", tmp_path, qemu, "-L", "/usr/aarch64-linux-gnu")


# --- toolchain checks and partial bundles ---------------------------------------------------


def strip_path(monkeypatch, tmp_path) -> None:
    """PATH without the cross compiler (and without anything else)."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_cli_arm_bundle_checks_the_cross_compiler_before_compiling(monkeypatch, tmp_path, capsys):
    from bridge.cli import main

    strip_path(monkeypatch, tmp_path)
    compiled = []
    monkeypatch.setattr(bridge, "build", lambda *a, **k: compiled.append(a))
    out = tmp_path / "arm"
    argv = ["build", str(MODELS / "seq_cnn.keras"), "--target", "rpi4", "--bundle"]
    assert main([*argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "aarch64-linux-gnu-g++" in err and "apt-get install g++-aarch64-linux-gnu" in err
    assert len(err.strip().splitlines()) == 1
    assert not compiled and not out.exists()


def test_failed_bundle_leaves_no_folder(monkeypatch, tmp_path):
    model = bridge.build(MODELS / "seq_cnn.keras", target="aarch64")
    strip_path(monkeypatch, tmp_path)
    with pytest.raises(bridge.errors.ArtifactError, match="g\\+\\+-aarch64-linux-gnu"):
        model.export(tmp_path / "new" / "bundle", bundle=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-path"]


def test_bundle_failing_late_is_removed_and_existing_files_kept(monkeypatch, tmp_path):
    from bridge import deploy

    model = bridge.build(MODELS / "seq_cnn.keras", target="x86-64")

    def broken(folder, *args):
        (folder / "half-written").write_text("")
        raise bridge.errors.ArtifactError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(deploy, "write_bundle", broken)
        with pytest.raises(bridge.errors.ArtifactError, match="disk full"):
            model.export(tmp_path / "bundle", bundle=True)
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    library = model.export(existing, bundle=True)
    assert library == existing / "model.so" and library.is_file()
    assert (existing / "keep.txt").read_text() == "mine" and (existing / "run").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_runtime_download_failure_is_clear(monkeypatch, tmp_path):
    from bridge.deploy import check_toolchain

    needs_tools(resolve("aarch64"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    said = []
    with pytest.raises(bridge.errors.ArtifactError) as error:
        check_toolchain(resolve("aarch64"), bundle=True, notify=said.append)
    message = str(error.value)
    assert "cannot download the aarch64 TVM runtime" in message and "network" in message
    assert "\n" not in message
    assert said and "downloading the aarch64 TVM runtime" in said[0]

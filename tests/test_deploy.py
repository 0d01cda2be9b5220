"""Deployment: bundles that run with no Python (x86 under env -i, aarch64 under qemu),
dynamic batch, weights kept in a separate file, Jetson bundles with sm_87 device code."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import bridge
from bridge.cuda import device_code
from bridge.runtime import metadata_path, params_path
from bridge.targets import resolve
from tests.conftest import KERAS3, assert_matches, reference
from tests.test_targets import needs_tools

MODELS = KERAS3 / "models"


def run_bundle(folder, inputs, *prefix: str, extra=()) -> list[np.ndarray]:
    """Run ./run in ``folder`` on ``inputs`` in an empty environment; return the outputs."""
    names = []
    for index, array in enumerate(inputs):
        np.save(folder / f"in{index}.npy", array)
        names.append(f"in{index}.npy")
    result = subprocess.run(
        [*prefix, "./run", *names, "--out", "results", *extra],
        cwd=folder,
        env={},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    outputs = sorted((folder / "results").glob("output*.npy"))
    return [np.load(p) for p in outputs]


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
    embedded = bridge.build(MODELS / "seq_cnn.keras", batch_size=2).export(tmp_path / "e.so")
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

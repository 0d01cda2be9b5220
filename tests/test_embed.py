"""The C API every bundle carries (bridge_model.h, libbridge_model.so): examples/embed built with
CMake against an x86 and an aarch64 bundle (run under qemu) and compared with Python; its error
strings; loading from memory; the runner's --profile json; thread defaults.

Tolerances: the x86 example runs the same kernels as Python, so its outputs match Python's to
rtol 1e-5 / atol 1e-6; the aarch64 example is compared with Keras' reference at the suite's
usual rtol 1e-4 / atol 1e-4 (scaled by the output's magnitude), as tests/test_deploy.py does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bridge
from bridge.targets import resolve
from tests.conftest import KERAS3, assert_matches, needs_tools, reference

MODELS = KERAS3 / "models"
EXAMPLE = Path(__file__).parents[1] / "examples" / "embed"
QEMU = ("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu")


def build_example(bundle: Path, build: Path, compiler: str = "gcc") -> Path:
    """Configure and build examples/embed against ``bundle``; returns the program."""
    configure = [
        "cmake", "-S", str(EXAMPLE), "-B", str(build), f"-DBRIDGE_BUNDLE={bundle}",
        f"-DCMAKE_C_COMPILER={compiler}",
    ]  # fmt: skip
    for command in (configure, ["cmake", "--build", str(build)]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    return build / "embed_example"


def run(command: list, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=300, **kwargs
    )


def outputs_in(folder: Path) -> list[np.ndarray]:
    return [np.load(p) for p in sorted(folder.glob("output*.npy"))]


def save_inputs(folder: Path, inputs: list[np.ndarray]) -> list[str]:
    names = []
    for index, array in enumerate(inputs):
        np.save(folder / f"in{index}.npy", array)
        names.append(f"in{index}.npy")
    return names


@pytest.fixture(scope="module")
def x86(tmp_path_factory):
    """An x86 bundle of a two-input, two-output model, its inputs and Python's outputs."""
    needs_tools(None, "cmake", "gcc")
    folder = tmp_path_factory.mktemp("x86") / "bundle"
    inputs, _ = reference(MODELS / "func_multi_io.npz")
    model = bridge.build(MODELS / "func_multi_io.keras", target="x86-64", batch_size=2)
    model.export(folder, bundle=True)
    program = build_example(folder, folder.parent / "build")
    return folder, program, save_inputs(folder, inputs), model(*inputs)


def test_bundle_carries_the_c_api(x86):
    folder, *_ = x86
    for name in ("libbridge_model.so", "include/bridge_model.h", "include/dlpack/dlpack.h"):
        assert (folder / name).is_file(), name
    assert "BRIDGE_MODEL_API_VERSION" in (folder / "include" / "bridge_model.h").read_text()
    lines = (folder / "model.signature").read_text().splitlines()
    assert lines == [
        "input image float32 2x16x16x3",
        "input meta float32 2x5",
        "output logits float32 2x4",
        "output aux float32 2x1",
    ]


def test_x86_example_matches_python(x86, tmp_path):
    folder, program, names, expected = x86
    result = run([program, folder / "model.so", *names, "--out", tmp_path / "a"], folder)
    assert result.returncode == 0, result.stderr
    assert "input image float32 (2, 16, 16, 3)" in result.stdout
    assert "output aux float32 (2, 1)" in result.stdout
    got = outputs_in(tmp_path / "a")
    assert len(got) == 2
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_load_from_memory(x86, tmp_path):
    """The example reads model.so, model.signature into memory and loads from the bytes; no
    file of the model may be needed once loaded (the bundle's copy is moved away first)."""
    folder, program, names, expected = x86
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("include"))
    extra = ["--from-memory", "--out", tmp_path / "m"]
    result = run([program, copy / "model.so", *names, *extra], folder)
    assert result.returncode == 0, result.stderr
    assert "loaded from memory" in result.stdout and "input meta float32 (2, 5)" in result.stdout
    for g, e in zip(outputs_in(tmp_path / "m"), expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_load_from_memory_with_separate_params(tmp_path):
    needs_tools(None, "cmake", "gcc")
    inputs, outputs = reference(MODELS / "seq_cnn.npz")
    model = bridge.build(MODELS / "seq_cnn.keras", batch_size=2, separate_params=True)
    folder = tmp_path / "bundle"
    model.export(folder, bundle=True)
    assert (folder / "model.params").is_file()
    program = build_example(folder, tmp_path / "build")
    names = save_inputs(folder, inputs)
    for extra in ([], ["--from-memory"]):
        out = tmp_path / f"out{len(extra)}"
        result = run([program, "model.so", *names, *extra, "--out", out], folder)
        assert result.returncode == 0, result.stderr
        assert_matches(outputs_in(out), outputs)


def test_library_without_a_signature_reads_its_metadata(x86, tmp_path):
    """A library exported without a bundle has no model.signature: the C API takes its inputs
    and outputs (names, shapes with a symbolic batch, dtypes) from model.meta.json."""
    folder, program, _, _ = x86
    inputs, outputs = reference(MODELS / "seq_cnn.npz")
    library = bridge.build(MODELS / "seq_cnn.keras", batch_size=None).export(tmp_path / "m.so")
    assert not library.with_suffix(".signature").exists()
    np.save(tmp_path / "x.npy", inputs[0])
    result = run([program, library, tmp_path / "x.npy", "--out", tmp_path / "o"], folder)
    assert result.returncode == 0, result.stderr
    assert "input input_layer float32 (?, 16, 16, 3)" in result.stdout, result.stdout
    assert "output out float32 (?, 10)" in result.stdout, result.stdout
    assert_matches(outputs_in(tmp_path / "o"), outputs)
    np.save(tmp_path / "bad.npy", np.zeros((2, 16, 16), np.float32))
    result = run([program, library, tmp_path / "bad.npy"], folder)
    assert result.returncode == 1
    assert "input input_layer expects float32 (?, 16, 16, 3), got float32 (2, 16, 16)" in (
        result.stderr
    )


def test_c_api_errors_are_strings_not_crashes(x86, tmp_path):
    folder, program, names, _ = x86
    result = run([program, tmp_path / "missing.so"], folder)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"error: cannot open model {tmp_path / 'missing.so'}"

    np.save(tmp_path / "wrong.npy", np.zeros((2, 5), np.float32))
    result = run([program, "model.so", tmp_path / "wrong.npy", names[1]], folder)
    assert result.returncode == 1, result.stderr
    assert (
        "error: model.so: input image expects float32 (2, 16, 16, 3), got float32 (2, 5)"
        in result.stderr
    )
    result = run([program, "model.so", names[0]], folder)
    assert result.returncode == 1
    assert "1 input(s) given, the model takes 2: image float32" in result.stderr

    (tmp_path / "junk.so").write_bytes(b"not a library at all")
    result = run([program, tmp_path / "junk.so"], folder)
    assert result.returncode == 1 and "is not an ELF shared library" in result.stderr
    result = run([program, tmp_path / "junk.so", "--from-memory"], folder)
    assert result.returncode == 1
    assert "error: model in memory is not an ELF shared library" in result.stderr


def test_aarch64_example_under_qemu(tmp_path):
    needs_tools(resolve("aarch64"), "qemu-aarch64", "cmake", "aarch64-linux-gnu-gcc")
    inputs, outputs = reference(MODELS / "seq_cnn.npz")
    folder = tmp_path / "bundle"
    bridge.build(MODELS / "seq_cnn.keras", target="aarch64", batch_size=len(inputs[0])).export(
        folder, bundle=True
    )
    program = build_example(folder, tmp_path / "build", "aarch64-linux-gnu-gcc")
    assert int.from_bytes(program.read_bytes()[18:20], "little") == 183  # EM_AARCH64
    names = save_inputs(folder, inputs)
    for extra in ([], ["--from-memory"]):
        out = tmp_path / f"out{len(extra)}"
        result = run([*QEMU, program, "model.so", *names, *extra, "--out", out], folder)
        assert result.returncode == 0, result.stderr
        assert_matches(outputs_in(out), outputs)
    x86 = bridge.build(MODELS / "seq_cnn.keras", target="x86-64", batch_size=len(inputs[0]))
    np.testing.assert_allclose(outputs_in(tmp_path / "out0")[0], x86(*inputs), rtol=1e-4, atol=1e-5)


# --- the runner's --profile ------------------------------------------------------------------


def kernel_symbols(library: Path) -> set[str]:
    """The compiled functions a model library exports (``__tvm_ffi_<name>``)."""
    nm = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    )
    prefix = "__tvm_ffi_"
    names = {line.split()[-1] for line in nm.stdout.splitlines()}
    return {n[len(prefix) :] for n in names if n.startswith(prefix)} - {"_library_bin"}


def check_raw_profile(path: Path, library: Path, runs: int) -> dict:
    """The raw profile format of the shared notes (section 2): every key, calls in VM order with
    their names and times, kernels named like the library's compiled functions."""
    data = json.loads(path.read_text())
    assert set(data) == {"format", "version", "source", "device", "threads", "runs", "calls"}
    assert data["format"] == "bridge-profile-raw" and data["version"] == 1
    assert data["source"] == "runner" and data["device"] == "cpu"
    assert data["runs"] == runs and isinstance(data["threads"], int) and data["threads"] >= 1
    calls = data["calls"]
    assert all(set(c) == {"name", "us"} for c in calls)
    assert all(isinstance(c["us"], float) and c["us"] >= 0 for c in calls)
    kernels = [c for c in calls if not c["name"].startswith("vm.builtin.")]
    assert {c["name"] for c in kernels} == kernel_symbols(library)
    assert all(c["us"] > 0 for c in kernels)
    assert any(c["name"].startswith("vm.builtin.") for c in calls)
    return data


def test_runner_profile_json(x86, tmp_path):
    folder, _, names, _ = x86
    profile = ["./run", *names, "--profile"]
    result = run([*profile, tmp_path / "p.json", "--threads", "1"], folder, env={})
    assert result.returncode == 0, result.stderr
    assert "wrote the profile of 10 run(s) on 1 thread(s)" in result.stdout
    data = check_raw_profile(tmp_path / "p.json", folder / "model.so", runs=10)
    assert data["threads"] == 1
    # The kernels of one call of main, in order: the first is the image branch's convolution.
    kernels = [c["name"] for c in data["calls"] if not c["name"].startswith("vm.")]
    assert kernels[0].startswith("fused_conv2d")
    result = run([*profile, tmp_path / "q.json", "--bench", "3"], folder, env={})
    assert result.returncode == 0, result.stderr
    check_raw_profile(tmp_path / "q.json", folder / "model.so", runs=3)


def test_c_api_profile_then_run(x86, tmp_path):
    """bridge_model_profile through the example, then a normal run on the same model: the
    profiling hook is gone and the results are still right."""
    folder, program, names, expected = x86
    extra = ["--profile", tmp_path / "p.json", "--out", tmp_path / "o"]
    result = run([program, "model.so", *names, *extra], folder)
    assert result.returncode == 0, result.stderr
    check_raw_profile(tmp_path / "p.json", folder / "model.so", runs=10)
    for g, e in zip(outputs_in(tmp_path / "o"), expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


# --- threads ---------------------------------------------------------------------------------


def test_runner_and_example_default_to_the_usable_cores(x86, tmp_path):
    """Under taskset -c 0 the default is one thread; without it, every core this process may
    use; TVM_NUM_THREADS and --threads override."""
    needs_tools(None, "taskset")
    folder, program, names, _ = x86
    cores = len(os.sched_getaffinity(0))
    bench = ["./run", *names, "--bench", "1"]
    result = run(["taskset", "-c", str(min(os.sched_getaffinity(0))), *bench], folder, env={})
    assert "on 1 thread(s)" in result.stdout, result.stdout + result.stderr
    result = run(bench, folder, env={})
    assert f"on {cores} thread(s)" in result.stdout, result.stdout
    result = run(bench, folder, env={"TVM_NUM_THREADS": "1"})
    assert "on 1 thread(s)" in result.stdout, result.stdout
    result = run([*bench, "--threads", "1"], folder, env={})
    assert "on 1 thread(s)" in result.stdout, result.stdout
    first = str(min(os.sched_getaffinity(0)))
    result = run(["taskset", "-c", first, program, "model.so", *names], folder, env={})
    assert ", 1 thread(s)" in result.stdout, result.stdout
    result = run([program, "model.so", *names, "--threads", "1"], folder, env={})
    assert ", 1 thread(s)" in result.stdout, result.stdout  # bridge_model_set_threads
    result = run([program, "model.so", *names, "--threads", "0"], folder, env={})
    assert result.returncode == 1 and "num_threads must be >= 1, got 0" in result.stderr


def test_load_defaults_to_the_usable_cores(x86):
    """bridge.load in a process pinned to one core runs one thread; unpinned, every core, even
    after another model ran on one thread."""
    folder, _, names, _ = x86
    code = (  # a model on one thread first: the default must not inherit its setting
        "import sys, numpy as np, bridge, tvm_ffi\n"
        "x = [np.load(p) for p in sys.argv[2:]]\n"
        "bridge.load(sys.argv[1], num_threads=1)(*x)\n"
        "bridge.load(sys.argv[1])(*x)\n"
        "print(tvm_ffi.get_global_func('runtime.NumThreads')())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    args = [sys.executable, "-c", code, folder / "model.so", *(folder / n for n in names)]
    first = str(min(os.sched_getaffinity(0)))
    result = run(["taskset", "-c", first, *args], folder, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "1"
    result = run(args, folder, env=env)
    assert result.stdout.split()[-1] == str(len(os.sched_getaffinity(0))), result.stderr


# --- the CUDA variant ------------------------------------------------------------------------


def test_cuda_runner_builds_and_defaults_to_the_gpu(x86, tmp_path):
    """CUDA bundles' libbridge_model.so and run (-DBRIDGE_CUDA) build without a GPU; they run a
    model on the GPU by default (loading libtvm_runtime_cuda.so from their folder, absent
    here) and on the CPU with --device cpu."""
    from bridge.deploy import build_runner

    folder, _, names, expected = x86
    runner = build_runner(resolve("cuda"))
    bundle = tmp_path / "bundle"  # the x86 bundle with the CUDA variant's run and library
    shutil.copytree(folder, bundle)
    for built in (runner, runner.with_name("libbridge_model.so")):
        shutil.copy2(built, bundle / built.name)
    result = run(["./run", *names], bundle, env={})
    assert result.returncode == 1 and "libtvm_runtime_cuda.so" in result.stderr, result.stderr
    result = run(["./run", *names, "--device", "cpu", "--out", "o"], bundle, env={})
    assert result.returncode == 0, result.stderr
    for g, e in zip(outputs_in(bundle / "o"), expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


# --- Python on the device ------------------------------------------------------------------------

# Debian 12's aarch64 CPython 3.11 and the shared libraries its standard library needs beyond the
# cross C library (/usr/aarch64-linux-gnu), downloaded from the arm64 package lists (.ci/run
# enables them) and extracted, not installed.
DEBIAN_PYTHON = [
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libexpat1", "zlib1g",
    "libffi8", "libbz2-1.0", "liblzma5", "libuuid1", "libcrypt1",
]  # fmt: skip
RUNTIME_WHEELS = ("apache-tvm", "apache-tvm-ffi", "numpy")


def unavailable(reason: str) -> None:
    if os.environ.get("BRIDGE_REQUIRE_TOOLCHAINS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def aarch64_python() -> tuple[Path, Path]:
    """(root, site): an aarch64 CPython extracted into ``root`` and the aarch64 wheels of this
    environment's TVM runtime and numpy in ``site``, prepared once in bridge's cache."""
    import importlib.metadata

    from bridge.cache import cache_dir

    versions = [importlib.metadata.version(d) for d in RUNTIME_WHEELS]
    folder = cache_dir() / "aarch64-python" / "-".join(versions)
    root, site = folder / "root", folder / "site"
    if not (root / "usr" / "bin" / "python3.11").exists():
        debs = folder / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        got = run(["apt-get", "download", *(f"{p}:arm64" for p in DEBIAN_PYTHON)], debs)
        if got.returncode != 0:
            unavailable(f"no aarch64 CPython from apt (arm64 lists enabled?): {got.stderr[-300:]}")
        staging = folder / "root.partial"
        shutil.rmtree(staging, ignore_errors=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
        staging.rename(root)
    if not (site / "numpy").is_dir():
        wanted = [f"{d}=={v}" for d, v in zip(RUNTIME_WHEELS, versions)]
        staging = folder / "site.partial"
        got = run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", staging,
             "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
             "--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:",
             *wanted],
            folder,
        )  # fmt: skip
        if got.returncode != 0:
            unavailable(f"cannot download the aarch64 runtime wheels: {got.stderr[-300:]}")
        staging.rename(site)
    return root, site


def test_load_under_aarch64_python(tmp_path):
    """bridge.load and a call under an aarch64 CPython with the aarch64 TVM wheel (qemu): the
    runtime only (TVM_USE_RUNTIME_LIB=1; neither tvm.relax nor bridge's compiler side loads),
    threads defaulting to the usable cores, outputs as Keras'."""
    needs_tools(resolve("aarch64"), "qemu-aarch64", "apt-get", "dpkg-deb")
    root, site = aarch64_python()
    inputs, outputs = reference(MODELS / "seq_cnn.npz")
    library = tmp_path / "model" / "model.so"
    bridge.build(MODELS / "seq_cnn.keras", target="aarch64", batch_size=len(inputs[0])).export(
        library
    )
    np.save(tmp_path / "x.npy", inputs[0])
    code = (
        "import sys, numpy as np, bridge, tvm_ffi\n"
        "y = bridge.load(sys.argv[1])(np.load(sys.argv[2]))\n"
        "np.save(sys.argv[3], y)\n"
        "print(tvm_ffi.get_global_func('runtime.NumThreads')(), 'tvm.relax' in sys.modules,\n"
        "      'bridge.api' in sys.modules)\n"
    )
    libs = f"{root}/lib/aarch64-linux-gnu:{root}/usr/lib/aarch64-linux-gnu"
    guest = {
        "LD_LIBRARY_PATH": libs,
        "PYTHONHOME": f"{root}/usr",
        "PYTHONPATH": f"{site}:{Path(bridge.__file__).parents[1]}",
        "TVM_USE_RUNTIME_LIB": "1",
    }
    env_flags = [flag for k, v in guest.items() for flag in ("-E", f"{k}={v}")]
    program = [root / "usr" / "bin" / "python3.11", "-c", code]
    first = str(min(os.sched_getaffinity(0)))
    for pin, threads in ([], len(os.sched_getaffinity(0))), (["taskset", "-c", first], 1):
        command = [*pin, *QEMU, *env_flags, *program, library, tmp_path / "x.npy", tmp_path / "y"]
        result = run(command, tmp_path, env={})
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.split() == [str(threads), "False", "False"], result.stdout
        assert_matches([np.load(tmp_path / "y.npy")], outputs)

"""The runtime seam: bridge.runtime loads and calls models without TVM's compiler; export lives in
bridge.export; a library that cannot run here loads and says where to run it; inputs that are
not numbers are refused with InputError; ``import bridge`` pulls in nothing a loader does not
need."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import bridge
from bridge.errors import ArtifactError, DeviceError, InputError
from bridge.runtime import Model, metadata_path
from tests.conftest import KERAS3, reference

ROOT = Path(__file__).resolve().parent.parent
MODEL = KERAS3 / "models" / "seq_cnn.keras"
# What bridge/runtime.py must never import, and what a process that only loads and runs libraries
# must never load (``import tvm`` itself loads tvm.support, even with a runtime-only TVM).
COMPILER_MODULES = ("tvm.relax", "tvm.support", "tvm.s_tir", "tvm.contrib")
NEVER_LOADED = ("h5py", "tvm.relax", "tvm.s_tir", "tvm.contrib")
BRIDGE_COMPILER = (
    "bridge.api", "bridge.compile", "bridge.convert", "bridge.cuda", "bridge.deploy",
    "bridge.export", "bridge.keras", "bridge.schedules", "bridge.tflite", "bridge.tuning",
)  # fmt: skip


def _imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, **env),
    )


def _needs(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        if os.environ.get("BRIDGE_REQUIRE_TOOLCHAINS") == "1":
            pytest.fail(f"toolchain missing: {missing}")
        pytest.skip(f"toolchain missing: {missing}")


# --- the seam between runtime and export ----------------------------------------------------------


def test_runtime_imports_no_compiler():
    imported = _imported_names(ROOT / "bridge" / "runtime.py")
    bad = sorted(n for n in imported if _under(n, COMPILER_MODULES + BRIDGE_COMPILER))
    assert not bad, f"bridge/runtime.py imports compiler modules: {bad}"


def test_model_takes_one_module_and_compile_takes_no_weights():
    from bridge.compile import compile_module

    assert "executable" not in inspect.signature(Model).parameters  # one module, given once
    assert list(inspect.signature(compile_module).parameters) == ["mod", "target", "database"]


@pytest.fixture(scope="module")
def built():
    return bridge.build(MODEL, batch_size=2)


def test_built_model_exports_and_loaded_model_does_not(built, tmp_path):
    from bridge.export import BuiltModel

    assert isinstance(built, BuiltModel) and isinstance(built, bridge.Model)
    library = built.export(tmp_path / "model.so")
    loaded = bridge.load(library)
    assert type(loaded) is Model and loaded.library == library
    with pytest.raises(ArtifactError, match=r"model\.so: a loaded model does not export"):
        loaded.export(tmp_path / "again.so")
    inputs, _ = reference(MODEL.with_suffix(".npz"))
    np.testing.assert_array_equal(loaded(*inputs), built(*inputs))


# --- libraries that cannot run here --------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_library(tmp_path_factory):
    _needs("nvcc")
    from tvm.runtime import cuda

    library = bridge.build(MODEL, target="cuda-sm80").export(
        tmp_path_factory.mktemp("cuda") / "model.so"
    )
    if cuda(0).exist:  # the build loaded TVM's CUDA runtime
        pytest.skip("a GPU is usable here: the library runs")
    return library


@pytest.fixture(scope="module")
def arm_library(tmp_path_factory):
    _needs("aarch64-linux-gnu-g++")
    return bridge.build(MODEL, target="aarch64").export(tmp_path_factory.mktemp("arm") / "model.so")


def _load_and_call(library: Path) -> subprocess.CompletedProcess:
    """Load ``library`` in a fresh runtime-only process and call it: one line, the error."""
    return _run_python(
        f"""
        import bridge, numpy as np
        model = bridge.load({str(library)!r})
        assert not model.runnable
        try:
            model(np.zeros((1, 16, 16, 3), "float32"))
        except bridge.errors.DeviceError as exc:
            print(exc)
        """,
        TVM_USE_RUNTIME_LIB="1",
    )


def test_cuda_library_without_gpu_loads_and_says_where_to_run(cuda_library):
    assert json.loads(metadata_path(cuda_library).read_text())["device"] == "cuda"
    result = _load_and_call(cuda_library)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{cuda_library}: this model is compiled for CUDA")
    assert "NVIDIA GPU" in result.stdout
    model = bridge.load(cuda_library)  # here, after the build loaded the CUDA runtime
    with pytest.raises(DeviceError, match="no GPU is usable here"):
        model(np.zeros((1, 16, 16, 3), "float32"))


def test_foreign_arch_library_loads_and_says_where_to_run(arm_library):
    result = _load_and_call(arm_library)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{arm_library}: this model is compiled for aarch64")
    assert "run it on an aarch64 machine" in result.stdout


@pytest.mark.parametrize("which", ["cuda", "arm"])
def test_run_command_says_where_to_run(which, request, tmp_path):
    library = request.getfixturevalue(f"{which}_library")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 16, 16, 3), "float32"))
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "run", str(library), "--input", str(x)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {library}: this model is compiled for ")
    assert "Traceback" not in result.stderr and "loader" not in result.stderr


# --- inputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, says",
    [
        (np.array([["a"]]), "strings"),
        (np.full((2, 16, 16, 3), "x"), "strings"),
        (np.zeros((2, 16, 16, 3), dtype=object), "Python objects"),
        (np.zeros((2, 16, 16, 3), dtype=complex), "complex"),
        (np.zeros((2, 16, 16, 3), dtype="S1"), "bytes"),
        ([[1.0, 2.0], [3.0]], "numpy cannot make one"),
        (None, "Python objects"),
    ],
)
def test_non_numeric_input_is_an_input_error(built, value, says):
    name = built.inputs[0].name
    with pytest.raises(InputError, match=f"input {name!r} must be a .*float32.*{says}"):
        built(value)


def test_numeric_inputs_of_other_dtypes_still_cast(built):
    inputs, outputs = reference(MODEL.with_suffix(".npz"))
    got = built(inputs[0].astype(np.float64))
    np.testing.assert_allclose(got, outputs[0], rtol=1e-4, atol=1e-5)
    built(np.zeros((2, 16, 16, 3), dtype=np.int64))
    built(np.zeros((2, 16, 16, 3), dtype=bool))


def test_calls_reuse_staged_inputs_and_stay_independent(built):
    """Inputs are copied into tensors the model keeps: a later call neither changes an earlier
    result nor sees an earlier input, and calls from several threads each get their own."""
    import threading

    rng = np.random.default_rng(3)
    shape = [int(d) for d in built.inputs[0].shape]
    xs = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(4)]
    first = built(xs[0])
    staged = built._staged[0]
    want = [built(x).copy() for x in xs]
    assert built._staged[0] is staged  # the same tensor, refilled
    np.testing.assert_array_equal(want[0], first)
    assert not np.array_equal(want[0], want[1])
    got: dict[int, list[np.ndarray]] = {}

    def calls(index: int) -> None:
        got[index] = [built(xs[index]) for _ in range(200)]

    threads = [threading.Thread(target=calls, args=(i,)) for i in range(len(xs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, results in got.items():
        for result in results:
            np.testing.assert_array_equal(result, want[index])


def test_num_threads_set_later_is_checked(built):
    with pytest.raises(DeviceError, match="num_threads must be an integer"):
        built.num_threads = 0
    assert built.num_threads is None


# --- the lazy top level --------------------------------------------------------------------------


def test_loading_and_running_imports_no_compiler_and_no_h5py(built, tmp_path):
    library = built.export(tmp_path / "model.so")
    inputs, _ = reference(MODEL.with_suffix(".npz"))
    np.save(tmp_path / "x.npy", inputs[0])
    result = _run_python(
        f"""
        import sys, numpy as np
        import bridge
        model = bridge.load({str(library)!r})
        print(model(np.load({str(tmp_path / "x.npy")!r})).shape)
        print(" ".join(sorted(sys.modules)))
        """,
        TVM_USE_RUNTIME_LIB="1",
    )
    assert result.returncode == 0, result.stderr
    shape, modules = result.stdout.splitlines()
    assert shape == "(2, 10)"
    loaded = [m for m in modules.split() if _under(m, NEVER_LOADED + BRIDGE_COMPILER)]
    assert not loaded, f"loading and running a library imported {loaded}"


@pytest.mark.parametrize("bind", [None, "1"])
def test_thread_pool_leaves_threads_to_the_scheduler(built, tmp_path, bind):
    """``import bridge`` defaults TVM_BIND_THREADS to 0: after a call every thread of the
    process may still run on every core (TVM's pinning made LiteRT, called in the same
    process, 2x slower); TVM_BIND_THREADS=1 brings the pinning back."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: nothing to pin")
    library = built.export(tmp_path / "model.so")
    inputs, _ = reference(MODEL.with_suffix(".npz"))
    np.save(tmp_path / "x.npy", inputs[0])
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    if bind is not None:
        env["TVM_BIND_THREADS"] = bind
    code = f"""
        import os, numpy as np
        import bridge
        model = bridge.load({str(library)!r})
        for _ in range(3):
            model(np.load({str(tmp_path / "x.npy")!r}))
        for task in sorted(os.listdir("/proc/self/task")):
            print(len(os.sched_getaffinity(int(task))))
        """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cores = {int(n) for n in result.stdout.split()}
    full = len(os.sched_getaffinity(0))
    assert (cores == {full}) == (bind is None), (cores, full)


def test_public_names_load_on_first_use():
    result = _run_python(
        """
        import sys
        import bridge
        assert "bridge.api" not in sys.modules
        from bridge import build, inspect, layers_markdown, presets, support_table
        assert build is bridge.build and callable(inspect) and "Dense" in layers_markdown()
        assert "x86-64" in presets() and support_table()
        assert set(bridge.__all__) <= set(dir(bridge))
        try:
            bridge.no_such_name
        except AttributeError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "module 'bridge' has no attribute 'no_such_name'"


# --- the CLI is a client of the API -----------------------------------------------------------

# Text about command lines: the CLI; the bundle's README.txt (the runner's own --out, --bench);
# targets.PORTABLE, the build summary's portable-preset hint, which only the CLI prints.
CLI_TEXT = {"cli.py", "deploy.py", "targets.py"}
CLI_PACKAGES = {"commands"}  # the CLI's subcommands (bridge compare, profile, report)
RUNNER_FLAGS = {"--out", "--bench", "--threads", "--profile"}  # bundle ./run's own, not bridge's


def _messages(path: Path) -> list[str]:
    """The string constants of a module, less its docstrings."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def test_library_messages_name_no_cli_flags():
    parsers = [ROOT / "bridge" / "cli.py", *sorted((ROOT / "bridge" / "commands").glob("*.py"))]
    flags = {f for path in parsers for f in re.findall(r'"(--[a-z][a-z-]+)"', path.read_text())}
    assert {"--custom-layers", "--target", "--budget"} <= flags
    found = []
    for path in sorted((ROOT / "bridge").rglob("*.py")):
        relative = path.relative_to(ROOT / "bridge")
        if str(relative) in CLI_TEXT or relative.parts[0] in CLI_PACKAGES:
            continue
        for text in _messages(path):
            if text in RUNNER_FLAGS:  # an element of the native runner's argument list
                continue
            named = [f for f in flags if re.search(re.escape(f) + r"(?![\w-])", text)]
            found += [f"{path.name}: {f}" for f in named]
    assert not found, f"library messages name CLI flags (say the API's parameter): {found}"

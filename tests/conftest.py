"""Shared test helpers: fixture paths, reference loading, numeric comparison."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Builds under test use bridge's default schedules only, never kernels a developer tuned into
# ~/.cache/bridge/tuning; tuning tests name their own database folder.
os.environ.setdefault("BRIDGE_TUNING_DB", "off")

FIXTURES = Path(__file__).parent / "fixtures"
KERAS3 = FIXTURES / "keras3"
KERAS2 = FIXTURES / "keras2"
APPS = FIXTURES / "apps"
EXAMPLES = Path(__file__).parent.parent / "examples"


def load_script(path: Path, name: str, register: bool = False):
    """Import a script (not a package module) from its file; ``register`` puts it in
    ``sys.modules`` under ``name`` (needed where it pickles or dataclasses its own types)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def script_fixture(path: Path, name: str):
    """A module-scoped fixture giving the script at ``path`` imported as ``name`` (in
    ``sys.modules`` while the module's tests run)."""

    @pytest.fixture(scope="module")
    def fixture():
        yield load_script(path, name, register=True)
        sys.modules.pop(name, None)

    return fixture


def reference(npz: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(inputs, outputs) of a fixture's .npz, in model order."""
    data = np.load(npz)
    count = lambda prefix: sum(1 for k in data.files if k.startswith(prefix))  # noqa: E731
    return (
        [data[f"input_{i}"] for i in range(count("input_"))],
        [data[f"output_{i}"] for i in range(count("output_"))],
    )


def as_list(result) -> list[np.ndarray]:
    return result if isinstance(result, list) else [result]


def assert_matches(got, expected, rtol: float = 1e-4, atol: float = 1e-4) -> None:
    """Compare outputs with Keras references; atol scales with the reference magnitude."""
    got, expected = as_list(got), as_list(expected)
    assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
    for g, e in zip(got, expected):
        assert g.shape == e.shape, f"shape {g.shape} != {e.shape}"
        scale = max(1.0, float(np.abs(e).max()))
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol * scale)


def assert_bit_exact(got, expected, name: str = "") -> None:
    """Integer outputs equal to the reference's, value for value (0 quantization steps)."""
    got, expected = as_list(got), as_list(expected)
    assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape and g.dtype == e.dtype, f"{name} output {i}: {g.dtype}{g.shape}"
        steps = np.abs(g.astype(np.int64) - e.astype(np.int64))
        assert steps.max() == 0, f"{name} output {i}: {int((steps > 0).sum())} values off"


def needs_tools(spec=None, *programs: str) -> None:
    """Skip when a toolchain (the spec's cross compiler, nvcc for CUDA, or ``programs``) is
    missing here; CI sets BRIDGE_REQUIRE_TOOLCHAINS=1 to fail instead."""
    wanted = list(programs)
    if spec is not None and spec.cross_compiler:
        wanted.append(spec.cross_compiler)
    if spec is not None and spec.device == "cuda":
        wanted.append("nvcc")
    missing = [program for program in wanted if shutil.which(program) is None]
    if missing:
        if os.environ.get("BRIDGE_REQUIRE_TOOLCHAINS") == "1":
            pytest.fail(f"toolchain missing: {missing}")
        pytest.skip(f"toolchain missing: {missing}")


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


def conv_clip_pad_module():
    """conv2d -> clip -> zero-pad, the MobileNetV2 pattern that TVM misclassifies (the pad as
    element-wise) and then fuses into the convolution."""
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 16, 16, 8], "float32"))
    w = relax.const(np.ones((3, 3, 8, 16), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(relax.op.nn.conv2d(x, w, data_layout="NHWC", kernel_layout="HWIO"))
            y = builder.emit(relax.op.clip(y, 0.0, 6.0))
            y = builder.emit(relax.op.nn.pad(y, [0, 0, 0, 1, 0, 1, 0, 0]))
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    return builder.get()


def parallel_bodies(asm: str) -> str:
    """The parallel loop bodies (``.L__tvm_parallel_lambda*`` functions) of an assembly: a
    call there (``TVMBackendAllocWorkspace``) runs once per loop iteration."""
    bodies, inside = [], False
    for line in asm.splitlines():
        label = line and not line[0].isspace() and line.endswith(":")
        if label and not line.startswith((".Lt", ".LBB", ".LCPI", ".Lfunc")):
            inside = line.startswith(".L__tvm_parallel_lambda")
        if inside:
            bodies.append(line)
    return "\n".join(bodies)


def host_has(feature: str) -> bool:
    """The build machine's CPU lists ``feature`` (/proc/cpuinfo's spelling; x86 Linux)."""
    from bridge.targets import cpuinfo_flags

    return feature in (cpuinfo_flags() or ())


# /proc/cpuinfo flags a CPU needs to run code built for an -mcpu: LLVM's znver4 code may use
# AMD's SSE4a (``extrq``), which Intel CPUs lack (an illegal instruction there)
RUNS_ON = {
    "znver4": ("avx512_vnni", "sse4a"),
    "x86-64-v4": ("avx512bw",),
    "sapphirerapids": ("amx_int8", "amx_tile", "avx512_vnni", "avx512_fp16"),
}


def runs_here(mcpu: str) -> bool:
    """This machine can run code built for ``mcpu`` (x86-64-v3 and the like: AVX2)."""
    return all(host_has(flag) for flag in RUNS_ON.get(mcpu, ("avx2",)))

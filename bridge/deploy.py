"""Bundles: a folder that runs a model on its target with no Python.

A bundle holds the model library (and its sidecar, and ``model.params`` when weights are kept
out of the library), the TVM runtime libraries for the target's CPU architecture, and ``run``,
bridge's small native runner (``bridge/runner/run.cc``) built for that architecture:

    ./run in0.npy [in1.npy ...] --out DIR [--bench N] [--threads N]

Runtime libraries for this machine's architecture come from the installed TVM packages; for
another architecture from the matching PyPI wheels, downloaded once into bridge's cache.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from bridge.cache import cache_dir
from bridge.errors import ArtifactError
from bridge.targets import TargetSpec, host_arch

RUNNER_SOURCE = Path(__file__).parent / "runner" / "run.cc"
WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}
# (distribution, path inside its wheel) of each runtime library.
RUNTIME = {
    "tvm_ffi": ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so"),
    "tvm": ("apache-tvm", "tvm/lib/libtvm_runtime.so"),
    "tvm_cuda": ("apache-tvm", "tvm/lib/libtvm_runtime_cuda.so"),
}


def _package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it (importing tvm loads the
    compiler)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(f"the Python package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _wanted(device: str) -> list[str]:
    return ["tvm_ffi", "tvm"] + (["tvm_cuda"] if device == "cuda" else [])


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ArtifactError(
            f"{what} failed ({' '.join(command[:3])} ...):\n{result.stderr[-2000:]}"
        )


def _from_wheels(arch: str, keys: list[str]) -> list[Path]:
    """Runtime libraries for another architecture, extracted from PyPI wheels (cached)."""
    versions = {dist: importlib.metadata.version(dist) for dist, _ in RUNTIME.values()}
    folder = cache_dir() / "runtime" / f"{arch}-{versions['apache-tvm']}"
    wheels = cache_dir() / "wheels"
    out = []
    for key in keys:
        dist, member = RUNTIME[key]
        target = folder / Path(member).name
        if not target.exists():
            pattern = f"{dist.replace('-', '_')}-{versions[dist]}-*{arch}*.whl"
            if not list(wheels.glob(pattern)):
                _run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "download",
                        "--no-deps",
                        "--only-binary=:all:",
                        "--platform",
                        WHEEL_PLATFORMS[arch],
                        "--python-version",
                        "3.12",
                        "-d",
                        str(wheels),
                        f"{dist}=={versions[dist]}",
                    ],
                    f"downloading the {arch} wheel of {dist}",
                )
            with zipfile.ZipFile(next(iter(wheels.glob(pattern)))) as wheel:
                folder.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".part")
                partial.write_bytes(wheel.read(member))
                partial.replace(target)
        out.append(target)
    return out


def runtime_libraries(arch: str, device: str = "cpu") -> list[Path]:
    """libtvm_ffi.so, libtvm_runtime.so (+ libtvm_runtime_cuda.so) for ``arch``."""
    keys = _wanted(device)
    if arch != host_arch():
        return _from_wheels(arch, keys)
    # The installed packages hold the same files at the same paths as the wheels.
    members = [RUNTIME[k][1] for k in keys]
    return [_package_dir(m.split("/")[0]).parent / m for m in members]


def build_runner(spec: TargetSpec) -> Path:
    """Compile ``run`` for the spec's architecture and device (cached by source and flags)."""
    compiler = spec.cross_compiler or "g++"
    if shutil.which(compiler) is None:
        hint = " (apt-get install g++-aarch64-linux-gnu)" if spec.arch == "aarch64" else ""
        raise ArtifactError(f"the C++ compiler {compiler!r} for {spec.arch} is not installed{hint}")
    libraries = runtime_libraries(spec.arch, "cpu")
    flags = ["-std=c++17", "-O2", "-isystem", str(_package_dir("tvm_ffi") / "include")]
    if spec.device == "cuda":
        flags.append("-DBRIDGE_CUDA")
    key = hashlib.sha256(RUNNER_SOURCE.read_bytes() + " ".join([compiler, *flags]).encode())
    runner = cache_dir() / "runner" / f"{spec.arch}-{spec.device}-{key.hexdigest()[:16]}" / "run"
    if not runner.exists():
        runner.parent.mkdir(parents=True, exist_ok=True)
        partial = runner.with_suffix(".part")
        link_dirs = sorted({f"-L{p.parent}" for p in libraries})
        _run(
            [
                compiler,
                *flags,
                str(RUNNER_SOURCE),
                "-o",
                str(partial),
                *link_dirs,
                "-Wl,--no-as-needed",
                "-ltvm_runtime",
                "-ltvm_ffi",
                "-ldl",
                "-Wl,-rpath,$ORIGIN",
            ],
            f"building the {spec.arch} runner",
        )
        partial.replace(runner)
    return runner


BUNDLE_README = """\
{name}: bridge bundle for {target} ({arch}, {device})

Run (no Python needed; the libraries here are all it loads):
    ./run input0.npy [input1.npy ...] --out results/    # writes results/output0.npy, ...
    ./run input0.npy --bench 100                        # per-call latency
Inputs, in order: {inputs}
Outputs, in order: {outputs}
"""


def write_bundle(
    folder: Path, library: Path, spec: TargetSpec, inputs: list, outputs: list
) -> Path:
    """Complete an exported library's folder into a bundle for ``spec``."""
    for path in runtime_libraries(spec.arch, spec.device):
        shutil.copy2(path, folder / path.name)
    shutil.copy2(build_runner(spec), folder / "run")
    (folder / "run").chmod(0o755)
    describe = lambda infos: ", ".join(f"{i.name} {list(i.shape)} {i.dtype}" for i in infos)  # noqa: E731
    (folder / "README.txt").write_text(
        BUNDLE_README.format(
            name=library.stem,
            target=spec.name,
            arch=spec.arch,
            device=spec.device,
            inputs=describe(inputs),
            outputs=describe(outputs),
        )
    )
    return folder

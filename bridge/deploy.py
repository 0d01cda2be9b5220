"""Bundles: a folder that runs a model on its target with no Python.

A bundle holds the model library (and its sidecar, and ``model.params`` when weights are kept
out of the library), the TVM runtime libraries for the target's CPU architecture, and ``run``,
bridge's small native runner (``bridge/runner/run.cc``) built for that architecture:

    ./run in0.npy [in1.npy ...] [--out DIR] [--bench N] [--threads N] [--profile out.json]

and the C API that ``run`` is a client of, for applications that embed the model:
``libbridge_model.so`` and ``include/bridge_model.h`` (with ``include/dlpack/dlpack.h``).

Runtime libraries for this machine's architecture come from the installed TVM packages; for
another architecture from the matching PyPI wheels, downloaded once into bridge's cache.
``check_toolchain`` finds (and fetches) all of that before anything is compiled, and a bundle
is written into a folder beside its destination that takes the destination's name only once
complete: a failure never leaves a partial bundle.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bridge.cache import cache_dir
from bridge.errors import ArtifactError
from bridge.targets import TargetSpec, host_arch

RUNNER_DIR = Path(__file__).parent / "runner"
# The C API (bridge_model.h, libbridge_model.so) and run, its command-line client.
RUNNER_SOURCES = [RUNNER_DIR / name for name in ("bridge_model.h", "bridge_model.cc", "run.cc")]
MODEL_LIBRARY = "libbridge_model.so"
WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}
# (distribution, path inside its wheel) of each runtime library.
RUNTIME = {
    "tvm_ffi": ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so"),
    "tvm": ("apache-tvm", "tvm/lib/libtvm_runtime.so"),
    "tvm_cuda": ("apache-tvm", "tvm/lib/libtvm_runtime_cuda.so"),
}
# The Debian/Ubuntu package of each cross compiler.
COMPILER_PACKAGES = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "g++": "g++"}


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


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _versions() -> dict[str, str]:
    return {dist: importlib.metadata.version(dist) for dist, _ in RUNTIME.values()}


def _runtime_folder(arch: str) -> Path:
    return cache_dir() / "runtime" / f"{arch}-{_versions()['apache-tvm']}"


def missing_runtime(arch: str, device: str = "cpu") -> list[str]:
    """The distributions whose ``arch`` wheels must still be downloaded (none when cached or
    when ``arch`` is this machine's)."""
    if arch == host_arch():
        return []
    folder = _runtime_folder(arch)
    needed = {RUNTIME[key][0] for key in _wanted(device)}
    have = {RUNTIME[key][0] for key in _wanted(device) if (folder / _file(key)).exists()}
    return sorted(needed - have)


def _file(key: str) -> str:
    return Path(RUNTIME[key][1]).name


def _download(dist: str, version: str, arch: str, wheels: Path) -> None:
    """One runtime wheel from PyPI into the cache, or one clear line saying why not."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--platform", WHEEL_PLATFORMS[arch], "--python-version", "3.12",
        "-d", str(wheels), f"{dist}=={version}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ArtifactError(
            f"cannot download the {arch} TVM runtime ({dist}=={version} for "
            f"{WHEEL_PLATFORMS[arch]}) into {wheels}: pip says: {_last_line(result.stderr)}; "
            f"this needs network access once (or put the wheel in that folder)"
        )


def _from_wheels(arch: str, keys: list[str]) -> list[Path]:
    """Runtime libraries for another architecture, extracted from PyPI wheels (cached)."""
    versions = _versions()
    folder = _runtime_folder(arch)
    wheels = cache_dir() / "wheels"
    out = []
    for key in keys:
        dist, member = RUNTIME[key]
        target = folder / Path(member).name
        if not target.exists():
            pattern = f"{dist.replace('-', '_')}-{versions[dist]}-*{arch}*.whl"
            if not list(wheels.glob(pattern)):
                _download(dist, versions[dist], arch, wheels)
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


def _compiler(spec: TargetSpec) -> str:
    """The C++ compiler that links the spec's libraries and ``run``, or ArtifactError naming
    the package that provides it."""
    compiler = spec.cross_compiler or "g++"
    if shutil.which(compiler) is None:
        package = COMPILER_PACKAGES.get(compiler)
        hint = f" (Debian/Ubuntu: apt-get install {package})" if package else ""
        raise ArtifactError(
            f"the C++ compiler {compiler!r} for {spec.arch} is not installed or not on PATH{hint}"
        )
    return compiler


def check_toolchain(
    spec: TargetSpec, *, bundle: bool = False, notify: Callable[[str], None] | None = None
) -> None:
    """Before compiling: the cross compiler a foreign-CPU library needs, and for a bundle also
    the host compiler, the runner and the target's TVM runtime libraries (downloaded once, with
    a ``notify`` message first). Raises ArtifactError with what to install."""
    if spec.is_cross or bundle:
        _compiler(spec)
    if not bundle:
        return
    missing = missing_runtime(spec.arch, spec.device)
    if missing and notify is not None:
        notify(
            f"downloading the {spec.arch} TVM runtime ({', '.join(missing)} wheels) once into "
            f"{cache_dir() / 'wheels'}"
        )
    runtime_libraries(spec.arch, spec.device)
    build_runner(spec)


@contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A folder beside ``folder`` to write into; when the block succeeds its files move into
    ``folder`` (a rename when ``folder`` is new), when it fails it is removed."""
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder}: exists and is not a folder")
    parent = folder.absolute().parent
    made = next((p for p in [*reversed(parent.parents), parent] if not p.exists()), None)
    parent.mkdir(parents=True, exist_ok=True)
    stage = parent / f".{folder.name}.{os.getpid()}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        if not folder.exists():
            stage.rename(folder)
            return
        for item in stage.iterdir():
            item.replace(folder / item.name)
    except BaseException:
        if made is not None:  # folders above the bundle that this call created
            shutil.rmtree(made, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def build_runner(spec: TargetSpec) -> Path:
    """Compile ``libbridge_model.so`` (the C API, ``bridge_model.h``) and ``run``, its
    command-line client, for the spec's architecture and device, into one cached folder (keyed
    by the sources and flags); returns the path of ``run``."""
    compiler = _compiler(spec)
    libraries = runtime_libraries(spec.arch, "cpu")
    flags = ["-std=c++17", "-O2", "-isystem", str(_package_dir("tvm_ffi") / "include")]
    if spec.device == "cuda":
        flags.append("-DBRIDGE_CUDA")
    sources = b"".join(path.read_bytes() for path in RUNNER_SOURCES)
    key = hashlib.sha256(sources + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    folder = cache_dir() / "runner" / f"{spec.arch}-{spec.device}-{key}"
    runner = folder / "run"
    if runner.exists():
        return runner
    folder.mkdir(parents=True, exist_ok=True)
    link_dirs = sorted({str(p.parent) for p in libraries})
    tvm = [*(f"-L{d}" for d in link_dirs), "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi"]
    api = folder / MODEL_LIBRARY
    partial = api.with_suffix(".part")
    _run(
        [compiler, *flags, "-fPIC", "-shared", str(RUNNER_DIR / "bridge_model.cc"), "-o",
         str(partial), *tvm, "-ldl", f"-Wl,-soname,{MODEL_LIBRARY}", "-Wl,-rpath,$ORIGIN"],
        f"building the {spec.arch} {MODEL_LIBRARY}",
    )  # fmt: skip
    partial.replace(api)
    partial = runner.with_suffix(".part")
    _run(
        [compiler, *flags, f"-I{RUNNER_DIR}", str(RUNNER_DIR / "run.cc"), "-o", str(partial),
         f"-L{folder}", "-lbridge_model", f"-Wl,-rpath-link,{':'.join(link_dirs)}",
         "-Wl,-rpath,$ORIGIN"],
        f"building the {spec.arch} runner",
    )  # fmt: skip
    partial.replace(runner)
    return runner


def model_library(spec: TargetSpec) -> Path:
    """``libbridge_model.so`` for the spec's architecture and device (built with ``run``)."""
    return build_runner(spec).with_name(MODEL_LIBRARY)


def copy_embedding_files(folder: Path, spec: TargetSpec) -> None:
    """The C API into a bundle: ``libbridge_model.so`` beside the runtime libraries,
    ``include/bridge_model.h`` and the ``include/dlpack/dlpack.h`` it includes."""
    shutil.copy2(model_library(spec), folder / MODEL_LIBRARY)
    include = folder / "include"
    (include / "dlpack").mkdir(parents=True, exist_ok=True)
    shutil.copy2(RUNNER_DIR / "bridge_model.h", include / "bridge_model.h")
    dlpack = _package_dir("tvm_ffi") / "include" / "dlpack" / "dlpack.h"
    shutil.copy2(dlpack, include / "dlpack" / "dlpack.h")


BUNDLE_README = """\
{name}: bridge bundle for {target} ({arch}, {device})

Run (no Python needed; the libraries here are all it loads):
    ./run input0.npy [input1.npy ...] --out results/    # writes results/output0.npy, ...
    ./run input0.npy --bench 100                        # per-call latency (writes nothing)
    ./run input0.npy --profile profile.json             # per-kernel times (10 runs, or --bench N)
Outputs are written only with --out. Kernels use all the cores this process may use
(taskset/cgroup limits count); --threads N sets the number. Render a profile on the
workstation with `bridge profile --from profile.json MODEL`.
Embed the model in an application (C, C++, Rust, Go ...): include/bridge_model.h, link
libbridge_model.so (with an rpath to this folder); bridge's examples/embed/ shows how.
Inputs, in order: {inputs}
Outputs, in order: {outputs}
"""


def export_bundle(model, folder: Path, spec: TargetSpec) -> Path:
    """``model.export(folder, bundle=True)``: checks the toolchain, then writes the library,
    runtime and runner into a folder beside ``folder`` that becomes ``folder`` when complete.
    Returns the library's path."""
    check_toolchain(spec, bundle=True)
    with staged_folder(folder) as stage:
        library = model.export(stage / "model.so")
        write_bundle(stage, library, spec, model.inputs, model.outputs)
    return folder / library.name


def write_bundle(
    folder: Path, library: Path, spec: TargetSpec, inputs: list, outputs: list
) -> Path:
    """Complete an exported library's folder into a bundle for ``spec``."""
    for path in runtime_libraries(spec.arch, spec.device):
        shutil.copy2(path, folder / path.name)
    shutil.copy2(build_runner(spec), folder / "run")
    (folder / "run").chmod(0o755)
    copy_embedding_files(folder, spec)
    describe = lambda infos: ", ".join(f"{i.name} {list(i.shape)} {i.dtype}" for i in infos)  # noqa: E731
    (folder / f"{library.stem}.signature").write_text(signature(inputs, outputs))
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


def signature(inputs: list, outputs: list = ()) -> str:
    """``model.signature``: one ``input NAME DTYPE DIMS`` line per input, then one ``output
    NAME DTYPE DIMS`` line per output (DIMS like 1x28x28x1, ``?`` for a dynamic size,
    ``scalar`` for none), which ``run`` checks its arguments against and ``bridge_model.h``
    reports."""
    lines = []
    for kind, infos in (("input", inputs), ("output", outputs)):
        for info in infos:
            dims = "x".join("?" if d is None else str(d) for d in info.shape) or "scalar"
            lines.append(f"{kind} {''.join(info.name.split())} {info.dtype} {dims}\n")
    return "".join(lines)

"""Calling compiled models, exporting them, and loading exported ones with the TVM runtime only.

Nothing here imports TVM's compiler (``tvm.relax``); with ``TVM_USE_RUNTIME_LIB=1`` it runs on
``libtvm_runtime`` alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bridge.cores import thread_pool_size
from bridge.errors import ArtifactError, DeviceError, InputError
from bridge.signature import TensorInfo
from bridge.targets import host_arch

METADATA_FORMAT = 1


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence TVM's native log lines (e.g. "Scope Saving") written straight to fd 2 while
    exporting or loading; Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def metadata_path(library: str | Path) -> Path:
    """The metadata sidecar of a library: ``model.so`` -> ``model.meta.json``."""
    library = Path(library)
    return library.with_name(library.stem + ".meta.json")


def file_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class Model:
    """A compiled model: call it with numpy arrays, get numpy arrays back (Keras semantics)."""

    def __init__(
        self,
        module: Any,
        inputs: list[TensorInfo],
        outputs: list[TensorInfo],
        metadata: dict[str, Any],
        executable: Any = None,
        params: list[np.ndarray] | None = None,
        spec: Any = None,
        num_threads: int | None = None,
    ):
        if num_threads is not None:
            use_threads(num_threads)  # checks the value now; applied again before each call
        self.num_threads = num_threads
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.metadata = metadata
        self._executable = executable
        self._spec = spec
        self._params = list(params or [])
        self._vm, self._device, self._param_tensors = None, None, []
        self._unavailable = self._runnable_here()
        if self._unavailable is None:
            self._start(module)

    def _runnable_here(self) -> str | None:
        """Why this model cannot run in this process, or None if it can."""
        arch, device = self.metadata.get("arch", host_arch()), self.metadata.get("device", "cpu")
        if arch != host_arch():
            return (
                f"this model is compiled for {arch} and this machine is {host_arch()}: "
                f"export it (bundle=True) and run it on the target"
            )
        if device == "cuda":
            from tvm.runtime import cuda

            if not cuda(0).exist:
                return (
                    "this model is compiled for CUDA and no GPU is usable here: export it and "
                    "run it on a machine with an NVIDIA GPU"
                )
        return None

    def _start(self, module: Any) -> None:
        from tvm.runtime import cpu, cuda, tensor
        from tvm.runtime.vm import VirtualMachine

        self._device = cuda(0) if self.metadata.get("device") == "cuda" else cpu()
        self._vm = VirtualMachine(module, self._device)
        self._param_tensors = [tensor(p, self._device) for p in self._params]

    @property
    def runnable(self) -> bool:
        """Whether this process can call the model (same CPU architecture, device present)."""
        return self._vm is not None

    # --- calling ------------------------------------------------------------------------------
    def _arrange(self, args: tuple, kwargs: dict) -> list[np.ndarray]:
        if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
            kwargs, args = dict(args[0]), ()
        if len(args) == 1 and isinstance(args[0], (list, tuple)) and len(self.inputs) > 1:
            args = tuple(args[0])
        if kwargs:
            if args:
                raise InputError("pass inputs either positionally or by name, not both")
            unknown = sorted(set(kwargs) - {i.name for i in self.inputs})
            if unknown:
                raise InputError(
                    f"unknown input name(s) {unknown}; the model takes "
                    f"{[i.name for i in self.inputs]}"
                )
            missing = [i.name for i in self.inputs if i.name not in kwargs]
            if missing:
                raise InputError(f"missing input(s) {missing}")
            args = tuple(kwargs[i.name] for i in self.inputs)
        if len(args) != len(self.inputs):
            raise InputError(
                f"the model takes {len(self.inputs)} input(s) "
                f"{[i.name for i in self.inputs]}, got {len(args)}"
            )
        return [self._check(info, value) for info, value in zip(self.inputs, args)]

    @staticmethod
    def _check(info: TensorInfo, value: Any) -> np.ndarray:
        array = np.ascontiguousarray(np.asarray(value, dtype=info.dtype))
        expected = info.shape
        if len(array.shape) != len(expected) or any(
            e is not None and e != g for e, g in zip(expected, array.shape)
        ):
            hint = ""
            if array.shape[1:] == tuple(expected[1:]):
                hint = (
                    f" (compiled for batch {expected[0]}; build with batch_size={array.shape[0]})"
                )
            raise InputError(
                f"input {info.name!r} must have shape {list(expected)}, "
                f"got {list(array.shape)}{hint}"
            )
        return array

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray | list[np.ndarray]:
        """Run the model. Several outputs come back as a list in ``outputs`` order."""
        from tvm.runtime import tensor

        if self._vm is None:
            raise DeviceError(self._unavailable)
        arrays = self._arrange(args, kwargs)
        if self.num_threads is not None:
            use_threads(self.num_threads)
        values = [tensor(a, self._device) for a in arrays] + self._param_tensors
        result = self._vm["main"](*values)
        if len(self.outputs) == 1:
            return result.numpy()
        return [r.numpy() for r in result]

    # --- export -------------------------------------------------------------------------------
    def export(self, path: str | Path, *, bundle: bool = False) -> Path:
        """Write the library ``path`` (e.g. ``out/model.so``) and its ``.meta.json`` sidecar
        (plus ``.params`` when weights are kept out of the library); returns the library path.

        With ``bundle=True``, ``path`` is a folder that becomes a bundle: ``model.so``, the TVM
        runtime libraries for the target's CPU and the native ``run`` program (see
        ``bridge.deploy``).
        """
        if self._executable is None:
            raise ArtifactError("this model was loaded from an artifact; copy its files instead")
        path = Path(path)
        if bundle:  # staged beside ``path``: a failure leaves no partial bundle
            from bridge.deploy import export_bundle

            return export_bundle(self, path, self._spec)
        library = path
        library.parent.mkdir(parents=True, exist_ok=True)
        self._write_library(library)
        if self._params:
            _save_params(self._params, params_path(library))
        meta = dict(self.metadata) | {
            "format": METADATA_FORMAT,
            "library": library.name,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
        }
        metadata_path(library).write_text(json.dumps(meta, indent=2) + "\n")
        return library

    def _write_library(self, library: Path) -> None:
        """Export (cross-linking where needed) and, for CUDA, prove it holds device code."""
        options = {}
        if self._spec is not None and self._spec.is_cross:
            from tvm.support import cc

            options["fcompile"] = cc.cross_compiler(self._spec.cross_compiler)
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / library.name
            try:
                with quiet_native_stderr():
                    self._executable.export_library(str(staged), **options)
            except Exception as exc:
                raise ArtifactError(f"{library}: exporting failed ({exc})") from exc
            if self.metadata.get("device") == "cuda":
                from bridge.cuda import check_device_code

                check_device_code(staged, self.metadata["cuda_arch"])
            shutil.move(str(staged), library)

    def __repr__(self) -> str:
        ins = ", ".join(f"{i.name}{list(i.shape)}" for i in self.inputs)
        outs = ", ".join(f"{o.name}{list(o.shape)}" for o in self.outputs)
        return f"<bridge.Model ({ins}) -> ({outs}) target={self.metadata.get('target')}>"


def params_path(library: str | Path) -> Path:
    """Weights kept out of a library: ``model.so`` -> ``model.params``."""
    return Path(library).with_suffix(".params")


def _save_params(params: list[np.ndarray], path: Path) -> None:
    """Keys ``p00000``, ``p00001``, ... so that key order is argument order (the C++ runner
    passes them sorted)."""
    from tvm.runtime import save_param_dict_to_file, tensor

    save_param_dict_to_file({f"p{i:05d}": tensor(a) for i, a in enumerate(params)}, str(path))


def _load_params(path: Path) -> list[np.ndarray]:
    from tvm.runtime import load_param_dict_from_file

    table = load_param_dict_from_file(str(path))
    return [table[key].numpy() for key in sorted(table)]


def use_threads(count: int) -> None:
    """Run CPU kernels on ``count`` threads from now on (process-wide: TVM has one pool,
    created with ``TVM_NUM_THREADS`` threads, all cores by default; it can use fewer, not more)."""
    import tvm_ffi

    pool = thread_pool_size()
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= pool:
        raise DeviceError(
            f"num_threads must be an integer from 1 to {pool} (TVM's thread pool size; set "
            f"TVM_NUM_THREADS before importing bridge for more), got {count!r}"
        )
    if tvm_ffi.get_global_func("runtime.NumThreads")() != count:
        tvm_ffi.get_global_func("runtime.config_threadpool")(1, count)


def load(path: str | Path, *, num_threads: int | None = None) -> Model:
    """Load an exported library and its sidecar with the TVM runtime only. ``num_threads``
    sets how many CPU threads its kernels use (default: every core)."""
    from tvm.runtime import load_module

    path = Path(path)
    meta_file = metadata_path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: library not found")
    if not meta_file.is_file():
        raise ArtifactError(f"{path}: metadata sidecar {meta_file.name} not found next to it")
    try:
        meta = json.loads(meta_file.read_text())
        inputs = [TensorInfo.from_json(i) for i in meta["inputs"]]
        outputs = [TensorInfo.from_json(o) for o in meta["outputs"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{meta_file}: malformed metadata ({exc!r})") from exc
    params = []
    if meta.get("params"):
        if not params_path(path).is_file():
            raise ArtifactError(f"{path}: weights file {params_path(path).name} not found")
        params = _load_params(params_path(path))
    arch = meta.get("arch", host_arch())
    if arch != host_arch():  # dlopen would only say "No such file"; the model says why
        return Model(None, inputs, outputs, meta, params=params, num_threads=num_threads)
    try:
        with quiet_native_stderr():
            module = load_module(str(path.resolve()))
    except Exception as exc:
        raise ArtifactError(f"{path}: TVM runtime cannot load the library ({exc})") from exc
    return Model(module, inputs, outputs, meta, params=params, num_threads=num_threads)

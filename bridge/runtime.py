"""Calling compiled models, and loading exported ones, with the TVM runtime only.

Nothing here imports TVM's compiler (``tvm.relax``), a C compiler or the CUDA toolkit; with
``TVM_USE_RUNTIME_LIB=1`` it runs on ``libtvm_runtime`` alone. Writing libraries and bundles is
``bridge.export``'s work.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bridge.cores import thread_pool_size
from bridge.errors import ArtifactError, DeviceError, InputError
from bridge.signature import TensorInfo
from bridge.targets import host_arch

METADATA_FORMAT = 1
# Numpy dtype kinds a model input accepts (cast to the input's dtype): bool, integers, floats.
NUMERIC_KINDS = "biuf"
KIND_NAMES = {
    "U": "strings",
    "S": "bytes",
    "O": "Python objects",
    "c": "complex numbers",
    "M": "datetimes",
    "m": "timedeltas",
    "V": "raw bytes",
}
CUDA_LOADER = "ffi.Module.load_from_bytes.cuda"


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


def params_path(library: str | Path) -> Path:
    """Weights kept out of a library: ``model.so`` -> ``model.params``."""
    return Path(library).with_suffix(".params")


def _cuda_problem() -> str | None:
    """Why CUDA kernels cannot run in this process, or None if they can. Loads TVM's CUDA
    runtime (``libtvm_runtime_cuda.so``) when nothing has yet: a runtime-only TVM does not."""
    import tvm
    import tvm_ffi
    from tvm.runtime import cuda

    if tvm_ffi.get_global_func(CUDA_LOADER, allow_missing=True) is None:
        library = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
        try:
            ctypes.CDLL(str(library))  # its initializers register the CUDA loader
        except OSError as exc:
            return f"TVM's CUDA runtime does not load here ({exc})"
    if not cuda(0).exist:
        return "no GPU is usable here"
    return None


def unavailable_reason(metadata: Mapping[str, Any], library: Path | None = None) -> str | None:
    """Why a model with ``metadata`` cannot run in this process (another CPU architecture, or
    CUDA without a usable GPU), saying where to run it; None if it can. ``library``: the file
    a loaded model came from (named in the message)."""
    where = f"{library}: " if library is not None else ""
    arch, device = metadata.get("arch", host_arch()), metadata.get("device", "cpu")
    if arch != host_arch():
        how = (
            f"run it on an {arch} machine (a bundle runs there without Python)"
            if library is not None
            else "export it (bundle=True) and run it on the target"
        )
        return f"{where}this model is compiled for {arch} and this machine is {host_arch()}: {how}"
    if device == "cuda":
        problem = _cuda_problem()
        if problem is not None:
            return (
                f"{where}this model is compiled for CUDA and {problem}: "
                f"run it on a machine with an NVIDIA GPU and CUDA 13"
            )
    return None


class Model:
    """A compiled model: call it with numpy arrays, get numpy arrays back (Keras semantics).

    ``bridge.load`` returns one; ``bridge.build`` returns a ``bridge.export.BuiltModel``, which
    can also be exported. A model for another CPU or for a GPU that is not here is still made:
    calling it raises DeviceError saying where to run it.
    """

    def __init__(
        self,
        module: Any,
        inputs: list[TensorInfo],
        outputs: list[TensorInfo],
        metadata: dict[str, Any],
        *,
        params: list[np.ndarray] | None = None,
        num_threads: int | None = None,
        library: Path | None = None,
    ):
        """``module``: what TVM's VirtualMachine runs (a relax Executable or a loaded library);
        ``params``: weights passed after the inputs; ``library``: the file a loaded model came
        from."""
        if num_threads is not None:
            use_threads(num_threads)  # applied again before each call
        self.num_threads = num_threads
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.metadata = metadata
        self.library = library
        self._module = module
        self._params = list(params or [])
        self._vm, self._device, self._param_tensors = None, None, []
        self._unavailable = unavailable_reason(metadata, library)
        if self._unavailable is None:
            self._start(module)

    def _start(self, module: Any) -> None:
        from tvm.runtime import cpu, cuda
        from tvm.runtime.vm import VirtualMachine

        self._device = cuda(0) if self.metadata.get("device") == "cuda" else cpu()
        self._vm = VirtualMachine(module, self._device)
        self._main = self._vm["main"]
        self._staged: list[Any] = [None] * len(self.inputs)
        self._lock = threading.Lock()
        self._pool = thread_pool_size()
        self._param_tensors = [_on_device(p, self._device) for p in self._params]
        if self._device == cpu():
            self._params = self._param_tensors  # each weight held once (export reads these)

    @property
    def num_threads(self) -> int | None:
        """CPU threads the kernels use (None: every thread of TVM's pool)."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, count: int | None) -> None:
        if count is not None:
            _check_threads(count)
        self._num_threads = count

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
        arrays = [self._check(info, value) for info, value in zip(self.inputs, args)]
        _check_symbols(self.inputs, arrays)
        return arrays

    @staticmethod
    def _check(info: TensorInfo, value: Any) -> np.ndarray:
        array = np.ascontiguousarray(_as_numeric(info, value), dtype=info.dtype)
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
        if self._vm is None:
            raise DeviceError(self._unavailable)
        arrays = self._arrange(args, kwargs)
        with self._lock:  # one call at a time: the VM and the staged inputs are per model
            # Default: the whole pool (the cores this process may use), even after another
            # model ran on fewer threads of it.
            _apply_threads(self.num_threads if self.num_threads is not None else self._pool)
            result = self._main(*self._stage(arrays), *self._param_tensors)
            if len(self.outputs) == 1:
                return result.numpy()
            return [r.numpy() for r in result]

    def _stage(self, arrays: list[np.ndarray]) -> list[Any]:
        """The inputs copied into device tensors kept from call to call (made again when an
        input's shape changes): no allocation, and on the CPU no fresh pages to fault in, per
        call (with the cached VM function and thread check: an int8 MobileNetV2 call 1.7-2.8%
        faster, Xeon, 2 threads)."""
        from tvm.runtime import tensor

        staged = self._staged
        for index, array in enumerate(arrays):
            held = staged[index]
            if held is not None and tuple(held.shape) == array.shape:
                held.copyfrom(array)
            else:
                staged[index] = tensor(array, self._device)
        return staged

    def profile(self, inputs: Any = None, *, runs: int = 10, progress: Any = None) -> Any:
        """Time every kernel call and attribute it to the model's layers; returns a
        ``bridge.profile.Profile`` (``.layers``, ``.kernels``, ``.to_dict()``, ``.save()``).
        ``inputs`` as for calling the model (random ones of the right shapes when None);
        ``runs``: the median of that many runs is kept; ``progress(description, done)`` as for
        ``bridge.build``."""
        from bridge.profile import profile_model

        return profile_model(self, inputs, runs=runs, progress=progress)

    def export(self, path: str | Path, *, bundle: bool = False) -> Path:
        """Only models built in this process export (``bridge.export.BuiltModel``)."""
        raise ArtifactError(
            f"{self.library or 'this model'}: a loaded model does not export; copy its files"
        )

    def __repr__(self) -> str:
        ins = ", ".join(f"{i.name}{list(i.shape)}" for i in self.inputs)
        outs = ", ".join(f"{o.name}{list(o.shape)}" for o in self.outputs)
        return f"<bridge.Model ({ins}) -> ({outs}) target={self.metadata.get('target')}>"


def _load_params(path: Path) -> list:
    """The weights in ``path`` as TVM tensors, in argument order. TVM's reader streams each
    straight into its final (64-byte aligned) buffer, so they are held once, as the runner
    and the C API hold them. Not ``mmap``: the format packs tensors back to back after
    ``40 + 8 * ndim``-byte headers, and TVM's kernels assume 64-byte aligned buffers."""
    from tvm.runtime import load_param_dict_from_file

    table = load_param_dict_from_file(str(path))
    return [table[key] for key in sorted(table)]


def _on_device(value: Any, device: Any) -> Any:
    """``value`` (a numpy array or TVM tensor) as a TVM tensor on ``device``, not copied
    when it already is one."""
    from tvm.runtime import Tensor, tensor

    if isinstance(value, Tensor) and value.device == device:
        return value
    return tensor(value, device)


def _check_symbols(inputs: list[TensorInfo], arrays: list[np.ndarray]) -> None:
    """Inputs that share a symbolic dimension (``input_shapes={"a": (1, "T"), "b": (1, "T")}``)
    must agree in its size."""
    seen: dict[str, tuple[str, int]] = {}
    for info, array in zip(inputs, arrays):
        for axis, size in enumerate(array.shape):
            symbol = info.symbol(axis)
            if symbol is None:
                continue
            first = seen.setdefault(symbol, (info.name, size))
            if first[1] != size:
                raise InputError(
                    f"input {info.name!r} has {symbol} = {size} (dimension {axis}), input "
                    f"{first[0]!r} has {symbol} = {first[1]}: they share the symbol {symbol}"
                )


def _as_numeric(info: TensorInfo, value: Any) -> np.ndarray:
    """``value`` as a numpy array that casts to the input's dtype without losing its meaning:
    numbers (bool, int, float; whole numbers for an integer input), never strings or objects."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # e.g. ragged nested lists
        raise InputError(
            f"input {info.name!r} must be a {info.dtype} array; numpy cannot make one of this "
            f"{type(value).__name__} ({exc})"
        ) from exc
    kind = array.dtype.kind
    if kind not in NUMERIC_KINDS:
        got = KIND_NAMES.get(kind, kind)
        raise InputError(
            f"input {info.name!r} must be a numeric array ({info.dtype}), got {got} "
            f"(dtype {array.dtype})"
        )
    if kind == "f" and np.dtype(info.dtype).kind in "iub" and not _whole(array):
        raise InputError(
            f"input {info.name!r} takes {info.dtype}, got {array.dtype} values that are not "
            f"whole numbers"
        )
    return array


def _whole(array: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(array) & (array == np.round(array))))


def use_threads(count: int) -> None:
    """Run CPU kernels on ``count`` threads from now on (process-wide: TVM has one pool,
    created with ``TVM_NUM_THREADS`` threads, all cores by default; it can use fewer, not more)."""
    _check_threads(count)
    _apply_threads(count)


def _check_threads(count: int) -> None:
    pool = thread_pool_size()
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= pool:
        raise DeviceError(
            f"num_threads must be an integer from 1 to {pool} (TVM's thread pool size; set "
            f"TVM_NUM_THREADS before importing bridge for more), got {count!r}"
        )


def _apply_threads(count: int) -> None:
    """:func:`use_threads` of a count already checked: one FFI call when it is in force."""
    number, configure = _thread_functions()
    if number() != count:
        configure(1, count)


@functools.cache
def _thread_functions() -> tuple[Any, Any]:
    import tvm_ffi

    return (
        tvm_ffi.get_global_func("runtime.NumThreads"),
        tvm_ffi.get_global_func("runtime.config_threadpool"),
    )


def load(path: str | Path, *, num_threads: int | None = None) -> Model:
    """Load an exported library and its sidecar with the TVM runtime only. ``num_threads``
    sets how many CPU threads its kernels use (default: the cores this process may use, see
    ``bridge.cores``)."""
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
    module = None
    # Another CPU's library (dlopen: "No such file") or CUDA without a GPU (TVM: "loader not
    # registered") is not loaded: the model says where to run it when called.
    if unavailable_reason(meta, path) is None:
        try:
            with quiet_native_stderr():
                module = load_module(str(path.resolve()))
        except Exception as exc:
            raise ArtifactError(f"{path}: TVM runtime cannot load the library ({exc})") from exc
    return Model(
        module, inputs, outputs, meta, params=params, num_threads=num_threads, library=path
    )

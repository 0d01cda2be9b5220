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

from bridge.errors import ArtifactError, InputError
from bridge.signature import TensorInfo

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
    ):
        from tvm.runtime import cpu
        from tvm.runtime.vm import VirtualMachine

        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.metadata = metadata
        self._executable = executable
        self._device = cpu()
        self._vm = VirtualMachine(module, self._device)

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

        arrays = self._arrange(args, kwargs)
        result = self._vm["main"](*[tensor(a, self._device) for a in arrays])
        if len(self.outputs) == 1:
            return result.numpy()
        return [r.numpy() for r in result]

    # --- export -------------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        """Write the library ``path`` (e.g. ``out/model.so``) and its ``.meta.json`` sidecar."""
        if self._executable is None:
            raise ArtifactError("this model was loaded from an artifact; copy its files instead")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / path.name
            with quiet_native_stderr():
                self._executable.export_library(str(staged))
            shutil.move(str(staged), path)
        meta = dict(self.metadata) | {
            "format": METADATA_FORMAT,
            "library": path.name,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
        }
        metadata_path(path).write_text(json.dumps(meta, indent=2) + "\n")
        return path

    def __repr__(self) -> str:
        ins = ", ".join(f"{i.name}{list(i.shape)}" for i in self.inputs)
        outs = ", ".join(f"{o.name}{list(o.shape)}" for o in self.outputs)
        return f"<bridge.Model ({ins}) -> ({outs}) target={self.metadata.get('target')}>"


def load(path: str | Path) -> Model:
    """Load an exported library and its sidecar with the TVM runtime only."""
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
    try:
        with quiet_native_stderr():
            module = load_module(str(path.resolve()))
    except Exception as exc:
        raise ArtifactError(f"{path}: TVM runtime cannot load the library ({exc})") from exc
    return Model(module, inputs, outputs, meta)

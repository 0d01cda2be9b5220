"""Writing compiled models: libraries (cross-linked where needed, CUDA device code checked), their
metadata sidecars, weights kept out of the library, and bundles (through ``bridge.deploy``).

``bridge.build`` returns a :class:`BuiltModel`: a ``bridge.Model`` that also exports. Loading
and calling stay in ``bridge.runtime``, which imports none of this.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import ArtifactError
from bridge.runtime import (
    METADATA_FORMAT,
    Model,
    metadata_path,
    params_path,
    quiet_native_stderr,
)
from bridge.signature import TensorInfo
from bridge.targets import TargetSpec


class BuiltModel(Model):
    """A model ``bridge.build`` compiled in this process: callable where its target runs, and
    exportable anywhere."""

    def __init__(
        self,
        executable: Any,
        inputs: list[TensorInfo],
        outputs: list[TensorInfo],
        metadata: dict[str, Any],
        *,
        spec: TargetSpec,
        params: list[np.ndarray] | None = None,
        num_threads: int | None = None,
    ):
        """``executable``: the relax Executable; ``spec``: the target it was compiled for."""
        super().__init__(
            executable, inputs, outputs, metadata, params=params, num_threads=num_threads
        )
        self.spec = spec

    def export(self, path: str | Path, *, bundle: bool = False) -> Path:
        """Write the library ``path`` (e.g. ``out/model.so``) and its ``.meta.json`` sidecar
        (plus ``.params`` when weights are kept out of the library); returns the library path.

        With ``bundle=True``, ``path`` is a folder that becomes a bundle: ``model.so``, the TVM
        runtime libraries for the target's CPU and the native ``run`` program (see
        ``bridge.deploy``); it is staged beside ``path``, so a failure leaves no partial bundle.
        """
        path = Path(path)
        if bundle:
            from bridge.deploy import export_bundle

            return export_bundle(self, path, self.spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_library(self._module, path, self.spec, self.metadata)
        weights = params_path(path)
        if self._params:
            save_params(self._params, weights)
        meta = dict(self.metadata) | {
            "format": METADATA_FORMAT,
            "library": path.name,
            "library_bytes": path.stat().st_size,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
        }
        metadata_path(path).write_text(json.dumps(meta, indent=2) + "\n")
        return path


def write_library(
    executable: Any, library: Path, spec: TargetSpec, metadata: dict[str, Any]
) -> None:
    """Export ``executable`` to ``library`` (cross-linking where the target needs it) and, for
    CUDA, prove it holds compiled device code; nothing is left at ``library`` on failure."""
    options = {}
    if spec.is_cross:
        from tvm.support import cc

        options["fcompile"] = cc.cross_compiler(spec.cross_compiler)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / library.name
        try:
            with quiet_native_stderr():
                executable.export_library(str(staged), **options)
        except Exception as exc:
            raise ArtifactError(f"{library}: exporting failed ({exc})") from exc
        if metadata.get("device") == "cuda":
            from bridge.cuda import check_device_code

            check_device_code(staged, metadata["cuda_arch"])
        shutil.move(str(staged), library)


def save_params(params: list, path: Path) -> None:
    """TVM's params format (what the runner and ``bridge.runtime`` read), the weights (numpy
    arrays or TVM tensors) as ``main`` takes them after its inputs. Keys ``p00000``,
    ``p00001``, ... so that key order is argument order (the C++ runner passes them sorted;
    ``bridge.runtime`` loads them sorted)."""
    from tvm.runtime import Tensor, save_param_dict_to_file, tensor

    tensors = {f"p{i:05d}": a if isinstance(a, Tensor) else tensor(a) for i, a in enumerate(params)}
    save_param_dict_to_file(tensors, str(path))


def file_digest(paths: Sequence[Path]) -> str:
    """SHA-256 over the names and contents of a model's source files (kept in the metadata)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


__all__ = ["BuiltModel", "file_digest", "save_params", "write_library"]

"""Open Keras model files: detect the kind of each file by content and return config + weights.

Supported: architecture ``.json`` (+ a weights file), Keras 3 ``.keras`` zips, legacy full-model
``.h5``; weights as Keras 3 ``.weights.h5``, sharded ``.weights.json``, or legacy ``.h5``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from bridge.errors import ModelFileError
from bridge.formats import file_kind
from bridge.keras.graph import ModelGraph, parse_model
from bridge.keras.guards import check_links, read_member, reading
from bridge.keras.h5guard import check_global_heaps
from bridge.keras.weights import WeightStore, open_weights_h5, open_weights_json


@dataclass
class KerasSource:
    """A Keras model read from disk: its graph, its weights, and where they came from."""

    graph: ModelGraph
    weights: WeightStore | None
    model_path: Path
    weights_path: Path | None
    keras_version: str
    files: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The file name used in error messages."""
        return str(self.model_path)


def read_json(data: bytes | str, path: Path) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # also bad UTF-8, nesting, 5000-digit numbers
        raise ModelFileError(path, f"invalid JSON: {str(exc)[:200]}") from exc


def keras_major(version: Any, envelope: Any) -> int:
    """Keras major version from a version string, else from the config's own shape."""
    major = re.match(r"\d{1,3}(?!\d)", version) if isinstance(version, str) else None
    if major:
        return int(major.group())
    # Keras 3 writes a top-level "module"; Keras 2 JSON carries "keras_version" instead.
    return 3 if isinstance(envelope, dict) and "module" in envelope else 2


def open_model(model_path: str | Path, weights_path: str | Path | None = None) -> KerasSource:
    """Read a model (and its weights) from any supported Keras file combination."""
    model_path = Path(model_path)
    kind = file_kind(model_path)
    if kind == "tflite":
        raise ModelFileError(model_path, "a TFLite model, not a Keras one (bridge.build reads it)")
    with reading(model_path, "model file"):
        if kind == "json":
            return _open_json(model_path, weights_path)
        source = _open_keras_zip(model_path) if kind == "zip" else _open_full_h5(model_path)
    if weights_path is not None:
        source.weights = _open_weights(Path(weights_path))
        source.weights_path = Path(weights_path)
        source.files.append(Path(weights_path))
    return source


def _open_weights(path: Path) -> WeightStore:
    kind = file_kind(path)
    with reading(path, "weights file"):
        if kind == "json":
            return open_weights_json(path, read_json(path.read_bytes(), path))
        if kind != "hdf5":
            raise ModelFileError(
                path, "not a Keras weights file (.weights.h5, .weights.json or .h5)"
            )
        return open_weights_h5(_open_h5(path), path)


def _open_h5(path: Path | io.BytesIO, label: Path | None = None) -> h5py.File:
    """Open an HDF5 file for reading, refusing links that lead out of it (and global heaps that
    would hang libhdf5, checked before it reads anything)."""
    check_global_heaps(path, label)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ModelFileError(label or path, f"corrupt or truncated HDF5 file ({exc})") from exc
    check_links(handle, label or path)
    return handle


def _open_json(path: Path, weights_path: str | Path | None) -> KerasSource:
    envelope = read_json(path.read_bytes(), path)
    if isinstance(envelope, dict) and "weight_map" in envelope:
        raise ModelFileError(path, "this is a sharded weights index, not a model architecture")
    version = _version_text(envelope.get("keras_version") if isinstance(envelope, dict) else "")
    major = keras_major(version, envelope)
    graph = parse_model(envelope, major, str(path))
    weights = _open_weights(Path(weights_path)) if weights_path is not None else None
    files = [path] + ([Path(weights_path)] if weights_path is not None else [])
    return KerasSource(graph, weights, path, weights_path and Path(weights_path), version, files)


def _open_keras_zip(path: Path) -> KerasSource:
    try:
        archive = zipfile.ZipFile(path)
        names = set(archive.namelist())
        if "config.json" not in names:
            raise ModelFileError(path, "not a .keras archive (no config.json inside)")
        config = read_json(read_member(archive, "config.json", path), path)
        metadata = (
            read_json(read_member(archive, "metadata.json", path), path)
            if "metadata.json" in names
            else {}
        )
        weights = None
        if "model.weights.h5" in names:
            buffer = io.BytesIO(read_member(archive, "model.weights.h5", path))
            weights = open_weights_h5(_open_h5(buffer, path), path)
        elif "model.weights.npz" in names:
            raise ModelFileError(path, "model.weights.npz inside .keras is not supported yet")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise ModelFileError(path, f"corrupt or truncated .keras archive ({exc})") from exc
    version = _version_text(metadata.get("keras_version") if isinstance(metadata, dict) else "")
    graph = parse_model(config, keras_major(version, config), str(path))
    return KerasSource(graph, weights, path, None, version, [path])


def _attr_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _version_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _open_full_h5(path: Path) -> KerasSource:
    handle = _open_h5(path)
    if "model_config" not in handle.attrs:
        raise ModelFileError(
            path,
            "this HDF5 file holds weights only (no 'model_config'); pass the architecture "
            "(.json) as the model and this file as the weights",
        )
    config = read_json(_attr_text(handle.attrs["model_config"]), path)
    version = _attr_text(handle.attrs.get("keras_version", ""))
    weights = open_weights_h5(handle, path) if "model_weights" in handle else None
    graph = parse_model(config, keras_major(version, config), str(path))
    return KerasSource(graph, weights, path, None, version, [path])

"""Which kind of model file a path holds, from its first bytes (never its name); no TVM, no h5py.

Kinds: ``"hdf5"`` (Keras full-model or weights ``.h5``), ``"zip"`` (Keras 3 ``.keras``),
``"json"`` (an architecture or a sharded weights index) and ``"tflite"`` (a flatbuffer with the
``TFL3`` file identifier).
"""

from __future__ import annotations

from pathlib import Path

from bridge.errors import ModelFileError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
TFLITE_MAGIC = b"TFL3"  # a flatbuffer's file identifier, at bytes 4..8
HEAD_BYTES = 8


def kind_of(head: bytes) -> str | None:
    """The kind of a file starting with ``head`` (its first 8 bytes), or None."""
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    if head[4:8] == TFLITE_MAGIC:
        return "tflite"
    return None


def file_kind(path: str | Path) -> str:
    """'hdf5', 'zip', 'json' or 'tflite'; raises ModelFileError for anything else."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "file not found")
    if not path.is_file():
        raise ModelFileError(path, "not a regular file")
    try:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as exc:
        raise ModelFileError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    kind = kind_of(head)
    if kind is None:
        raise ModelFileError(
            path, "unrecognized file kind: expected a Keras .json, .keras or .h5 file, or a .tflite"
        )
    return kind

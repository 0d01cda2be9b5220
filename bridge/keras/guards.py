"""Checks that keep reading an untrusted model file bounded and inside the files it was given.

Model files come from anywhere. Before bridge allocates memory for a declared size or follows a
reference, the size is checked against what the file actually stores, and references out of the
file (HDF5 external links, virtual datasets, external storage) are refused. Whatever else goes
wrong inside a reader (h5py/zipfile/json raising on corrupt data) surfaces as a
:class:`~bridge.errors.ModelFileError` naming the file, through :func:`reading`.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from bridge.errors import BridgeError, ModelFileError

# DEFLATE cannot expand data by more than ~1032x; a member declaring more lies about its size.
MAX_INFLATE_RATIO = 1100
# Nesting of models inside models (Keras applications nest one or two levels).
MAX_MODEL_DEPTH = 32
# Element dtypes a weight array may have: floats, ints, bools, and bfloat16 (2-byte opaque).
NUMERIC_KINDS = frozenset("fiub")

# What libraries raise on corrupt or malformed input (h5py raises RuntimeError for some HDF5
# errors). MemoryError is not here on purpose: sizes are checked before allocating.
READ_ERRORS = (
    OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError,
    RecursionError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
)  # fmt: skip


@contextmanager
def reading(path: object, what: str = "file") -> Iterator[None]:
    """Turn any library error raised while reading ``path`` into a ModelFileError."""
    try:
        yield
    except BridgeError:
        raise
    except READ_ERRORS as exc:
        raise ModelFileError(path, f"corrupt or malformed {what} ({_short(exc)})") from exc


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."


# --- HDF5 -----------------------------------------------------------------------------------------


def check_links(handle: h5py.Group, path: object) -> None:
    """Refuse HDF5 files with links out of the file (external or user-defined links)."""
    bad: list[str] = []

    def visit(name: bytes, info) -> None:
        if info.type not in (h5py.h5l.TYPE_HARD, h5py.h5l.TYPE_SOFT):
            bad.append(name.decode(errors="replace"))

    with reading(path, "HDF5 file"):
        handle.id.links.visit(visit, info=True)
    if bad:
        raise ModelFileError(
            path, f"HDF5 link(s) {bad[:3]} point outside the file; bridge reads only given files"
        )


def check_dataset(dataset: h5py.Dataset, path: object) -> None:
    """A weight dataset must be numeric, stored in this file, and no larger than it stores."""
    name = dataset.name
    plist = dataset.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL or plist.get_external_count() > 0:
        raise ModelFileError(
            path, f"dataset {name} keeps its data in other files; bridge reads only given files"
        )
    dtype = dataset.dtype
    if dtype.kind not in NUMERIC_KINDS and not (dtype.kind == "V" and dtype.itemsize == 2):
        raise ModelFileError(path, f"dataset {name} has dtype {dtype}, not a numeric array")
    declared = int(np.prod(dataset.shape, dtype=object)) * dtype.itemsize if dataset.shape else 0
    stored = dataset.id.get_storage_size()
    limit = stored * (MAX_INFLATE_RATIO if plist.get_nfilters() else 1)
    if declared > max(limit, dtype.itemsize):
        raise ModelFileError(
            path,
            f"dataset {name} declares shape {list(dataset.shape)} ({declared} bytes) but the file "
            f"stores {stored} bytes for it",
        )


# --- zip ------------------------------------------------------------------------------------------


def read_member(archive: zipfile.ZipFile, name: str, path: object) -> bytes:
    """A member's bytes, once its declared size is plausible for what the archive holds."""
    info = archive.getinfo(name)
    if info.compress_type == zipfile.ZIP_STORED:
        plausible = info.file_size == info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        plausible = info.file_size <= max(info.compress_size, 1) * MAX_INFLATE_RATIO
    else:
        raise ModelFileError(path, f"member {name!r} uses an unsupported zip compression")
    archive_size = Path(archive.filename).stat().st_size if archive.filename else None
    if not plausible or (archive_size is not None and info.compress_size > archive_size):
        raise ModelFileError(
            path,
            f"member {name!r} declares {info.file_size} bytes from {info.compress_size} stored: "
            f"a corrupt or malicious archive",
        )
    return archive.read(info)

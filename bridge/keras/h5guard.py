"""Check HDF5 global heap collections before libhdf5 walks them.

libhdf5 decodes a whole global heap collection (``GCOL``: where variable-length strings such as
Keras' ``model_config`` attribute live) as soon as one object in it is read, stepping from object
to object by each object's declared size. A free-space object (index 0) declaring size 0 never
advances the step, and a size near 2**64 wraps the step backwards: libhdf5 then loops forever in
C code, where neither Ctrl-C nor a Python timeout can stop it. This module walks every collection
in the file the way libhdf5 will, in pure Python, and raises :class:`ModelFileError` on any
collection that walk would not finish.

Collections are found by their signature at any offset, not through the heap IDs that point at
them: libhdf5 refuses a collection whose signature or version is wrong, so every collection it
would walk starts with ``GCOL`` and version 1, and the scan sees all of them (including ones a
corrupt heap ID might point at in the middle of other data). Layout (HDF5 File Format
Specification, "Global Heap"): signature (4), version (1), reserved (3), collection size (L);
then objects: index (2), reference count (2), reserved (4), size (L), data padded to 8 bytes.
Object 0 is the free space; its size includes its own header and is not padded. ``L`` is the
superblock's "size of lengths" (8 unless the writer chose otherwise); libhdf5 pads both headers
to 8 bytes.
"""

from __future__ import annotations

import io
import mmap
import struct
from pathlib import Path

from bridge.errors import ModelFileError

SIGNATURE = b"GCOL"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
VERSION = 1
ALIGN = 8
# A walk visiting more objects than this many per byte of file has found overlapping fake
# collections (signatures inside data): bound the check's own time on hostile files.
STEP_BUDGET_PER_BYTE = 1 / 8
STEP_BUDGET_MIN = 1 << 16
_LENGTH_FORMATS = {2: "<H", 4: "<I", 8: "<Q"}


def check_global_heaps(source: Path | io.BytesIO, label: object | None = None) -> None:
    """Raise ModelFileError if any global heap collection in ``source`` (an HDF5 file path or an
    in-memory file) is one libhdf5 could not walk to its end."""
    label = label if label is not None else source
    if isinstance(source, io.BytesIO):
        _check_buffer(source.getvalue(), label)
        return
    with open(source, "rb") as handle:
        size = handle.seek(0, io.SEEK_END)
        if size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            _check_buffer(view, label)


def _check_buffer(data, label: object) -> None:
    width = length_size(data)
    budget = max(STEP_BUDGET_MIN, int(len(data) * STEP_BUDGET_PER_BYTE))
    offset = data.find(SIGNATURE)
    while offset >= 0:
        if offset + 5 <= len(data) and data[offset + 4] == VERSION:
            budget -= _walk_collection(data, offset, width, label)
            if budget < 0:
                raise ModelFileError(
                    label, f"corrupt HDF5 global heap at offset {offset}: overlapping collections"
                )
        offset = data.find(SIGNATURE, offset + 1)


def length_size(data) -> int:
    """The superblock's "size of lengths" (bytes per size field); 8 if there is no superblock
    (libhdf5 then refuses the file anyway). The superblock is searched where libhdf5 searches:
    offset 0, then 512, 1024, 2048, ..."""
    at = 0
    while at + 16 <= len(data):
        if data[at : at + 8] == HDF5_SIGNATURE:
            version = data[at + 8]
            width = data[at + 14] if version < 2 else data[at + 10]
            return width if width in _LENGTH_FORMATS else 8
        at = 512 if at == 0 else at * 2
    return 8


def _read_length(data, offset: int, width: int) -> int:
    return struct.unpack_from(_LENGTH_FORMATS[width], data, offset)[0]


def _align(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _walk_collection(data, start: int, width: int, label: object) -> int:
    """Walk one collection like libhdf5's ``H5HG__cache_heap_deserialize``; return the number of
    objects visited. Every step must advance and stay inside the collection."""

    def corrupt(reason: str) -> ModelFileError:
        return ModelFileError(label, f"corrupt HDF5 global heap at offset {start}: {reason}")

    header = _align(8 + width)  # signature, version, reserved, collection size; padded
    object_header = _align(8 + width)  # index, reference count, reserved, object size; padded
    if start + header > len(data):
        raise corrupt("collection header runs past the end of the file")
    size = _read_length(data, start + 8, width)
    if size < header:
        raise corrupt(f"collection size {size} is smaller than its own header")
    end = start + size
    if end > len(data):
        raise corrupt(f"collection of {size} bytes runs past the end of the file")
    at, steps = start + header, 0
    while at < end:
        steps += 1
        if at + object_header > end:  # a tail too short for an object: free space
            break
        index = struct.unpack_from("<H", data, at)[0]
        declared = _read_length(data, at + 8, width)
        if index > 0:
            need = object_header + _align(declared)
        else:
            need = declared  # the free-space object's size includes its header
            if need < object_header:
                raise corrupt(
                    f"free-space object at offset {at} declares {declared} bytes, less than its "
                    f"own header (the walk would not advance)"
                )
        if need > end - at:
            raise corrupt(
                f"object {index} at offset {at} declares {declared} bytes, past the "
                f"collection's end at offset {end}"
            )
        at += need
    return steps

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

Dense attribute and link storage (fractal heaps and version 2 B-trees, written only with
``libver="latest"`` and more than 8 attributes or links on an object) is refused outright: libhdf5
dies (SIGFPE, SIGSEGV in ``H5Aexists``) on fuzzed ones whose checksums still match, its layout is
too large to validate here, and neither Keras nor h5py's default format ever writes it. A
structure counts when its signature, version 0 and its checksum all match (Jenkins' lookup3,
as libhdf5 checks it), so bytes of weight data never do.
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
LENGTH_SIZES = (2, 4, 8, 16, 32)  # what libhdf5 accepts as the superblock's "size of lengths"


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
    offsets, width = superblock_sizes(data)
    _refuse_dense_storage(data, offsets, width, label)
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


def superblock_sizes(data) -> tuple[int, int]:
    """The superblock's "size of offsets" and "size of lengths" (bytes per address and per size
    field); 8 for one that is missing or out of range (libhdf5 then refuses the file anyway).
    The superblock is searched where libhdf5 searches: offset 0, then 512, 1024, 2048, ..."""
    at = 0
    while at + 16 <= len(data):
        if data[at : at + 8] == HDF5_SIGNATURE:
            first = at + 13 if data[at + 8] < 2 else at + 9  # versions 0, 1; then 2, 3
            offsets, lengths = data[first], data[first + 1]
            return (
                offsets if offsets in LENGTH_SIZES else 8,
                lengths if lengths in LENGTH_SIZES else 8,
            )
        at = 512 if at == 0 else at * 2
    return 8, 8


def lookup3(blob: bytes) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` (initial value 0): HDF5's metadata checksum."""
    length = len(blob)
    a = b = c = (0xDEADBEEF + length) & _U32
    at = 0
    while length > 12:
        x, y, z = struct.unpack_from("<III", blob, at)
        a, b, c = (a + x) & _U32, (b + y) & _U32, (c + z) & _U32
        a, c = ((a - c) & _U32) ^ _rot(c, 4), (c + b) & _U32
        b, a = ((b - a) & _U32) ^ _rot(a, 6), (a + c) & _U32
        c, b = ((c - b) & _U32) ^ _rot(b, 8), (b + a) & _U32
        a, c = ((a - c) & _U32) ^ _rot(c, 16), (c + b) & _U32
        b, a = ((b - a) & _U32) ^ _rot(a, 19), (a + c) & _U32
        c, b = ((c - b) & _U32) ^ _rot(b, 4), (b + a) & _U32
        length, at = length - 12, at + 12
    if length == 0:
        return c
    x, y, z = struct.unpack("<III", bytes(blob[at : at + length]) + bytes(12 - length))
    abc = [(a + x) & _U32, (b + y) & _U32, (c + z) & _U32]
    for left, right, shift in _FINAL_STEPS:
        abc[left] = ((abc[left] ^ abc[right]) - _rot(abc[right], shift)) & _U32
    return abc[2]


_U32 = 0xFFFFFFFF
# lookup3's final(): (target, source, rotation) for c^=b; c-=rot(b,14); a^=c; a-=rot(c,11); ...
_FINAL_STEPS = ((2, 1, 14), (0, 2, 11), (1, 0, 25), (2, 1, 16), (0, 2, 4), (1, 0, 14), (2, 1, 24))


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _U32


def dense_storage_span(data, at: int, offsets: int, lengths: int) -> int | None:
    """Bytes covered by the checksum of a fractal heap header (``FRHP``) or v2 B-tree header
    (``BTHD``) at ``at`` (the checksum follows them); None if the signature is another one."""
    signature = bytes(data[at : at + 4])
    if signature == b"BTHD":  # ... depth, split/merge %, root address, root records, total
        return 18 + offsets + lengths
    if signature == b"FRHP":  # 12 lengths, 3 addresses, 4 small fields; then the root filter
        span = 22 + 12 * lengths + 3 * offsets
        filters = int.from_bytes(data[at + 7 : at + 9], "little")
        return span + (lengths + 4 + filters if filters else 0)
    return None


def _refuse_dense_storage(data, offsets: int, lengths: int, label: object) -> None:
    for signature, what in ((b"FRHP", "fractal heap"), (b"BTHD", "version 2 B-tree")):
        at = data.find(signature)
        while at >= 0:
            span = dense_storage_span(data, at, offsets, lengths)
            if span and data[at + 4 : at + 5] == b"\0" and at + span + 4 <= len(data):
                stored = struct.unpack_from("<I", data, at + span)[0]
                if lookup3(data[at : at + span]) == stored:
                    raise ModelFileError(
                        label,
                        f"HDF5 dense attribute/link storage ({what} at offset {at}) is not read: "
                        "libhdf5 crashes on corrupt ones and Keras never writes it; re-save the "
                        "file with h5py's default format",
                    )
            at = data.find(signature, at + 1)


def _read_length(data, offset: int, width: int) -> int:
    return int.from_bytes(data[offset : offset + width], "little")


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

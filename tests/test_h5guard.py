"""Corrupt HDF5 global heaps: libhdf5 loops forever walking some of them (issue #12); bridge
checks every collection first (``bridge.keras.h5guard``) and names the file instead.

Reading through bridge runs in a forked child with a time limit, so that a regression hangs the
child, not the test run.
"""

from __future__ import annotations

import io
import multiprocessing
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from bridge.errors import ModelFileError
from bridge.keras.h5guard import check_global_heaps
from tests.conftest import FIXTURES

K2, K3 = FIXTURES / "keras2" / "models", FIXTURES / "keras3" / "models"
LIMIT_S = 60  # generous for a loaded machine: a good read takes well under a second


def _collections(blob: bytes) -> list[int]:
    found, at = [], blob.find(b"GCOL")
    while at >= 0:
        found.append(at)
        at = blob.find(b"GCOL", at + 1)
    return found


def _zero_objects(blob: bytes, into: int = 16) -> bytes:
    """The issue's corruption: a 64-byte zero run over object headers of the first collection."""
    out = bytearray(blob)
    at = _collections(blob)[0] + into
    out[at : at + 64] = bytes(64)
    return bytes(out)


def _first_object(blob: bytes) -> int:
    return _collections(blob)[0] + 16


def _free_space_object(blob: bytes) -> int:
    """Offset of the free-space object (index 0) of the first collection."""
    start = _collections(blob)[0]
    at = start + 16
    while True:
        index, _, _, size = struct.unpack_from("<HHIQ", blob, at)
        if index == 0:
            return at
        at += 16 + -(-size // 8) * 8


def _outcome(args: tuple) -> str:
    """What ``bridge.to_relax(*args)`` ends in, in a forked child; 'hang' if it does not end
    within LIMIT_S."""

    def child(conn) -> None:
        import bridge

        try:
            bridge.to_relax(*args)
            conn.send("ok")
        except ModelFileError as exc:
            conn.send(f"ModelFileError: {exc}")
        except BaseException as exc:  # reported to the parent
            conn.send(f"{type(exc).__name__}: {exc}")

    context = multiprocessing.get_context("fork")
    parent, child_end = context.Pipe(duplex=False)
    process = context.Process(target=child, args=(child_end,), daemon=True)
    process.start()
    child_end.close()
    try:
        return parent.recv() if parent.poll(LIMIT_S) else "hang"
    except EOFError:
        return f"died with exit code {process.exitcode}"
    finally:
        process.kill()
        process.join()


def _copy_corrupted(tmp_path: Path, source: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(_zero_objects(source.read_bytes()))
    return path


def test_zeroed_global_heap_in_full_model_h5_is_refused(tmp_path):
    """The issue's file: model_config lives in the zeroed collection."""
    model = _copy_corrupted(tmp_path, K3 / "seq_cnn.h5", "model.h5")
    outcome = _outcome((model,))
    assert outcome.startswith("ModelFileError"), outcome
    assert "model.h5: corrupt HDF5 global heap at offset 2048" in outcome


def test_zeroed_global_heap_in_legacy_weights_is_refused(tmp_path):
    """Legacy weights files keep ``layer_names``/``weight_names`` as variable-length strings."""
    weights = _copy_corrupted(tmp_path, K2 / "seq_cnn_legacy.h5", "w.h5")
    outcome = _outcome((K2 / "seq_cnn.json", weights))
    assert outcome.startswith("ModelFileError") and "w.h5: corrupt HDF5 global heap" in outcome


def test_zeroed_global_heap_in_keras_archive_and_shard_is_refused(tmp_path):
    """Every HDF5 file bridge opens is checked: a .keras member (read from memory), a shard."""
    with zipfile.ZipFile(FIXTURES / "keras3" / "layers" / "dense.keras") as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members["model.weights.h5"] = _zero_objects(members["model.weights.h5"])
    archive_path = tmp_path / "dense.keras"
    with zipfile.ZipFile(archive_path, "w") as archive:
        for name, blob in members.items():
            archive.writestr(name, blob)
    outcome = _outcome((archive_path,))
    assert outcome.startswith("ModelFileError") and "dense.keras: corrupt HDF5 global" in outcome

    shutil.copytree(K3 / "sharded", tmp_path / "sharded")
    shard = tmp_path / "sharded" / "seq_cnn_00000.weights.h5"
    shard.write_bytes(_zero_objects(shard.read_bytes()))
    outcome = _outcome((K3 / "seq_cnn.json", tmp_path / "sharded" / "seq_cnn.weights.json"))
    assert "seq_cnn_00000.weights.h5: corrupt HDF5 global heap" in outcome, outcome


@pytest.mark.slow
def test_libhdf5_itself_hangs_on_the_zeroed_heap(tmp_path):
    """The reproduction: h5py alone never returns from reading model_config (a busy loop in
    ``H5HG__cache_heap_deserialize``). If a libhdf5 upgrade makes this fail, it fixed the loop;
    the guard stays as a cheap defence."""
    model = _copy_corrupted(tmp_path, K3 / "seq_cnn.h5", "model.h5")
    code = f"import h5py; h5py.File({str(model)!r})['/'].attrs['model_config']"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", code], timeout=5, capture_output=True)


def _patched(blob: bytes, offset: int, fmt: str, value: int) -> io.BytesIO:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, value)
    return io.BytesIO(bytes(out))


SEQ_CNN = (K3 / "seq_cnn.h5").read_bytes()


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "reason"),
    [
        # the free-space object declaring 0 bytes: libhdf5's walk stands still
        (_free_space_object(SEQ_CNN) + 8, "<Q", 0, "less than its own header"),
        # a size that wraps libhdf5's pointer backwards (a cycle): free space, then an object
        (_free_space_object(SEQ_CNN) + 8, "<Q", 2**64 - 16, "past the collection's end"),
        (_first_object(SEQ_CNN) + 8, "<Q", 2**64 - 8, "past the collection's end"),
        (_first_object(SEQ_CNN) + 8, "<Q", 10**6, "past the collection's end"),
        (_collections(SEQ_CNN)[0] + 8, "<Q", 10**9, "runs past the end of the file"),
        (_collections(SEQ_CNN)[0] + 8, "<Q", 8, "smaller than its own header"),
    ],
    ids=["free-zero", "free-wraps", "object-wraps", "object-long", "beyond-file", "tiny"],
)
def test_corrupt_collection_fields_are_refused(offset, fmt, value, reason):
    with pytest.raises(ModelFileError, match=f"global heap at offset 2048: .*{reason}"):
        check_global_heaps(_patched(SEQ_CNN, offset, fmt, value), "model.h5")


def test_every_fixture_passes_the_check():
    """No false alarm on any committed HDF5 file, nor on the .keras archives' weights."""
    files = sorted(FIXTURES.rglob("*.h5"))
    assert len(files) > 40
    for path in files:
        check_global_heaps(path)
    for path in sorted(FIXTURES.rglob("*.keras")):
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" in archive.namelist():
                check_global_heaps(io.BytesIO(archive.read("model.weights.h5")), path)


def test_a_signature_in_data_without_version_1_is_ignored():
    blob = b"\x89HDF\r\n\x1a\n" + bytes(56) + b"GCOL\x02" + bytes(64) + b"GCOL"
    check_global_heaps(io.BytesIO(blob))


def test_lengths_narrower_than_8_bytes_follow_the_superblock(tmp_path):
    """A file written with 4-byte lengths: the collection and object sizes are 4 bytes."""
    path = tmp_path / "narrow.h5"
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_sizes(8, 4)
    fid = h5py.h5f.create(str(path).encode(), h5py.h5f.ACC_TRUNC, fcpl=fcpl)
    with h5py.File(fid) as handle:
        handle.attrs["model_config"] = "x" * 100
        handle.attrs["names"] = np.array(["a", "bb"], dtype=h5py.string_dtype())
    check_global_heaps(path)
    blob = path.read_bytes()
    start = _collections(blob)[0]
    assert struct.unpack_from("<I", blob, start + 8)[0] >= 4096  # a 4-byte collection size
    corrupt = bytearray(blob)
    corrupt[start + 16 : start + 16 + 64] = bytes(64)  # headers padded to 16 bytes
    with pytest.raises(ModelFileError, match="less than its own header"):
        check_global_heaps(io.BytesIO(bytes(corrupt)))


def test_overlapping_fake_collections_bound_the_check():
    """Signatures planted in data, each claiming the rest of the file: the walks are quadratic
    in the file's size, so the check stops at a budget instead of taking minutes."""
    unit = struct.pack("<HHIQ", 1, 0, 0, 16)  # an object of 16 bytes, holding a fake header
    count = 16384
    blob = bytearray()
    for _ in range(count):
        at = len(blob) + 16
        blob += unit + b"GCOL\x01\0\0\0" + struct.pack("<Q", 32 * count - at)
    with pytest.raises(ModelFileError, match="overlapping collections"):
        check_global_heaps(io.BytesIO(bytes(blob)))


# --- dense attribute/link storage ---------------------------------------------------------------
# Found by the h5-struct fuzz format: a full-model .h5 rewritten with libver="latest" and dense
# attributes, one v2 B-tree header's address field pointed back at itself and its checksum
# repaired. libhdf5 dies of SIGFPE in H5Aexists when bridge asks for "layer_names".
DENSE_CRASH = Path(__file__).parent / "fuzz" / "cases" / "dense_btree_sigfpe.h5"


def test_corrupt_dense_attribute_storage_is_refused_not_crashed():
    outcome = _outcome((DENSE_CRASH,))
    assert outcome.startswith("ModelFileError"), outcome
    assert "dense attribute/link storage (version 2 B-tree at offset" in outcome or (
        "dense attribute/link storage (fractal heap at offset" in outcome
    )


def test_dense_storage_is_refused_only_when_its_checksum_matches(tmp_path):
    """A real fractal heap / v2 B-tree header (signature, version 0, lookup3 checksum) is
    refused; the same signature in other bytes is not."""
    from tests.fuzz.mutate import latest_layout

    dense, compact = tmp_path / "dense.h5", tmp_path / "compact.h5"
    latest_layout(FIXTURES / "keras3" / "models" / "seq_noinput.h5", dense, dense=True)
    latest_layout(FIXTURES / "keras3" / "models" / "seq_noinput.h5", compact, dense=False)
    with pytest.raises(ModelFileError, match="fractal heap at offset"):
        check_global_heaps(dense)
    check_global_heaps(compact)  # v2 object headers, compact attributes: read as usual
    blob = bytearray(dense.read_bytes())
    for signature in (b"FRHP", b"BTHD"):
        at = blob.find(signature)
        while at >= 0:
            blob[at + 20] ^= 0xFF  # inside the checksummed header
            at = blob.find(signature, at + 1)
    check_global_heaps(io.BytesIO(bytes(blob)))  # libhdf5 refuses these by their checksums
    padded = bytes(64) + b"FRHP\0" + bytes(200) + b"BTHD\0" + bytes(64)
    check_global_heaps(io.BytesIO(padded))

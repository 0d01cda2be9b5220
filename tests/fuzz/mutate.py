"""Structure-aware mutations of Keras inputs, driven by hypothesis draws (so failures shrink).

Each mutator takes ``data`` (hypothesis' ``st.data()`` object) and a valid input, and returns a
mutated one: JSON trees (values, types, keys, shapes), HDF5 files (dataset shapes, dtypes,
declared sizes, attributes, links), zip archives (member names, sizes, contents) and raw bytes
(truncation, flips). ``Canaries`` are files outside the case folder that mutations point at.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from hypothesis import strategies as st

from bridge.keras.h5guard import dense_storage_span, lookup3

# Values that break naive readers: sizes far beyond memory, signs, types, special floats.
HUGE = [10**12, 2**31, 2**63, 10**30, 10**9, 50_000]
INTERESTING: list[Any] = [
    *HUGE,
    -1,
    0,
    1,
    -(2**31),
    0.5,
    float("nan"),
    float("inf"),
    -1e308,
    "",
    "x",
    "../../etc/passwd",
    "channels_first",
    "same",
    "float64",
    "int8",
    None,
    True,
    [],
    {},
    [None],
    [None, 10**9, 10**9],
    [None, 40_000, 8],
    [10**6, 10**6, 10**6],
    [[["deep"]]],
    {"class_name": "Sequential", "config": {"layers": []}},
    {"class_name": "__keras_tensor__", "config": {"keras_history": ["x", 0, 0]}},
]
# Config keys worth aiming at: shapes, sizes and the graph's wiring.
HOT_KEYS = {
    "batch_shape", "batch_input_shape", "units", "filters", "kernel_size", "strides",
    "pool_size", "size", "target_shape", "dims", "axis", "axes", "num_heads", "key_dim",
    "input_dim", "output_dim", "n", "cropping", "padding", "dilation_rate", "groups",
    "depth_multiplier", "inbound_nodes", "keras_history", "class_name", "name", "dtype",
    "layers", "input_layers", "output_layers", "config", "args", "kwargs", "module",
    "registered_name", "activation", "data_format", "num_tokens", "output_mode", "equation",
    "output_shape", "bias_axes", "layer", "forward_layer", "backward_layer", "cell", "rate",
    "build_config", "input_shape", "shared_object_id",
}  # fmt: skip


@dataclass
class Canaries:
    """Files outside the case folder; a reader that opens one has read outside its inputs."""

    folder: Path

    @property
    def h5(self) -> Path:
        return self.folder / "canary.weights.h5"

    @property
    def raw(self) -> Path:
        return self.folder / "canary.bin"

    @property
    def json(self) -> Path:
        return self.folder / "canary.json"

    def create(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(self.h5, "w") as handle:
            handle["canary"] = np.full((4, 4), 7777.0, dtype="float32")
            handle.create_group("layers/dense/vars")["0"] = np.full((4,), 7777.0, "float32")
        self.raw.write_bytes(np.full(4096, 7777.0, dtype="float32").tobytes())
        self.json.write_text('{"class_name": "Sequential", "config": {"layers": []}}')

    def targets(self, case_root: Path) -> list[str]:
        """Ways to name a canary from inside a case folder: absolute and ``../`` relative."""
        relative = Path("..") / ".." / self.folder.name
        return [str(self.h5), str(relative / self.h5.name), "../" * 8 + str(self.h5)[1:]]


# --- JSON trees ---------------------------------------------------------------------------------


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            out += _paths(value, (*prefix, index))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _retype(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value) + 7
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return [value]
    if isinstance(value, str):
        return [value, value]
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return "null"


def _scale(value: Any, factor: int) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        return value
    if isinstance(value, int):
        return value * factor
    return [_scale(v, factor) for v in value]


JSON_OPS = (
    "replace", "retype", "delete", "rename", "scale", "negate", "duplicate", "graft", "rewire",
    "grow-dim", "grow-dim",
)  # fmt: skip
SHAPE_KEYS = {"batch_shape", "batch_input_shape", "target_shape", "build_input_shape"}


def grow_dim(data: st.DataObject, tree: Any, paths: list[tuple]) -> bool:
    """Make one dimension of a declared shape large but plausible: what runs out of memory or
    time in code that is linear or quadratic in it (unrolled loops, dense masks)."""
    shapes = [p for p in paths if p and p[-1] in SHAPE_KEYS and isinstance(_get(tree, p), list)]
    if not shapes:
        return False
    shape = _get(tree, shapes[data.draw(st.integers(0, len(shapes) - 1), label="shape")])
    if not shape:
        return False
    index = data.draw(st.integers(min(1, len(shape) - 1), len(shape) - 1), label="dim")
    shape[index] = data.draw(st.sampled_from([1000, 40_000, 10**6, 2**31 - 1]), label="size")
    return True


def _is_ref(value: Any) -> bool:
    """A tensor reference ``[layer, node, tensor(, kwargs)]`` (keras_history or Keras 2 form)."""
    return (
        isinstance(value, list)
        and len(value) in (3, 4)
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def rewire(data: st.DataObject, tree: Any, paths: list[tuple]) -> bool:
    """Point one tensor reference at another layer: cycles, self-loops, shape clashes."""
    refs = [p for p in paths if _is_ref(_get(tree, p))]
    names = sorted(
        {v for p in paths if p and p[-1] == "name" and isinstance(v := _get(tree, p), str)}
    )
    if not refs or not names:
        return False
    ref = _get(tree, refs[data.draw(st.integers(0, len(refs) - 1), label="ref")])
    ref[0] = names[data.draw(st.integers(0, len(names) - 1), label="to layer")]
    if data.draw(st.booleans()):
        ref[1] = data.draw(st.sampled_from([1, 2, 10**9]))
    return True


def mutate_tree(data: st.DataObject, tree: Any) -> Any:
    """One structural mutation of a parsed JSON document (returns a new tree)."""
    tree = copy.deepcopy(tree)
    paths = _paths(tree)
    hot = [p for p in paths if p and p[-1] in HOT_KEYS]
    inner = [p for p in paths if len(p) > 3]  # inside a layer entry, not the envelope
    pool = data.draw(st.sampled_from(["hot", "inner", "any"]), label="pool")
    pool = {"hot": hot, "inner": inner}.get(pool) or paths
    path = pool[data.draw(st.integers(0, len(pool) - 1), label="node")]
    op = data.draw(st.sampled_from(JSON_OPS), label="json op")
    if (op == "rewire" and rewire(data, tree, paths)) or (
        op == "grow-dim" and grow_dim(data, tree, paths)
    ):
        return tree
    if not path:  # the root
        return data.draw(st.sampled_from(INTERESTING)) if op == "replace" else _retype(tree)
    parent, key = _get(tree, path[:-1]), path[-1]
    value = parent[key]
    if op == "replace":
        parent[key] = copy.deepcopy(data.draw(st.sampled_from(INTERESTING), label="value"))
    elif op == "retype":
        parent[key] = _retype(value)
    elif op == "delete":
        del parent[key]
    elif op == "rename" and isinstance(parent, dict):
        new = data.draw(st.sampled_from(["", "name", "config", "class_name", key + "_"]))
        parent[new] = parent.pop(key)
    elif op == "scale":
        parent[key] = _scale(value, data.draw(st.sampled_from([10**6, 10**9, 0, -1])))
    elif op == "negate":
        parent[key] = _scale(value, -1)
    elif op == "duplicate" and isinstance(value, list) and value:
        index = data.draw(st.integers(0, len(value) - 1))
        value.insert(index, copy.deepcopy(value[index]))
    elif op == "graft":  # another subtree put here: shared names, nesting, self-reference
        donor = paths[data.draw(st.integers(0, len(paths) - 1), label="donor")]
        parent[key] = copy.deepcopy(_get(tree, donor))
    else:
        parent[key] = None
    return tree


TEXT_OPS = ("truncate", "flip", "nest", "bad-utf8", "huge-number")


def mutate_json_text(data: st.DataObject, text: bytes) -> bytes:
    """A mutation of the JSON text itself (what the tree mutations cannot express)."""
    op = data.draw(st.sampled_from(TEXT_OPS), label="text op")
    if op == "nest":  # nesting deep enough to exhaust a recursive parser
        depth = data.draw(st.sampled_from([1000, 100_000]))
        return b"[" * depth + b"]" * depth
    if op == "bad-utf8":
        return text[: len(text) // 2] + b"\xff\xfe" + text[len(text) // 2 :]
    if op == "huge-number":
        return text.replace(b"1", b"1" + b"0" * 5000, 1)
    return mutate_bytes(data, text, op)


def mutate_json_doc(data: st.DataObject, text: bytes) -> bytes:
    """Tree mutations (1-3), or now and then a text mutation."""
    if data.draw(st.integers(0, 9), label="text?") == 0:
        return mutate_json_text(data, text)
    tree = json.loads(text)
    for _ in range(data.draw(st.integers(1, 3), label="json edits")):
        tree = mutate_tree(data, tree)
    return json.dumps(tree).encode()


# --- raw bytes ----------------------------------------------------------------------------------


def mutate_bytes(data: st.DataObject, blob: bytes, op: str | None = None) -> bytes:
    """Truncate, flip bytes or zero a range: what a broken download or disk does."""
    op = op or data.draw(st.sampled_from(["truncate", "flip", "zero"]), label="bytes op")
    if not blob:
        return blob
    at = data.draw(st.integers(0, len(blob) - 1), label="offset")
    if op == "truncate":
        return blob[:at]
    out = bytearray(blob)
    if op == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            out[data.draw(st.integers(0, len(out) - 1))] ^= data.draw(st.integers(1, 255))
    else:
        out[at : at + data.draw(st.integers(1, 64))] = b"\0" * min(64, len(out) - at)
        out = out[: len(blob)]
    return bytes(out)


# --- HDF5 ---------------------------------------------------------------------------------------

H5_OPS = (
    "shape", "dtype", "declared-huge", "scalar", "delete", "swap-kind", "soft-link",
    "external-link", "virtual", "external-storage", "hard-cycle", "attr", "config-attr",
)  # fmt: skip
DTYPES = [
    "float64", "float16", "int8", "int64", "bool", "S5", "complex64", "V2", "V7", "vlen-str",
    "compound",
]  # fmt: skip


def _objects(handle: h5py.File) -> tuple[list[str], list[str]]:
    datasets, groups = [], []

    def visit(name: str, obj: Any) -> None:
        (datasets if isinstance(obj, h5py.Dataset) else groups).append(name)

    handle.visititems(visit)
    return datasets, groups


def _typed(dtype: str, shape: tuple) -> np.ndarray | tuple:
    if math.prod(shape) > 4096:  # an earlier edit declared it huge: keep the mutator's memory small
        shape = (2, 3)
    size = math.prod(shape)
    if dtype == "vlen-str":
        return np.array(["a"] * size, dtype=h5py.string_dtype()).reshape(shape)
    if dtype == "compound":
        return np.zeros(shape, dtype=[("a", "f4"), ("b", "i4")])
    if dtype.startswith("V"):
        return np.zeros(shape, dtype=dtype)
    return np.ones(shape, dtype=dtype)


def _replace(handle: h5py.File, name: str, make) -> None:
    del handle[name]
    make(name)


def _shape(data: st.DataObject, old: tuple) -> tuple:
    rank = data.draw(st.integers(0, 4), label="rank")
    return tuple(data.draw(st.integers(0, 5)) for _ in range(rank)) or old[:0]


def mutate_h5_file(data: st.DataObject, path: Path, canaries: Canaries) -> None:
    """Edit an HDF5 file in place, one structural change (an h5py-level edit, not bytes)."""
    with h5py.File(path, "r+") as handle:
        datasets, groups = _objects(handle)
        op = data.draw(st.sampled_from(H5_OPS), label="h5 op")
        if op in ("attr", "config-attr"):
            _mutate_attrs(data, handle, groups, op == "config-attr")
            return
        names = datasets if op not in ("hard-cycle", "swap-kind") or not groups else groups
        if op in ("delete", "soft-link", "external-link", "swap-kind"):
            names = data.draw(st.sampled_from([datasets, groups]), label="kind") or names
        if not names:
            return
        name = names[data.draw(st.integers(0, len(names) - 1), label="object")]
        obj = handle[name]
        old_shape = obj.shape if isinstance(obj, h5py.Dataset) else ()
        if op == "shape":
            new = _shape(data, old_shape)
            _replace(handle, name, lambda n: handle.create_dataset(n, data=np.ones(new, "f4")))
        elif op == "dtype":
            dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
            _replace(
                handle, name, lambda n: handle.create_dataset(n, data=_typed(dtype, old_shape))
            )
        elif op == "declared-huge":  # chunked, never written: costs nothing on disk
            shape = data.draw(st.sampled_from([(10**6, 10**6), (2**40,), (2**20, 2**20, 64)]))
            chunks = (1,) * len(shape)
            _replace(handle, name, lambda n: handle.create_dataset(n, shape, "f4", chunks=chunks))
        elif op == "scalar":
            _replace(handle, name, lambda n: handle.create_dataset(n, data=np.float32(1)))
        elif op == "delete":
            del handle[name]
        elif op == "swap-kind":
            if isinstance(obj, h5py.Dataset):
                _replace(handle, name, handle.create_group)
            else:
                _replace(handle, name, lambda n: handle.create_dataset(n, data=np.ones(3, "f4")))
        elif op == "soft-link":
            target = data.draw(st.sampled_from(["/", "/" + name, "/nowhere", "/" + names[0]]))
            _replace(handle, name, lambda n: handle.__setitem__(n, h5py.SoftLink(target)))
        elif op == "external-link":
            file = data.draw(st.sampled_from(canaries.targets(path.parent)), label="target")
            obj_path = data.draw(st.sampled_from(["/", "/canary", "/layers/dense/vars"]))
            _replace(
                handle, name, lambda n: handle.__setitem__(n, h5py.ExternalLink(file, obj_path))
            )
        elif op == "virtual":
            layout = h5py.VirtualLayout(shape=(4, 4), dtype="f4")
            layout[:] = h5py.VirtualSource(str(canaries.h5), "canary", shape=(4, 4))
            _replace(handle, name, lambda n: handle.create_virtual_dataset(n, layout))
        elif op == "external-storage":
            ext = [(str(canaries.raw), 0, 64)]
            _replace(handle, name, lambda n: handle.create_dataset(n, (4, 4), "f4", external=ext))
        elif op == "hard-cycle":
            group = handle[name] if isinstance(obj, h5py.Group) else handle
            group["loop"] = group  # a group containing itself
            if name in groups:
                handle[name + "/vars_cycle"] = handle["/"]


def _name_list_edit(data: st.DataObject, values: list) -> Any:
    op = data.draw(st.sampled_from(["drop", "dup", "bogus", "ints", "empty", "many", "reverse"]))
    if op == "drop" and values:
        return values[1:]
    if op == "dup" and values:
        return [*values, values[0]]
    if op == "bogus":
        return [*values, b"no_such_layer", b"../x", b"/"]
    if op == "ints":
        return np.arange(max(1, len(values)))
    if op == "many":
        return [b"x%d" % i for i in range(2000)]
    if op == "reverse":
        return values[::-1]
    return np.array([], dtype="S1")


def _mutate_attrs(data: st.DataObject, handle: h5py.File, groups: list[str], config: bool) -> None:
    if config:
        if "model_config" not in handle.attrs:
            return
        raw = handle.attrs["model_config"]
        text = raw.encode() if isinstance(raw, str) else bytes(raw)
        handle.attrs["model_config"] = mutate_json_doc(data, text).decode(errors="replace")
        return
    holders = ["/", *groups]
    holder = handle[holders[data.draw(st.integers(0, len(holders) - 1), label="holder")]]
    keys = list(holder.attrs)
    if not keys:
        holder.attrs["layer_names"] = [b"ghost"]
        return
    key = keys[data.draw(st.integers(0, len(keys) - 1), label="attr")]
    value = holder.attrs[key]
    if key in ("layer_names", "weight_names") or (
        isinstance(value, np.ndarray) and value.dtype.kind in "SOU"
    ):
        names = [v if isinstance(v, bytes) else str(v).encode() for v in np.atleast_1d(value)]
        holder.attrs[key] = _name_list_edit(data, names)
    elif data.draw(st.booleans()):
        holder.attrs[key] = b"\xff\xfe not utf-8"
    else:
        del holder.attrs[key]


def mutate_h5(data: st.DataObject, path: Path, canaries: Canaries) -> None:
    """1-2 structural edits, or (a tenth of the time) a byte-level corruption."""
    if data.draw(st.integers(0, 9), label="bytes?") == 0:
        path.write_bytes(mutate_bytes(data, path.read_bytes()))
        return
    for _ in range(data.draw(st.integers(1, 2), label="h5 edits")):
        # An edit h5py refuses (e.g. a name taken by an earlier edit) is not a finding.
        with contextlib.suppress(OSError, KeyError, ValueError, TypeError, RuntimeError):
            mutate_h5_file(data, path, canaries)


# --- zip archives -------------------------------------------------------------------------------

ZIP_OPS = (
    "config", "metadata", "weights", "rename", "delete", "duplicate", "declared-size",
    "deflate-bomb", "bytes",
)  # fmt: skip
EVIL_NAMES = [
    "../config.json", "/config.json", "/tmp/config.json", "config.json/", "./config.json",
    "sub/../config.json", "CONFIG.JSON", "..\\config.json", "../../../../tmp/model.weights.h5",
]  # fmt: skip


def _write_zip(members: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # duplicate member names are intended
        for name, blob, compression in members:
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.compress_type = compression
            archive.writestr(info, blob)
    return buffer.getvalue()


def _patch_declared_size(blob: bytes, member: int, size: int) -> bytes:
    """Rewrite a member's uncompressed size in the central directory (what zipfile trusts)."""
    out = bytearray(blob)
    offset = -1
    for _ in range(member + 1):
        offset = out.find(b"PK\x01\x02", offset + 1)
        if offset < 0:
            return blob
    struct.pack_into("<I", out, offset + 24, size)
    return bytes(out)


def mutate_zip(data: st.DataObject, blob: bytes, workdir: Path, canaries: Canaries) -> bytes:
    """One change to a .keras archive: its members (names, contents, sizes) or its bytes."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        members = [(i.filename, archive.read(i), i.compress_type) for i in archive.infolist()]
    op = data.draw(st.sampled_from(ZIP_OPS), label="zip op")
    index = data.draw(st.integers(0, len(members) - 1), label="member")
    name, content, compression = members[index]
    by_name = {m[0]: i for i, m in enumerate(members)}
    if op in ("config", "metadata") and f"{op}.json" in by_name:
        i = by_name[f"{op}.json"]
        members[i] = (members[i][0], mutate_json_doc(data, members[i][1]), members[i][2])
    elif op == "weights" and "model.weights.h5" in by_name:
        i = by_name["model.weights.h5"]
        scratch = workdir / "scratch.weights.h5"
        scratch.write_bytes(members[i][1])
        mutate_h5(data, scratch, canaries)
        members[i] = (members[i][0], scratch.read_bytes(), members[i][2])
        scratch.unlink()
    elif op == "rename":
        members[index] = (
            data.draw(st.sampled_from(EVIL_NAMES), label="name"),
            content,
            compression,
        )
    elif op == "delete":
        del members[index]
    elif op == "duplicate":
        members.append((name, b'{"class_name": "Sequential"}', compression))
    elif op == "deflate-bomb":  # small on disk, large once inflated
        members[index] = (name, b" " * (8 << 20), zipfile.ZIP_DEFLATED)
    out = _write_zip(members)
    if op == "declared-size":
        return _patch_declared_size(out, index, data.draw(st.sampled_from([0xFFFFFFF0, 2**31])))
    if op == "bytes":
        return mutate_bytes(data, out)
    return out


# --- TFLite flatbuffers -------------------------------------------------------------------------

INT32_EDGES = [0, 1, -1, 7, 2**31 - 1, -(2**31), 2**20, 65535]


def _tflite_fields(blob: bytes) -> list[tuple[int, str]]:
    """Byte offsets of the int32 fields that steer a TFLite reader: tensor shapes, tensor
    buffer and type indices, operator opcode indices and input/output tensor indices."""
    import tflite

    model = tflite.Model.GetRootAsModel(blob, 0)
    fields: list[tuple[int, str]] = []

    def vector(table, slot: int, kind: str) -> None:
        offset = table._tab.Offset(4 + 2 * slot)
        if offset:
            start, count = table._tab.Vector(offset), table._tab.VectorLen(offset)
            fields.extend((start + 4 * i, kind) for i in range(min(count, 64)))

    def scalar(table, slot: int, kind: str) -> None:
        offset = table._tab.Offset(4 + 2 * slot)
        if offset:
            fields.append((table._tab.Pos + offset, kind))

    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        vector(graph, 1, "graph-inputs")
        vector(graph, 2, "graph-outputs")
        for t in range(min(graph.TensorsLength(), 256)):
            tensor = graph.Tensors(t)
            vector(tensor, 0, "shape")
            scalar(tensor, 1, "type")
            scalar(tensor, 2, "buffer")
        for o in range(min(graph.OperatorsLength(), 256)):
            op = graph.Operators(o)
            scalar(op, 0, "opcode")
            vector(op, 1, "op-inputs")
            vector(op, 2, "op-outputs")
    return fields


def mutate_tflite(data: st.DataObject, blob: bytes) -> bytes:
    """Structure-aware: overwrite a shape/index/type field with an edge value, else bytes."""
    fields = _tflite_fields(blob)
    if not fields or data.draw(st.booleans(), label="raw bytes"):
        return mutate_bytes(data, blob)
    out = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        at, kind = fields[data.draw(st.integers(0, len(fields) - 1), label="field")]
        value = data.draw(st.sampled_from(INT32_EDGES), label=kind)
        width = 1 if kind == "type" else 4  # TensorType is a byte
        out[at : at + width] = (value & (2 ** (8 * width) - 1)).to_bytes(width, "little")
    return bytes(out)


# --- HDF5 structures (bytes) --------------------------------------------------------------------
# libhdf5 trusts its on-disk metadata: sizes, counts and addresses steer its walks. These
# mutations aim at those fields, found by signature (global heaps, local heaps, B-trees, symbol
# table nodes, v2 object headers, fractal heaps) or, for v1 object headers (no signature), by the
# addresses h5py reports.

H5_SIGNATURES = {
    "gcol": (b"GCOL",),
    "heap": (b"HEAP",),
    "btree-v1": (b"TREE",),
    "btree-v2": (b"BTHD", b"BTIN", b"BTLF"),
    "snod": (b"SNOD",),
    "ohdr-v2": (b"OHDR", b"OCHK"),
    "fheap": (b"FRHP", b"FHDB", b"FHIB"),
    "fspace": (b"FSHD", b"FSSE"),
}
H5_STRUCT_OPS = ("zero", "field", "self-address", "flip", "truncate")
# Edge values for a size, count or address field (8 bytes; narrower fields take the low bytes).
FIELD_EDGES = [0, 1, 8, 16, 0xFFFF, 2**31, 2**32 - 1, 2**63, 2**64 - 1, 2**64 - 16, 10**6]


def _v1_object_headers(path: Path) -> list[int]:
    """File offsets of the v1 object headers (root group, groups, datasets)."""
    offsets: set[int] = set()
    with h5py.File(path, "r") as handle:
        offsets.add(h5py.h5o.get_info(handle.id).addr)
        handle.visititems(lambda _name, obj: offsets.add(h5py.h5o.get_info(obj.id).addr))
    return sorted(offsets)


def h5_structures(path: Path) -> dict[str, list[int]]:
    """Offsets of each structure kind in an HDF5 file (kinds with none are left out)."""
    blob = path.read_bytes()
    found: dict[str, list[int]] = {}
    for kind, signatures in H5_SIGNATURES.items():
        for signature in signatures:
            at = blob.find(signature)
            while at >= 0:
                found.setdefault(kind, []).append(at)
                at = blob.find(signature, at + 1)
    with contextlib.suppress(OSError, RuntimeError, ValueError, KeyError):
        v1 = [a for a in _v1_object_headers(path) if 0 < a < len(blob) and blob[a] == 1]
        if v1:
            found["ohdr-v1"] = v1
    return found


def _gcol_objects(blob: bytes, start: int) -> list[int]:
    """Offsets of the object headers in the global heap collection at ``start``."""
    end = min(len(blob), start + struct.unpack_from("<Q", blob, start + 8)[0])
    at, out = start + 16, []
    while at + 16 <= end and len(out) < 4096:
        out.append(at)
        index, _, _, size = struct.unpack_from("<HHIQ", blob, at)
        need = size if index == 0 else 16 + -(-size // 8) * 8
        if need <= 0:
            break
        at += need
    return out


def _v1_messages(blob: bytes, start: int) -> list[int]:
    """Offsets of the message headers in the v1 object header at ``start`` (first chunk)."""
    count, _, size = struct.unpack_from("<HII", blob, start + 2)
    at, end, out = start + 16, min(len(blob), start + 16 + size), []
    while at + 8 <= end and len(out) < min(count, 256):
        out.append(at)
        at += 8 + struct.unpack_from("<H", blob, at + 2)[0]
    return out


def _field_offsets(blob: bytes, kind: str, start: int) -> list[tuple[int, int]]:
    """(offset, width) of the fields that steer libhdf5's walk of the structure at ``start``."""
    if kind == "gcol":  # collection size; each object's index and size
        fields = [(start + 8, 8)]
        for obj in _gcol_objects(blob, start):
            fields += [(obj, 2), (obj + 8, 8)]
        return fields
    if kind == "heap":  # data segment size, free-list head, data segment address
        return [(start + 8, 8), (start + 16, 8), (start + 24, 8)]
    if kind == "btree-v1":
        # type, level, entries used, siblings, then alternating keys and child addresses
        # (8-byte keys: group nodes; dataset chunk keys are longer, then offsets are approximate)
        fields = [(start + 4, 1), (start + 5, 1), (start + 6, 2), (start + 8, 8), (start + 16, 8)]
        used = struct.unpack_from("<H", blob, start + 6)[0]
        return fields + [(start + 24 + 8 * i, 8) for i in range(min(2 * used + 1, 33))]
    if kind == "snod":  # symbol count; each entry's name offset and object header address
        fields = [(start + 6, 2)]
        return fields + [(start + 8 + 40 * i + d, 8) for i in range(8) for d in (0, 8)]
    if kind == "ohdr-v1":  # message count, header size; each message's type and size
        fields = [(start + 2, 2), (start + 8, 4)]
        for message in _v1_messages(blob, start):
            fields += [(message, 2), (message + 2, 2)]
        return fields
    return [(start + 4 + 4 * i, w) for i in range(12) for w in (1, 4, 8)]


def _self_address(blob: bytearray, kind: str, start: int, data: st.DataObject) -> None:
    """Point an address field of the structure back at itself (or its object header at a
    continuation of itself): the cycles a walk must not follow forever."""
    if kind == "ohdr-v1":
        messages = _v1_messages(bytes(blob), start)
        if messages:  # a continuation message (0x10) whose block is this very header
            at = messages[data.draw(st.integers(0, len(messages) - 1), label="message")]
            length = struct.unpack_from("<H", blob, at + 2)[0]
            if length >= 16:  # the block: the header itself, or its first chunk of messages
                size = struct.unpack_from("<I", blob, start + 8)[0]
                block = data.draw(st.sampled_from([(start, 16 + size), (start + 16, size)]))
                struct.pack_into("<HHBxxxQQ", blob, at, 0x10, length, 0, *block)
                return
    if blob[start : start + 4] == b"TREE":  # a child pointer at this node or another: a cycle
        used = struct.unpack_from("<H", blob, start + 6)[0]
        used = min(used, 16, (len(blob) - start - 40) // 16)
        if used > 0:
            child = start + 32 + 16 * data.draw(st.integers(0, used - 1), label="child")
            nodes = [start, *(m.start() for m in re.finditer(b"TREE", blob))]
            target = nodes[data.draw(st.integers(0, len(nodes) - 1), label="target node")]
            struct.pack_into("<Q", blob, child, target)
            return
    fields = [f for f in _field_offsets(bytes(blob), kind, start)
              if f[1] == 8 and f[0] + 8 <= len(blob)]  # fmt: skip
    if fields:
        at, _ = fields[data.draw(st.integers(0, len(fields) - 1), label="address field")]
        struct.pack_into("<Q", blob, at, start)


def _checksum_span(blob: bytes, start: int) -> int | None:
    """Bytes covered by the checksum of the v2 structure at ``start`` (the checksum follows
    them), for the layouts known here (object header chunk 0, v2 B-tree header, fractal heap
    header); None otherwise, or if the stored checksum does not match. (8-byte addresses and
    sizes, as h5py writes.)"""
    span = dense_storage_span(blob, start, 8, 8)
    if blob[start : start + 4] == b"OHDR" and start + 7 <= len(blob):
        flags, at = blob[start + 5], start + 6
        at += (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 3)
        span = at + width + int.from_bytes(blob[at : at + width], "little") - start
    if span is None or start + span + 4 > len(blob):
        return None
    stored = struct.unpack_from("<I", blob, start + span)[0]
    return span if lookup3(blob[start : start + span]) == stored else None


def mutate_h5_struct(data: st.DataObject, path: Path) -> str:
    """Corrupt one HDF5 metadata structure of the file in place; returns the mutation's kind
    (``structure-op``) for the record."""
    found = h5_structures(path)
    if not found:
        path.write_bytes(mutate_bytes(data, path.read_bytes()))
        return "none-bytes"
    kind = data.draw(st.sampled_from(sorted(found)), label="structure")
    starts = found[kind]
    start = starts[data.draw(st.integers(0, len(starts) - 1), label="which")]
    op = data.draw(st.sampled_from(H5_STRUCT_OPS), label="struct op")
    blob = bytearray(path.read_bytes())
    span = _checksum_span(bytes(blob), start)
    # A field that a signature in data near the file's end would put past it is not a finding.
    with contextlib.suppress(struct.error, IndexError):
        _apply_struct_op(data, blob, kind, start, op)
    if span and op != "truncate" and data.draw(st.integers(0, 3), label="checksum?") > 0:
        # a matching checksum, so that libhdf5 decodes the damage instead of refusing it
        struct.pack_into("<I", blob, start + span, lookup3(bytes(blob[start : start + span])))
    path.write_bytes(bytes(blob))
    return f"{kind}-{op}"


def _apply_struct_op(data: st.DataObject, blob: bytearray, kind: str, start: int, op: str) -> None:
    if op == "zero":  # what a damaged sector does: 64-byte runs, at or inside the structure
        for _ in range(data.draw(st.integers(1, 3), label="runs")):
            at = start + data.draw(st.integers(0, 255), label="into") // 8 * 8
            blob[at : at + 64] = bytes(len(blob[at : at + 64]))
    elif op == "field":
        for _ in range(data.draw(st.integers(1, 2), label="fields")):
            fields = _field_offsets(bytes(blob), kind, start)
            at, width = fields[data.draw(st.integers(0, len(fields) - 1), label="field")]
            value = data.draw(st.sampled_from(FIELD_EDGES), label="value")
            if at + width <= len(blob):
                blob[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    elif op == "self-address":
        _self_address(blob, kind, start, data)
    elif op == "flip":
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            at = min(len(blob) - 1, start + data.draw(st.integers(0, 63), label="at"))
            blob[at] ^= data.draw(st.integers(1, 255), label="mask")
    else:  # the file ends inside the structure
        del blob[start + data.draw(st.integers(0, 63), label="cut") :]


def _group_plist(dense: bool):
    plist = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    if dense:  # every attribute in dense storage (fractal heap, v2 B-tree), links indexed
        plist.set_attr_phase_change(0, 0)
        plist.set_link_creation_order(h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED)
    return plist


def _copy_tree(source: h5py.Group, target: h5py.Group, dense: bool) -> None:
    for key in source.attrs:
        target.attrs.create(key, source.attrs[key], dtype=source.attrs.get_id(key).dtype)
    for name, obj in source.items():
        if isinstance(obj, h5py.Group):
            group_id = h5py.h5g.create(target.id, name.encode(), gcpl=_group_plist(dense))
            _copy_tree(obj, h5py.Group(group_id), dense)
        else:
            target.create_dataset(name, data=obj[()], dtype=obj.dtype)
            for key in obj.attrs:
                target[name].attrs[key] = obj.attrs[key]


def latest_layout(source: Path, target: Path, dense: bool) -> None:
    """Rewrite an HDF5 file in the newest format with the same content: v2 object headers, and
    with ``dense`` attributes and links in dense storage (fractal heaps, v2 B-trees; a few empty
    groups push the root's links past compact storage), so that mutations reach those
    structures too. (Groups of more than 8 links are dense either way.)"""
    with h5py.File(source, "r") as old, h5py.File(target, "w", libver="latest") as new:
        _copy_tree(old, new, dense)
        for index in range(9 if dense else 0):
            new.create_group(f"_dense{index}")

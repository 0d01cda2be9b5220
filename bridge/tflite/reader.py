"""Read and check a ``.tflite`` flatbuffer with the ``tflite`` schema package; no TVM here.

Flatbuffers are read lazily, so a damaged file surfaces as ``struct.error``/``IndexError``/
``ValueError`` wherever a field is first touched. ``read_tflite`` touches every field the
translation uses (operator codes, tensor shapes and types, buffer sizes, operator tensor
indices) up front, and bounds every declared size, so that translation only ever sees a
structurally sound model and a damaged one ends in ``ModelFileError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from bridge.errors import ModelFileError
from bridge.formats import HEAD_BYTES, kind_of

MAX_RANK = 8
MAX_ELEMENTS = 1 << 31  # per tensor: a larger declared shape is a damaged or hostile file

# TensorType code -> numpy dtype name (the types bridge can hold in memory).
DTYPES = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    6: "bool",
    7: "int16",
    9: "int8",
    10: "float64",
    12: "uint64",
    15: "uint32",
    16: "uint16",
}
TYPE_NAMES = {
    5: "string",
    8: "complex64",
    11: "complex128",
    13: "resource",
    14: "variant",
    17: "int4",
    18: "bfloat16",
}
CUSTOM = 32  # BuiltinOperator.CUSTOM

# Errors the flatbuffers runtime and numpy raise on out-of-range offsets and lengths.
READ_ERRORS = (struct.error, IndexError, ValueError, TypeError, OverflowError, UnicodeDecodeError)


def _builtin_names() -> dict[int, str]:
    from tflite.BuiltinOperator import BuiltinOperator

    return {v: k for k, v in vars(BuiltinOperator).items() if isinstance(v, int)}


@dataclass(frozen=True)
class TensorDesc:
    """A tensor of subgraph 0 as bridge sees it."""

    index: int
    name: str
    shape: tuple[int, ...]
    type_code: int
    buffer: int
    quantized: bool
    sparse: bool

    @property
    def dtype(self) -> str:
        return DTYPES.get(self.type_code) or TYPE_NAMES.get(self.type_code, f"type{self.type_code}")


@dataclass(frozen=True)
class OpDesc:
    """An operator of subgraph 0: its index, name (builtin or custom code) and tensors."""

    index: int
    name: str
    custom: bool
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """One subgraph described: ``index`` 0 is the main graph, others are control-flow bodies."""

    index: int
    tensors: list[TensorDesc]
    ops: list[OpDesc]
    inputs: list[int]
    outputs: list[int]


@dataclass
class TFLiteFile:
    """A checked TFLite model: the raw bytes, the flatbuffer root, and subgraph 0 described
    (``graphs`` describes every subgraph, subgraph 0 first)."""

    path: Path
    data: bytes
    model: object  # tflite.Model
    version: int
    description: str
    tensors: list[TensorDesc]
    ops: list[OpDesc]
    inputs: list[int]
    outputs: list[int]
    buffer_data: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (start, len)
    graphs: list[Graph] = field(default_factory=list)

    @property
    def label(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name.split(".")[0]

    def buffer_bytes(self, index: int) -> memoryview | None:
        """The bytes of buffer ``index`` (inline or appended after the flatbuffer), if any."""
        span = self.buffer_data.get(index)
        if span is None:
            return None
        start, length = span
        return memoryview(self.data)[start : start + length]

    def constant(self, tensor: int) -> np.ndarray | None:
        """The stored value of a dense constant tensor, in its own dtype; None if it has none."""
        desc = self.tensors[tensor]
        raw = self.buffer_bytes(desc.buffer)
        if raw is None or desc.sparse or desc.type_code not in DTYPES:
            return None
        return np.frombuffer(raw, dtype=DTYPES[desc.type_code]).reshape(desc.shape)

    @cached_property
    def consumers(self) -> dict[int, list[int]]:
        """Tensor index -> indices of the operators that read it."""
        table: dict[int, list[int]] = {}
        for op in self.ops:
            for t in op.inputs:
                table.setdefault(t, []).append(op.index)
        return table


def read_tflite(path: str | Path) -> TFLiteFile:
    """Read ``path`` and check its structure; raises ModelFileError for damaged files."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if len(data) < HEAD_BYTES or kind_of(data[:HEAD_BYTES]) != "tflite":
        raise ModelFileError(path, "not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        return _parse(path, data)
    except ModelFileError:
        raise
    except READ_ERRORS as exc:
        raise ModelFileError(path, f"corrupt or truncated TFLite flatbuffer ({exc})") from exc


def _check(ok: bool, path: Path, reason: str) -> None:
    if not ok:
        raise ModelFileError(path, reason)


def _parse(path: Path, data: bytes) -> TFLiteFile:
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    version = model.Version()
    _check(version == 3, path, f"TFLite schema version {version}; only version 3 exists")
    _check(model.SubgraphsLength() >= 1, path, "the model has no subgraph")
    buffer_count = model.BuffersLength()
    buffer_data = _buffers(model, buffer_count, len(data), path)
    names = _builtin_names()
    opcodes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == CUSTOM:
            custom = (code.CustomCode() or b"").decode("utf-8", "replace")
            opcodes.append((custom or "CUSTOM", True))
        else:
            opcodes.append((names.get(builtin, f"BUILTIN_{builtin}"), False))
    graphs = []
    for s in range(model.SubgraphsLength()):  # every subgraph: control flow may call them
        tensors, ops, inputs, outputs = _subgraph(model.Subgraphs(s), opcodes, buffer_count, path)
        graphs.append(Graph(s, tensors, ops, inputs, outputs))
        for t in tensors:
            _check_buffer(t, buffer_data, path)
    main = graphs[0]
    description = (model.Description() or b"").decode("utf-8", "replace")
    return TFLiteFile(
        path,
        data,
        model,
        version,
        description,
        main.tensors,
        main.ops,
        main.inputs,
        main.outputs,
        buffer_data,
        graphs,
    )


def _buffers(model, count: int, size: int, path: Path) -> dict[int, tuple[int, int]]:
    """Buffer index -> (start, length) of its bytes in the file, for non-empty buffers."""
    spans = {}
    for i in range(count):
        buffer = model.Buffers(i)
        offset, length = buffer.Offset(), buffer.Size()
        if offset > 1:  # data appended after the flatbuffer (models over 2 GiB)
            _check(offset + length <= size, path, f"buffer {i} lies past the end of the file")
            spans[i] = (offset, length)
            continue
        n = buffer.DataLength()
        if n:
            start = buffer._tab.Vector(buffer._tab.Offset(4))
            _check(start + n <= size, path, f"buffer {i} lies past the end of the file")
            spans[i] = (start, n)
    return spans


def _subgraph(sg, opcodes, buffer_count: int, path: Path):
    count = sg.TensorsLength()
    tensors = []
    for i in range(count):
        t = sg.Tensors(i)
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        name = (t.Name() or b"").decode("utf-8", "replace") or f"tensor_{i}"
        _check(len(shape) <= MAX_RANK, path, f"tensor {name!r} has rank {len(shape)}")
        _check(all(d >= 0 for d in shape), path, f"tensor {name!r} has shape {list(shape)}")
        _check(
            int(np.prod(shape, dtype=np.float64)) <= MAX_ELEMENTS,
            path,
            f"tensor {name!r} declares {list(shape)}: more than {MAX_ELEMENTS} elements",
        )
        _check(0 <= t.Buffer() < max(buffer_count, 1), path, f"tensor {name!r}: bad buffer index")
        q = t.Quantization()
        quantized = q is not None and q.ScaleLength() > 0
        if quantized:
            _check(
                q.ZeroPointLength() in (0, q.ScaleLength()),
                path,
                f"tensor {name!r}: {q.ScaleLength()} scales but {q.ZeroPointLength()} zero points",
            )
            q.ScaleAsNumpy(), q.ZeroPointAsNumpy()
        tensors.append(
            TensorDesc(i, name, shape, t.Type(), t.Buffer(), quantized, t.Sparsity() is not None)
        )

    def indices(values, what: str, allow_optional: bool) -> tuple[int, ...]:
        out = tuple(int(v) for v in values)
        low = -1 if allow_optional else 0
        _check(all(low <= v < count for v in out), path, f"{what} names a tensor that is not there")
        return out

    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = op.OpcodeIndex()
        _check(0 <= code < len(opcodes), path, f"operator {i} has no operator code {code}")
        name, custom = opcodes[code]
        ins = indices(op.InputsAsNumpy() if op.InputsLength() else [], f"operator {i}", True)
        outs = indices(op.OutputsAsNumpy() if op.OutputsLength() else [], f"operator {i}", False)
        ops.append(OpDesc(i, name, custom, ins, outs))
    inputs = list(indices(sg.InputsAsNumpy() if sg.InputsLength() else [], "an input", False))
    outputs = list(indices(sg.OutputsAsNumpy() if sg.OutputsLength() else [], "an output", False))
    return tensors, ops, inputs, outputs


def _check_buffer(t: TensorDesc, spans: dict[int, tuple[int, int]], path: Path) -> None:
    """A dense constant's bytes must match its shape and type."""
    span = spans.get(t.buffer)
    if span is None or t.sparse or t.type_code not in DTYPES:
        return
    expected = int(np.prod(t.shape, dtype=np.int64)) * np.dtype(DTYPES[t.type_code]).itemsize
    _check(
        span[1] == expected,
        path,
        f"tensor {t.name!r}: buffer holds {span[1]} bytes, shape {list(t.shape)} of {t.dtype} "
        f"needs {expected}",
    )

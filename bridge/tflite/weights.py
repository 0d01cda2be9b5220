"""Weights rewritten at import: what TVM's TFLite frontend cannot take as stored.

- ``DEQUANTIZE`` and ``DENSIFY`` of constants are folded: their outputs become float32
  constants and the operators disappear (float16 models, int8-weight models that dequantize
  explicitly, sparse weights).
- Dynamic-range ("hybrid") operators, float activations with int8 weights, get their weights
  dequantized to float32: they then compute in float, which is what LiteRT's hybrid kernels
  approximate (they quantize activations on the fly; see the README for the difference).
- Float16 constants read directly by float32 operators become float32.

Full-integer operators (quantized activations) keep their quantized weights: TVM's frontend
lowers them to dequantize -> float operator -> quantize.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bridge.errors import ModelFileError
from bridge.tflite.reader import TFLiteFile


@dataclass
class Rewrites:
    """Tensor index -> replacement constant (float32), and operator indices to drop."""

    constants: dict[int, np.ndarray] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)


def quantization(source: TFLiteFile, tensor: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(scale, zero_point, axis) of a quantized tensor of subgraph 0."""
    q = source.model.Subgraphs(0).Tensors(tensor).Quantization()
    if q is None or not q.ScaleLength():
        raise ModelFileError(source.path, f"tensor {tensor} is quantized but has no scale")
    scale = q.ScaleAsNumpy().astype(np.float32)
    zero_point = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1, np.int64)
    return scale, np.asarray(zero_point, np.int64), int(q.QuantizedDimension())


def dequantize(value: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int):
    """float32 (value - zero_point) * scale, per tensor or along ``axis``."""
    shape = [1] * value.ndim
    if scale.size > 1:
        if not 0 <= axis < value.ndim or value.shape[axis] != scale.size:
            raise ValueError(f"{scale.size} scales for axis {axis} of shape {list(value.shape)}")
        shape[axis] = scale.size
    zero = zero_point.reshape(shape) if zero_point.size > 1 else zero_point.reshape(())
    centred = value.astype(np.float32) - zero.astype(np.float32)
    return (centred * scale.reshape(shape if scale.size > 1 else ())).astype(np.float32)


def densify(source: TFLiteFile, tensor: int) -> np.ndarray:
    """A sparse constant (TFLite sparsity: traversal order, block map, CSR dimensions) as a
    dense array; uses TVM's reference decoder of the format."""
    from tvm.relax.frontend.tflite.tflite_frontend import prepare_dense_matrix_from_sparse

    desc = source.tensors[tensor]
    raw = source.buffer_bytes(desc.buffer)
    values = np.frombuffer(raw if raw is not None else b"", dtype=desc.dtype)
    flat = source.model.Subgraphs(0).Tensors(tensor)
    _, dense = prepare_dense_matrix_from_sparse(flat, values, desc.dtype)
    return dense


def plan(source: TFLiteFile) -> Rewrites:
    """Decide the rewrites for subgraph 0, in operator order (folds feed later folds)."""
    out = Rewrites()
    graph_inputs = set(source.inputs)

    def value(t: int) -> np.ndarray | None:
        if t in out.constants:
            return out.constants[t]
        if t < 0 or t in graph_inputs:
            return None
        desc = source.tensors[t]
        if desc.sparse:
            return None
        return source.constant(t)

    for op in source.ops:
        if op.name == "DENSIFY" and len(op.inputs) == 1 and source.tensors[op.inputs[0]].sparse:
            out.constants[op.outputs[0]] = densify(source, op.inputs[0])
            out.dropped.add(op.index)
            continue
        if op.name == "DEQUANTIZE" and len(op.inputs) == 1:
            t = op.inputs[0]
            v = value(t)
            if v is not None:
                if v.dtype == np.float16 or v.dtype == np.float32:
                    out.constants[op.outputs[0]] = v.astype(np.float32)
                else:
                    out.constants[op.outputs[0]] = dequantize(v, *quantization(source, t))
                out.dropped.add(op.index)
                continue
        if op.custom:
            continue
        activations = [t for t in op.inputs if t >= 0 and value(t) is None]
        integer = any(source.tensors[t].quantized for t in activations + list(op.outputs))
        if integer:
            continue
        for t in op.inputs:
            if t < 0 or t in out.constants or t in activations:
                continue
            desc = source.tensors[t]
            if desc.quantized and desc.dtype in ("int8", "uint8", "int16"):
                out.constants[t] = dequantize(value(t), *quantization(source, t))
            elif desc.dtype == "float16":
                out.constants[t] = value(t).astype(np.float32)
    return out

"""REDUCE_PROD of an int8 tensor as LiteRT's ``QuantizedReduceProd`` computes it.

LiteRT keeps a running int32 product per output: the first element less the input zero point,
then each next one multiplied in (64-bit) and requantized at once by the per-step scaling
``input_scale / output_scale ** (1 / n)`` (``n`` elements reduced), and a last requantization
by the same scaling before the output zero point. Each requantization is the 64-bit
``MultiplyByQuantizedMultiplier``: the Q31 multiplier rounded to 15 bits, one product, halves
rounded up by a single shift. The elements of one output are taken in memory order. The
intermediate roundings make the result differ from a float product (TVM's path) by a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.script import tirx as T

from bridge.quant import fixed_point
from bridge.quant.tflite_common import activation_tensors, options


@dataclass(frozen=True)
class ProdScaling:
    """The per-step requantization: ``(x * multiplier + 2**(shift - 1)) >> shift``."""

    multiplier: int  # 15-bit
    shift: int


def prod_scaling(scale_in: float, scale_out: float, count: int) -> ProdScaling | None:
    """LiteRT's ``GetQuantProdScaling`` (double ``s_in / s_out ** (1 / n)``) as its 64-bit
    ``MultiplyByQuantizedMultiplier`` applies it, or None where its shift would not be positive."""
    real = float(np.float32(scale_in)) / math.pow(float(np.float32(scale_out)), 1.0 / count)
    quantized = fixed_point.quantize_multiplier(real)
    significand, exponent = int(quantized.significand[0]), int(quantized.shift[0])
    if exponent > 14:
        return None
    reduced = (significand + (1 << 15)) >> 16 if significand < 0x7FFF0000 else 0x7FFF
    return ProdScaling(reduced, 15 - exponent)


def reference_prod(
    rows: np.ndarray, zero_in: int, scaling: ProdScaling, zero_out: int, dtype: str
) -> np.ndarray:
    """The same computation in numpy over the last axis of ``rows`` (for tests)."""
    low, high = fixed_point.INT_RANGE[dtype]
    centred = rows.astype(np.int64) - zero_in
    half = 1 << (scaling.shift - 1)

    def step(x: np.ndarray) -> np.ndarray:
        return ((x * scaling.multiplier + half) >> scaling.shift).astype(np.int32).astype(np.int64)

    acc = centred[..., 0]
    for k in range(1, rows.shape[-1]):
        acc = step(acc * centred[..., k])
    return np.clip(step(acc) + zero_out, low, high).astype(dtype)


def prod_kernel(count: int, zero_in: int, scaling: ProdScaling, zero_out: int, dtype: str):
    """A TIR kernel (rows, count) -> (rows,): each row's product, in order."""
    low, high = fixed_point.INT_RANGE[dtype]
    mult, shift = scaling.multiplier, scaling.shift
    half = 1 << (shift - 1)

    @T.prim_func(private=True, s_tir=True)
    def reduce_prod(var_x: T.handle, var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "op_pattern": 8})
        rows = T.int64()
        x = T.match_buffer(var_x, (rows, count), dtype)
        y = T.match_buffer(var_y, (rows,), dtype)
        for i in range(rows):
            with T.sblock("reduce_prod"):
                row = T.axis.spatial(rows, i)
                T.reads(x[row, 0:count])
                T.writes(y[row])
                acc = T.alloc_buffer((1,), "int64", scope="local")
                acc[0] = T.Cast("int64", x[row, 0]) - T.int64(zero_in)
                for k in range(1, count):
                    wide = acc[0] * (T.Cast("int64", x[row, k]) - T.int64(zero_in))
                    scaled = T.shift_right(wide * T.int64(mult) + T.int64(half), T.int64(shift))
                    acc[0] = T.Cast("int64", T.Cast("int32", scaled))  # int32, wrapping
                last = T.shift_right(acc[0] * T.int64(mult) + T.int64(half), T.int64(shift))
                value = T.Cast("int64", T.Cast("int32", last)) + T.int64(zero_out)
                y[row] = T.Cast(dtype, T.max(T.min(value, T.int64(high)), T.int64(low)))

    return reduce_prod


def convert_reduce_prod(converter, op) -> relax.Expr | None:
    """REDUCE_PROD of an int8 tensor over constant axes with static extents."""
    from tflite.ReducerOptions import ReducerOptions

    quant = activation_tensors(converter, op)
    tensors = converter.get_input_tensors(op)
    if quant is None or len(tensors) != 2 or converter.has_expr(tensors[1].tensor_idx):
        return None
    qx, qy = quant
    if qx.dtype != "int8":  # LiteRT multiplies uint8 raw (no quantized kernel)
        return None
    shape = [int(d) for d in converter.get_tensor_shape(tensors[0])]
    axes = np.atleast_1d(converter.get_tensor_value(tensors[1]))
    axes = sorted({int(a) % len(shape) for a in axes}) if shape else []
    if not axes or any(shape[a] <= 0 for a in axes):
        return None
    count = int(np.prod([shape[a] for a in axes]))
    scaling = prod_scaling(float(qx.scale[0]), float(qy.scale[0]), count)
    if scaling is None or count < 2:  # one element: LiteRT copies (no axis left)
        return None
    bb = converter.bb
    x = converter.get_tensor_expr(tensors[0])
    dims = list(bb.normalize(x).ty.shape.values)
    kept = [a for a in range(len(shape)) if a not in axes]
    ordered = bb.normalize(relax.op.permute_dims(x, kept + axes))
    rows = bb.normalize(relax.op.reshape(ordered, [-1, count]))
    kernel = bb.add_func(prod_kernel(count, qx.zp, scaling, qy.zp, qy.dtype), "reduce_prod")
    out_type = relax.TensorType([rows.ty.shape.values[0]], qy.dtype)
    out = bb.normalize(relax.call_tir(kernel, [rows], out_type))
    keep_dims = bool(options(op, ReducerOptions).KeepDims())
    result = [1 if a in axes else dims[a] for a in range(len(shape)) if keep_dims or a in kept]
    return relax.op.reshape(out, result)

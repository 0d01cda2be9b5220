"""Elementwise integer operators with TFLite's arithmetic: ADD, SUB, MUL and table lookups.

Quantizations are ``(scale, zero_point)`` pairs; ``clamp`` is the fused activation's range in
the output's integers (:func:`bridge.quant.fixed_point.activation_range`).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from bridge.quant import fixed_point

ADD_HEADROOM = 20  # TFLite's left shift for 8-bit ADD operands
Quant = tuple[float, int]
Operand = tuple[relax.Expr, Quant]  # an 8-bit tensor and its (scale, zero_point)


def add(a: Operand, b: Operand, out: Quant, clamp: tuple[int, int], dtype: str) -> relax.Expr:
    """TFLite's integer ADD: each input less its zero point, shifted left by 20 bits and
    scaled to twice the larger input scale (reference rounding), summed, then scaled to the
    output; broadcasting as Relax's ``add``."""
    twice = 2 * np.float64(max(np.float32(a[1][0]), np.float32(b[1][0])))
    scaled = [
        fixed_point.scale_input(
            x, zp, ADD_HEADROOM, fixed_point.quantize_multiplier(np.float64(scale) / twice)
        )
        for x, (scale, zp) in (a, b)
    ]
    real = twice / ((1 << ADD_HEADROOM) * np.float64(out[0]))
    y = fixed_point.multiply_high(relax.op.add(*scaled), fixed_point.quantize_multiplier(real))
    return _finish(y, out[1], clamp, dtype)


def subtract(a: Operand, b: Operand, out: Quant, clamp: tuple[int, int], dtype: str) -> relax.Expr:
    """TFLite's integer SUB: its ADD with the second input's multiplier negated, which is the
    ADD of ``-(b - zp_b)``: ``~b`` (still 8-bit: ``-b - 1`` for int8, ``255 - b`` for uint8)
    with the zero point that makes it so (``-zp_b - 1``, ``255 - zp_b``)."""
    x, (scale, zero_point) = b
    flipped = -int(zero_point) - 1 if dtype == "int8" else 255 - int(zero_point)
    return add(a, (relax.op.bitwise_not(x), (scale, flipped)), out, clamp, dtype)


def multiply(a: Operand, b: Operand, out: Quant, clamp: tuple[int, int], dtype: str) -> relax.Expr:
    """TFLite's integer MUL: the product of the inputs less their zero points, requantized
    by ``scale_a * scale_b / output_scale`` (reference rounding)."""
    centred = [
        relax.op.subtract(relax.op.astype(x, "int32"), relax.const(int(zp), "int32"))
        for x, (_, zp) in (a, b)
    ]
    real = np.float64(a[1][0]) * np.float64(b[1][0]) / np.float64(out[0])
    multiplier = fixed_point.quantize_multiplier(real)
    return fixed_point.requantize(
        relax.op.multiply(*centred), multiplier, int(out[1]), clamp, dtype, "double"
    )


def _finish(y: relax.Expr, zero_point: int, clamp: tuple[int, int], dtype: str) -> relax.Expr:
    if zero_point:
        y = relax.op.add(y, relax.const(int(zero_point), "int64"))
    return relax.op.astype(relax.op.clip(y, int(clamp[0]), int(clamp[1])), dtype)


def lookup(x: relax.Expr, table: np.ndarray | relax.Expr, low: int) -> relax.Expr:
    """``table[x - low]``: any unary function of an 8-bit tensor as a 256-entry table (a
    numpy array, or a Relax tensor computed in the graph)."""
    index = relax.op.astype(x, "int32")
    if low:
        index = relax.op.subtract(index, relax.const(int(low), "int32"))
    values = table if isinstance(table, relax.Expr) else relax.const(table)
    return relax.op.take(values, index, axis=0, mode="clip")  # in range anyway

"""TFLite's fixed-point requantization: constants computed at compile time, Relax epilogues.

A real multiplier ``m = input_scale * weight_scale / output_scale`` becomes a Q31 significand
and a power-of-two exponent (TFLite's ``QuantizeMultiplier``). An int32 accumulator ``acc``
is then requantized in one of the two roundings TFLite ships:

* ``"double"``: the reference kernels' ``MultiplyByQuantizedMultiplier`` — a saturating
  rounding doubling high multiply (round half away from zero) followed by a rounding divide by
  a power of two (round half away from zero);
* ``"double_up"``: the same two steps with both roundings half up (toward +inf): the high
  multiply ``(x * m + 2**30) >> 31`` and the rounding right shift ``(h + 2**(e-1)) >> e`` of
  the SIMD kernels (NEON's ``vqrdmulh``/``vrshl`` and the x86 kernels that mirror them); LiteRT's
  builtin int8 convolutions and fully connected layers round this way on x86;
* ``"single"``: ruy's reference (and ``TFLITE_SINGLE_ROUNDING``'s) one rounding shift of the
  64-bit product, round half up.

The epilogue is plain elementwise Relax arithmetic on int64 so that it fuses into the kernel
producing ``acc`` (the convolution's write-back), like the float epilogues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

ROUNDINGS = ("double", "double_up", "single")
INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


@dataclass(frozen=True)
class Multiplier:
    """Per-channel (or one) Q31 significands and exponents (positive: shift left)."""

    significand: np.ndarray  # int64, in [2**30, 2**31) or 0
    shift: np.ndarray  # int64, in [-31, 30]


def quantize_multiplier(real: np.ndarray | float) -> Multiplier:
    """``real ~= significand * 2**(shift - 31)``, as TFLite's ``QuantizeMultiplier``."""
    values = np.atleast_1d(np.asarray(real, dtype=np.float64))
    significands, shifts = [], []
    for value in values:
        if value == 0.0:
            significands.append(0)
            shifts.append(0)
            continue
        fraction, exponent = np.frexp(value)
        q = int(round_half_away(fraction * (1 << 31)))
        if q == 1 << 31:
            q //= 2
            exponent += 1
        if exponent < -31:  # too small to represent: the product is 0
            q, exponent = 0, 0
        if exponent > 30:
            q, exponent = (1 << 31) - 1, 30
        significands.append(q)
        shifts.append(int(exponent))
    return Multiplier(np.array(significands, np.int64), np.array(shifts, np.int64))


def round_half_away(value):
    """``std::round``: halves away from zero."""
    value = np.asarray(value, dtype=np.float64)
    return np.sign(value) * np.floor(np.abs(value) + 0.5)


def activation_range(activation: str, scale: float, zero_point: int, dtype: str) -> tuple[int, int]:
    """TFLite's ``CalculateActivationRangeQuantized``: the fused activation's clamp in the
    output's integers (``activation``: NONE, RELU, RELU6, RELU_N1_TO_1)."""
    qmin, qmax = INT_RANGE[dtype]

    def quantize(x: float) -> int:
        return zero_point + int(round_half_away(np.float32(x) / np.float32(scale)))

    if activation == "NONE":
        return qmin, qmax
    if activation == "RELU":
        return max(qmin, zero_point), qmax
    if activation == "RELU6":
        return max(qmin, zero_point), min(qmax, quantize(6.0))
    if activation == "RELU_N1_TO_1":
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    raise ValueError(f"fused activation {activation} has no integer clamp")


def _const(values: np.ndarray, channels: int, dtype: str = "int64") -> relax.Expr:
    """A per-channel constant broadcast along the last axis (a scalar when all agree)."""
    values = np.asarray(values).astype(dtype)
    if values.size == 1 or np.all(values == values.flat[0]):
        return relax.const(values.flat[0].item(), dtype)
    return relax.const(np.broadcast_to(values, (channels,)).copy(), dtype)


def requantize(
    acc: relax.Expr,
    multiplier: Multiplier,
    zero_point: int,
    clamp: tuple[int, int],
    out_dtype: str,
    rounding: str = "double",
) -> relax.Expr:
    """``clamp(round(acc * m) + zero_point)`` as ``out_dtype``; ``acc`` is int32 with the
    channels (the multipliers' axis) last."""
    channels = multiplier.significand.size
    x = relax.op.astype(acc, "int64")
    m = multiplier.significand
    if rounding == "single":
        total = 31 - multiplier.shift
        product = relax.op.multiply(x, _const(m, channels))
        rounded = relax.op.add(product, _const(np.left_shift(1, total - 1), channels))
        y = relax.op.right_shift(rounded, _const(total, channels))
    elif rounding in ("double", "double_up"):
        left = np.maximum(multiplier.shift, 0)
        right = np.maximum(-multiplier.shift, 0)
        if np.any(left):
            x = relax.op.left_shift(x, _const(left, channels))
        product = relax.op.multiply(x, _const(m, channels))
        if rounding == "double":
            y = _rounding_high_mul(product)
            if np.any(right):
                y = _rounding_shift(y, right, channels)
        else:
            y = _shift_half_up(product, np.full_like(right, 31), channels)
            if np.any(right):
                y = _shift_half_up(y, right, channels)
    else:
        raise ValueError(f"rounding {rounding!r} (expected one of {ROUNDINGS})")
    if zero_point:
        y = relax.op.add(y, relax.const(zero_point, "int64"))
    y = relax.op.clip(y, int(clamp[0]), int(clamp[1]))
    return relax.op.astype(y, out_dtype)


def _rounding_high_mul(product: relax.Expr) -> relax.Expr:
    """``SaturatingRoundingDoublingHighMul`` given the 64-bit product: add the nudge
    (+2**30, or 1 - 2**30 below zero), then divide by 2**31 truncating toward zero."""
    zero = relax.const(0, "int64")
    negative = relax.op.less(product, zero)
    nudged = relax.op.add(
        product,
        relax.op.where(
            negative, relax.const(1 - (1 << 30), "int64"), relax.const(1 << 30, "int64")
        ),
    )
    shift = relax.const(31, "int64")
    down = relax.op.right_shift(nudged, shift)  # floor
    up = relax.op.negative(relax.op.right_shift(relax.op.negative(nudged), shift))  # ceil
    return relax.op.where(relax.op.less(nudged, zero), up, down)


def _rounding_shift(x: relax.Expr, exponent: np.ndarray, channels: int) -> relax.Expr:
    """``RoundingDivideByPOT``: ``x / 2**exponent``, halves away from zero."""
    mask = (np.left_shift(1, exponent) - 1).astype(np.int64)
    remainder = relax.op.bitwise_and(x, _const(mask, channels))
    negative = relax.op.astype(relax.op.less(x, relax.const(0, "int64")), "int64")
    threshold = relax.op.add(_const(mask >> 1, channels), negative)
    carry = relax.op.astype(relax.op.greater(remainder, threshold), "int64")
    return relax.op.add(relax.op.right_shift(x, _const(exponent, channels)), carry)


def _shift_half_up(x: relax.Expr, exponent: np.ndarray, channels: int) -> relax.Expr:
    """``(x + 2**(e-1)) >> e`` (``x`` itself where ``e`` is 0)."""
    half = np.where(exponent > 0, np.left_shift(1, np.maximum(exponent, 1) - 1), 0)
    return relax.op.right_shift(relax.op.add(x, _const(half, channels)), _const(exponent, channels))

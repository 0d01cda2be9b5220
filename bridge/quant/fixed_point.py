"""TFLite's fixed-point requantization: constants computed at compile time, Relax epilogues.

A real multiplier ``m = input_scale * weight_scale / output_scale`` becomes a Q31 significand
and a power-of-two exponent (TFLite's ``QuantizeMultiplier``). An int32 accumulator ``acc``
is then requantized in one of the two roundings TFLite ships:

* ``"double"``: the reference kernels' ``MultiplyByQuantizedMultiplier`` — a saturating
  rounding doubling high multiply (``(x * m + 2**30) >> 31``: its nudge-and-truncate rounds
  halves up for both signs) followed by a rounding divide by a power of two (halves away
  from zero);
* ``"double_up"``: the same high multiply, then a rounding right shift with halves up,
  ``(h + 2**(e-1)) >> e`` (NEON's ``vrshl`` and the x86 kernels that mirror it); LiteRT's
  builtin int8 convolutions and fully connected layers round this way on x86;
* ``"single"``: ruy's reference (and ``TFLITE_SINGLE_ROUNDING``'s) one rounding shift of the
  64-bit product, round half up.

The epilogue is plain elementwise Relax arithmetic on int64 so that it fuses into the kernel
producing ``acc`` (the convolution's write-back), like the float epilogues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

ROUNDINGS = ("double", "double_up", "single")
_ADD = tvm.ir.Op.get("relax.add")
HIGH_HALF = 32  # shifts from here on split into the high half of the int64 and an int32 rest
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
    rounding: str | tuple[str, ...] = "double",
) -> relax.Expr:
    """``clamp(round(acc * m) + zero_point)`` as ``out_dtype``; ``acc`` is int32 with the
    channels (the multipliers' axis) last. ``rounding`` may also name one of ``"double"`` and
    ``"double_up"`` per channel (:func:`simd_roundings`).

    Every rounding is one 64-bit product, one add and one arithmetic right shift
    (:func:`fused_rounding`): the high multiply's ``>> 31``, the power-of-two divide and the
    zero point fold into one per-channel addend and shift, exactly. A shift of 32 or more
    (multipliers below 0.5, as in nearly every convolution) takes the product's high half and
    shifts the rest in int32 (:func:`_shift_in_int32`)."""
    if isinstance(rounding, str):
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding {rounding!r} (expected one of {ROUNDINGS})")
        channels = multiplier.significand.size
        roundings = (rounding,) * channels
    else:
        roundings = tuple(rounding)
        channels = len(roundings)
        if set(roundings) - {"double", "double_up"}:
            raise ValueError(f"per-channel rounding {sorted(set(roundings))} (double or double_up)")
    significands = np.broadcast_to(multiplier.significand, (channels,)).astype(np.int64)
    shifts = np.broadcast_to(multiplier.shift, (channels,)).astype(np.int64)
    left = np.where([r == "single" for r in roundings], 0, np.maximum(shifts, 0))
    addend, total, away, zero_after = fused_rounding(shifts, roundings, zero_point)
    acc, offset = _peel_bias(acc, significands, addend, left)
    product = relax.op.multiply(relax.op.astype(acc, "int64"), _const(significands, channels))
    if np.any(left):
        product = relax.op.left_shift(product, _const(left, channels))
    y = relax.op.add(product, _const(addend + offset, channels))
    if np.any(away):
        # halves away from zero: one less (2**31 before the shift) where the high product is
        # negative, i.e. where product + 2**30 is
        nudged = relax.op.add(product, _const(offset + (1 << 30), channels))
        sign = relax.op.right_shift(nudged, relax.const(63, "int64"))
        y = relax.op.subtract(y, relax.op.bitwise_and(sign, _const(away << 31, channels)))
    if np.all(total >= HIGH_HALF):
        return _shift_in_int32(y, total, zero_after, clamp, out_dtype)
    y = relax.op.right_shift(y, _const(total, channels))
    if zero_after:
        y = relax.op.add(y, relax.const(int(zero_after), "int64"))
    y = relax.op.clip(y, int(clamp[0]), int(clamp[1]))
    return relax.op.astype(y, out_dtype)


def _shift_in_int32(
    y: relax.Expr, total: np.ndarray, zero_after: int, clamp: tuple[int, int], out_dtype: str
) -> relax.Expr:
    """``clamp(y >> total + zero_after)`` as ``floor(floor(y / 2**32) / 2**(total - 32))``:
    exact (a floor of a floor by powers of two), and ``y >> 32`` of any int64 fits in int32,
    so the rest of the epilogue runs on 16 int32 lanes instead of 2 x 8 int64 (x86, per 16
    outputs: the high halves taken by two ``vpsrlq $32`` and narrowed, then one ``vpsravd``
    and a saturating ``vpmovsdb`` store, where the int64 path took two ``vpsravq`` and four
    64-bit clamps before narrowing)."""
    high = relax.op.astype(relax.op.right_shift(y, relax.const(HIGH_HALF, "int64")), "int32")
    rest = total - HIGH_HALF
    if np.any(rest):
        high = relax.op.right_shift(high, _const(rest, rest.size, "int32"))
    if zero_after:
        high = relax.op.add(high, relax.const(int(zero_after), "int32"))
    return relax.op.astype(relax.op.clip(high, int(clamp[0]), int(clamp[1])), out_dtype)


def _peel_bias(
    acc: relax.Expr, significands: np.ndarray, addend: np.ndarray, left: np.ndarray
) -> tuple[relax.Expr, np.ndarray]:
    """``acc = x + bias`` with a constant per-channel int32 ``bias`` (the integer kernels'
    folded bias) as ``(x, bias * significand)``: ``(x + b) * m + a == x * m + (b * m + a)``
    in int64, so the bias joins the rounding's addend instead of being added per element.
    Not where a channel shifts left or the addend would pass 2**62; else ``(acc, 0)``."""
    none = (acc, np.zeros_like(addend))
    if not (isinstance(acc, relax.Call) and acc.op.same_as(_ADD) and not np.any(left)):
        return none
    x, bias = acc.args
    if not isinstance(bias, tvm.ir.expr.Constant) or str(bias.value.dtype) != "int32":
        return none
    values = bias.value.numpy()
    if values.ndim > 1 or values.size not in (1, addend.size):
        return none
    offset = values.astype(np.int64).reshape(-1) * significands
    if np.abs(offset).max() + np.abs(addend).max() >= 1 << 62:
        return none
    return x, np.broadcast_to(offset, addend.shape)


def fused_rounding(
    shifts: np.ndarray, roundings: tuple[str, ...], zero_point: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per channel ``(addend, total, away)``, and the zero point left to add after the shift:
    ``round(p * 2**(shift - 31)) + zp == (p + addend - away * 2**31 * [p + 2**30 < 0]) >>
    total`` for the 64-bit product ``p = (acc << max(shift, 0)) * significand``.

    ``floor((floor(a / 2**31) + k) / 2**e) == floor((a + k * 2**31) / 2**(31 + e))`` for any
    integer ``k``, so the high multiply's rounding (``+ 2**30``), the divide's (``+ 2**(e -
    1)``, less one below zero for halves away from zero) and the zero point (``+ zp * 2**(31
    + e)``, where that stays below 2**62 and no channel shifts left, as a left-shifted
    product may wrap) are one addend. ``single`` rounds the product once (``+ 2**(total -
    1)``) and takes no left shift."""
    shifts = np.asarray(shifts, np.int64)
    right = np.maximum(-shifts, 0)
    single = np.array([r == "single" for r in roundings])
    total = np.where(single, 31 - shifts, 31 + right)
    half = np.left_shift(np.int64(1), total - 1)
    divide = np.where(right > 0, np.left_shift(np.int64(1), 30 + right), 0)
    addend = np.where(single, half, (1 << 30) + divide)
    away = np.array([r == "double" for r in roundings]) & (right > 0)
    zero = [int(zero_point) << int(t) for t in total]
    fits = max(abs(int(a)) + abs(z) for a, z in zip(addend, zero, strict=True)) < 1 << 62
    if fits and not np.any((shifts > 0) & ~single):
        addend, zero_point = addend + np.array(zero, np.int64), 0
    return addend.astype(np.int64), total.astype(np.int64), away.astype(np.int64), zero_point


def simd_roundings(channels: int, block: int = 16) -> tuple[str, ...]:
    """Per-channel rounding of a LiteRT kernel that requantizes ``block`` channels at a time
    with NEON's rounding shift (``vrshlq``, halves up; on x86 through NEON_2_SSE) and the
    channels left over with the scalar ``MultiplyByQuantizedMultiplier`` (halves away from
    zero): int8 MEAN's fast path for spatial means (16, at one thread) and the general
    DEPTHWISE_CONV_2D kernel's per-channel ``Quantize`` (8)."""
    simd = channels - channels % block
    return ("double_up",) * simd + ("double",) * (channels - simd)


def mean_fast_path(
    input_q: tuple[float, int], output_q: tuple[float, int], count: int
) -> tuple[Multiplier, int]:
    """(multiplier, bias) of LiteRT's optimized int8/uint8 MEAN over height and width with
    ``keep_dims`` (``optimized_integer_ops::Mean``): the raw sum (zero point not subtracted)
    times ``input_scale / (count * output_scale)``, computed in float32, plus
    ``output_zero_point - round(input_zero_point * input_scale / output_scale)`` (float32,
    halves away from zero)."""
    (scale_in, zero_in), (scale_out, zero_out) = input_q, output_q
    f32 = np.float32
    real = f32(scale_in) / (f32(count) * f32(scale_out))
    shifted = f32(f32(zero_in) * f32(scale_in)) / f32(scale_out)
    shifted = shifted + f32(0.5) if shifted > 0 else shifted - f32(0.5)
    return quantize_multiplier(np.float64(real)), int(zero_out) - int(np.trunc(shifted))


def mean_reference_multiplier(scale_in: float, scale_out: float, count: int) -> Multiplier:
    """LiteRT's reference quantized MEAN (``QuantizedMeanOrSum``): ``input_scale /
    output_scale`` as a Q31 multiplier, then divided by ``count`` in integers — shifted left
    by ``floor(log2(count))`` (at most 32, and at most 31 + its exponent) and divided
    truncating; applied to the sum less the zero points with reference rounding."""
    base = quantize_multiplier(np.float64(np.float32(scale_in)) / np.float64(np.float32(scale_out)))
    significand, exponent = int(base.significand[0]), int(base.shift[0])
    shift = min(int(count).bit_length() - 1, 32, 31 + exponent)
    significand = (significand << shift) // int(count)
    return Multiplier(np.array([significand], np.int64), np.array([exponent - shift], np.int64))


def _rounding_high_mul(product: relax.Expr) -> relax.Expr:
    """``SaturatingRoundingDoublingHighMul`` given the 64-bit product: TFLite adds a nudge
    (+2**30, or 1 - 2**30 below zero) and divides by 2**31 truncating, which is rounding half
    up for both signs: ``(product + 2**30) >> 31`` (one use of ``product``, so the epilogue
    stays linear in size when the schedule inlines it)."""
    return relax.op.right_shift(
        relax.op.add(product, relax.const(1 << 30, "int64")), relax.const(31, "int64")
    )


def _rounding_shift(
    x: relax.Expr, exponent: np.ndarray, channels: int, away: np.ndarray | None = None
) -> relax.Expr:
    """``RoundingDivideByPOT``: ``x / 2**exponent``, halves away from zero, as
    ``(x + 2**(e-1) - [x < 0]) >> e`` (``x`` itself where ``e`` is 0); channels where
    ``away`` is 0 round halves up instead (no ``- [x < 0]``)."""
    half = np.where(exponent > 0, np.left_shift(1, np.maximum(exponent, 1) - 1), 0)
    away = (exponent > 0).astype(np.int64) if away is None else np.asarray(away, np.int64)
    sign = relax.op.right_shift(x, relax.const(63, "int64"))  # -1 below zero, else 0
    down = relax.op.bitwise_and(sign, _const(away, channels))
    biased = relax.op.subtract(relax.op.add(x, _const(half, channels)), down)
    return relax.op.right_shift(biased, _const(exponent, channels))


def float_table(function, scale_in, zero_in, scale_out, zero_out, dtype: str) -> np.ndarray:
    """Every output of a unary function on 8-bit integers, as TFLite's ``LUTPopulate``
    computes its lookup tables: float32 arithmetic, ``std::round``, clamped to ``dtype``.
    Indexed by ``value - min(dtype)``."""
    low, high = INT_RANGE[dtype]
    values = np.arange(low, high + 1, dtype=np.int32)
    real = np.float32(scale_in) * (values - np.int32(zero_in)).astype(np.float32)
    transformed = np.asarray(function(real.astype(np.float32)), np.float32)
    scaled = transformed * (np.float32(1) / np.float32(scale_out))
    rounded = round_half_away(scaled).astype(np.int64) + int(zero_out)
    return np.clip(rounded, low, high).astype(dtype)


def scale_input(
    x: relax.Expr, zero_point: int, left_shift: int, multiplier: Multiplier
) -> relax.Expr:
    """``MultiplyByQuantizedMultiplierSmallerThanOneExp((x - zp) << left_shift)`` of TFLite's
    integer ADD: each input brought to a common scale with ``left_shift`` bits of headroom,
    int64."""
    x = relax.op.astype(x, "int64")
    if zero_point:
        x = relax.op.subtract(x, relax.const(int(zero_point), "int64"))
    return multiply_high(relax.op.left_shift(x, relax.const(left_shift, "int64")), multiplier)


def multiply_high(x: relax.Expr, multiplier: Multiplier) -> relax.Expr:
    """``x * m``, reference double rounding, for one multiplier (shift <= 0), int64 in/out."""
    y = _rounding_high_mul(relax.op.multiply(x, _const(multiplier.significand, 1)))
    right = np.maximum(-multiplier.shift, 0)
    return _rounding_shift(y, right, 1) if np.any(right) else y


def requantize_table(scale_in, zero_in, dtype_in, scale_out, zero_out, dtype_out) -> np.ndarray:
    """Every 8-bit value requantized to another scale and zero point as TFLite's QUANTIZE
    (``Requantize``): ``(x - zp_in) * (scale_in / scale_out)`` by the fixed-point multiplier
    (reference rounding), plus ``zp_out``, clamped. Indexed by ``x - min(dtype_in)``."""
    low, high = INT_RANGE[dtype_in]
    centred = np.arange(low, high + 1, dtype=np.int64) - int(zero_in)
    mul = quantize_multiplier(np.float64(np.float32(scale_in)) / np.float64(np.float32(scale_out)))
    left = max(int(mul.shift[0]), 0)
    right = max(-int(mul.shift[0]), 0)
    high_mul = (centred * 2**left * int(mul.significand[0]) + 2**30) >> 31
    half = (1 << right) >> 1
    scaled = (high_mul + half - ((high_mul < 0) & (right > 0))) >> right
    return np.clip(scaled + int(zero_out), *INT_RANGE[dtype_out]).astype(dtype_out)


def rescale_table(scale_in, zero_in, dtype_in, scale_out, zero_out, dtype_out) -> np.ndarray:
    """Every 8-bit value brought to another scale as TFLite's CONCATENATION does for an input
    whose quantization differs from the output's: ``round(x * s + b) + zp_out`` in float32
    with ``s = scale_in / scale_out`` and ``b = -zp_in * s``. Indexed by ``x - min(dtype_in)``."""
    low, high = INT_RANGE[dtype_in]
    values = np.arange(low, high + 1).astype(np.float32)
    scale = np.float32(scale_in) * (np.float32(1) / np.float32(scale_out))
    bias = np.float32(-int(zero_in)) * scale
    rounded = round_half_away((values * scale + bias).astype(np.float32)) + int(zero_out)
    return np.clip(rounded, *INT_RANGE[dtype_out]).astype(dtype_out)

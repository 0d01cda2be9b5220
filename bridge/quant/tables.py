"""TFLite's integer activations on 8-bit tensors, evaluated in numpy on every input value.

An activation of one 8-bit tensor is a function of 256 values, so bridge computes it at compile
time as a 256-entry table (indexed by ``value - min(dtype)``) by replaying LiteRT's own integer
arithmetic here, and the compiled model only looks values up. Each function mirrors the kernel
LiteRT 2.3 runs on x86 (its float32 constants included, as the C++ computes them); the tests
compare every table with LiteRT's output on all 256 inputs.
"""

from __future__ import annotations

import math

import numpy as np

from bridge.quant.fixed_point import INT_RANGE, Multiplier, quantize_multiplier, round_half_away

F32 = np.float32


def _values(dtype: str) -> np.ndarray:
    low, high = INT_RANGE[dtype]
    return np.arange(low, high + 1, dtype=np.int64)


def srdhm(a: np.ndarray, b: int, bits: int = 32) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` for ``bits``-bit operands: ``a * b *
    2 / 2**bits`` with the nudge rounding (halves away from zero), truncated like C."""
    a = np.asarray(a, np.int64)
    product = a * int(b)
    nudge = np.where(product >= 0, 1 << (bits - 2), 1 - (1 << (bits - 2)))
    total = product + nudge
    out = np.sign(total) * (np.abs(total) >> (bits - 1))
    low = -(1 << (bits - 1))
    return np.where((a == low) & (b == low), (1 << (bits - 1)) - 1, out)


def rounding_divide_by_pot(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2**exponent``, halves away from zero."""
    x = np.asarray(x, np.int64)
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: Multiplier) -> np.ndarray:
    """TFLite's ``MultiplyByQuantizedMultiplier`` (double rounding), one multiplier."""
    shift = int(multiplier.shift[0])
    left, right = max(shift, 0), max(-shift, 0)
    high = srdhm(np.asarray(x, np.int64) * (1 << left), int(multiplier.significand[0]))
    return rounding_divide_by_pot(high, right)


def _multiplier(real) -> Multiplier:
    """``QuantizeMultiplier`` of a value C++ computed in float32 (then widened to double)."""
    return quantize_multiplier(np.float64(F32(real)))


def _finish(y: np.ndarray, zero_point: int, dtype: str) -> np.ndarray:
    return np.clip(y + int(zero_point), *INT_RANGE[dtype]).astype(dtype)


def relu_table(act: tuple[float, float], s_in, z_in, s_out, z_out, dtype: str) -> np.ndarray:
    """RELU / RELU6 / RELU_N1_TO_1 (``QuantizedReluX``): the input rescaled to the
    output's scale, clamped to ``act`` (float bounds, ``inf`` for none) in output integers."""
    low, high = INT_RANGE[dtype]
    hi = high
    if math.isfinite(act[1]):
        hi = min(high, int(z_out) + int(round_half_away(F32(act[1]) / F32(s_out))))
    lo = max(low, int(z_out) + int(round_half_away(F32(act[0]) / F32(s_out))))
    scaled = multiply_by_quantized_multiplier(
        _values(dtype) - int(z_in), _multiplier(F32(s_in) / F32(s_out))
    )
    return np.clip(scaled + int(z_out), lo, hi).astype(dtype)


def leaky_relu_table(alpha: float, s_in, z_in, s_out, z_out, dtype: str) -> np.ndarray:
    """LEAKY_RELU (``QuantizeLeakyRelu``): identity and alpha multipliers by the input's sign."""
    centred = _values(dtype) - int(z_in)
    identity = _multiplier(F32(s_in) / F32(s_out))
    slope = _multiplier(F32(s_in) * F32(alpha) / F32(s_out))
    y = np.where(
        centred >= 0,
        multiply_by_quantized_multiplier(centred, identity),
        multiply_by_quantized_multiplier(centred, slope),
    )
    return _finish(y, z_out, dtype)


def _downscale_int16(multiplier: int) -> int:
    """``DownScaleInt32ToInt16Multiplier``."""
    if multiplier >= (1 << 31) - 1 - (1 << 15):
        return (1 << 15) - 1
    return (multiplier + (1 << 15)) >> 16


def _saturate16(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -(1 << 15), (1 << 15) - 1)


def hard_swish_table(s_in, z_in, s_out, z_out, dtype: str) -> np.ndarray:
    """HARD_SWISH (TFLite's reference int8 kernel, 16-bit fixed point)."""
    hires_scale = F32(1.0 / 128.0) * F32(s_in)
    out_mul = _multiplier(hires_scale / F32(s_out))
    out_fixed, out_exp = _downscale_int16(int(out_mul.significand[0])), int(out_mul.shift[0])
    if out_exp > 0:
        raise ValueError("hard_swish output multiplier above 1")
    relu_mul = _multiplier(hires_scale / F32(3.0 / 32768.0))
    relu_fixed, relu_exp = _downscale_int16(int(relu_mul.significand[0])), int(relu_mul.shift[0])

    hires = (_values(dtype) - int(z_in)) * 128  # fits int16: |x - zp| <= 255
    preshift = srdhm(hires, out_fixed, 16)
    reluish = hires
    if relu_exp > 0:
        reluish = _saturate16(reluish * (1 << (relu_exp - 1)))
    reluish = srdhm(reluish, relu_fixed, 16)
    if relu_exp > 0:
        reluish = _saturate16(reluish * 2)
    if relu_exp < 0:
        reluish = rounding_divide_by_pot(reluish, -relu_exp)
    reluish = (reluish + (1 << 15)) >> 1
    product = reluish * preshift  # SaturatingDoublingHighMul: truncates toward zero
    doubled = np.sign(product) * (np.abs(product) >> 15)
    y = rounding_divide_by_pot(doubled, -out_exp)
    return _finish(y, z_out, dtype)


def lut_table(function, s_in, z_in, s_out, z_out, dtype: str) -> np.ndarray:
    """TFLite's ``LUTPopulate``: ``function`` of each dequantized value (float32), rescaled and
    rounded half away from zero; ``function`` maps one float32 to a float (Python scalar)."""
    inverse = F32(1.0) / F32(s_out)
    out = []
    for value in _values(dtype):
        real = F32(s_in) * F32(int(value) - int(z_in))
        transformed = F32(function(real))
        rescaled = round_half_away(F32(transformed * inverse))
        out.append(int(F32(rescaled) + F32(int(z_out))))
    return np.clip(np.array(out, np.int64), *INT_RANGE[dtype]).astype(dtype)


SQRT1_2 = 0.70710678118654752440
SQRT_2_OVER_PI = 0.79788456080286535588  # M_2_SQRTPI * M_SQRT1_2


def gelu(x: np.float32) -> float:
    """TFLite's ``GeluTransform``: ``0.5f * x * (1 + erf(x * M_SQRT1_2))``; the erf argument
    and everything after ``0.5f * x`` is double, the result float."""
    half = F32(F32(0.5) * x)
    return float(F32(float(half) * (1.0 + math.erf(float(x) * SQRT1_2))))


def gelu_tanh(x: np.float32) -> float:
    """TFLite's ``GeluTransformApproximate``: ``0.5f * x * (1 + tanh(sqrt(2/pi) * (x +
    0.044715f * x**3)))``, float32 except the double constant sqrt(2/pi)."""
    cube = F32(F32(F32(F32(0.044715) * x) * x) * x)
    inner = float(SQRT_2_OVER_PI) * float(F32(x + cube))
    half = F32(F32(0.5) * x)
    return float(F32(float(half) * F32(1.0 + F32(math.tanh(inner)))))

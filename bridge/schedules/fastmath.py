"""A vectorizable ``exp`` for CPU kernels.

LLVM turns ``exp`` on a vector into one libm ``expf`` call per lane: a convolution with a swish
or sigmoid epilogue (EfficientNet, MobileNetV3's SE blocks) ran at 1-4 GFLOP/s, the epilogue
costing more than the convolution. This lowers ``exp`` of float32 on ``llvm`` targets to the
classic range reduction ``exp(x) = 2**n * exp(r)``, ``|r| <= ln2/2``, with a degree-6 minimax
polynomial for ``exp(r)`` (the Cephes coefficients): about 1 ulp from libm, vector code only.
NaN propagates and ``x > 88.72`` gives ``inf``; results below float32's smallest normal number
(``x < -86.6``, ``exp(x) < 1.2e-38``) flush to 0. Both limits come from clamping the input
alone (no compare-and-select per limit): it is the hot path of every sigmoid and swish.

The rule is registered with TVM when this module is imported (by ``bridge.schedules``); it
applies to every ``llvm`` compile in the process.
"""

from __future__ import annotations

from tvm import tirx

LOG2E = 1.44269504088896341
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4
POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3333451907e-3, 4.1665795894e-2, 1.6666665459e-1)
# Clamping to HIGH: 2**128 * exp(r) with r > 0 overflows to inf (exp(x) > FLT_MAX above 88.7228);
# clamping to LOW: n = -126, whose scale 2**(n - 1) has a zero exponent field: exactly 0.
HIGH, LOW = 88.8, -87.33654475055310


def _split(dtype: str) -> tuple[str, int]:
    """("float32x16") -> ("float32", 16)."""
    element, _, lanes = dtype.partition("x")
    return element, int(lanes or 1)


def _const(value: float, dtype: str) -> tirx.PrimExpr:
    element, lanes = _split(dtype)
    scalar = tirx.const(value, element)
    return tirx.Broadcast(scalar, lanes) if lanes > 1 else scalar


def fast_exp(x: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """``exp(x)`` for float32 (scalar or vector, ``dtype``) ``x`` as plain arithmetic."""
    lanes = _split(dtype)[1]
    c = lambda v: _const(v, dtype)  # noqa: E731
    clamped = tirx.max(tirx.min(x, c(HIGH)), c(LOW))
    n = tirx.floor(clamped * c(LOG2E) + c(0.5))
    r = clamped - n * c(LN2_HI) - n * c(LN2_LO)
    # 2 * exp(r) = 2 + 2r + r**2 (2 P(r) + 1), P the polynomial above: the doubled
    # coefficients are exact, and 2**n = 2 * 2**(n - 1) (n reaches 128 below the threshold)
    poly = c(2 * POLY[0])
    for coefficient in POLY[1:]:
        poly = poly * r + c(2 * coefficient)
    poly = (poly * r + c(1.0)) * (r * r) + (r * c(2.0) + c(2.0))
    int_type = "int32" if lanes == 1 else f"int32x{lanes}"
    exponent = tirx.Cast(int_type, n) + _const(126, int_type)
    scale = tirx.reinterpret(dtype, tirx.shift_left(exponent, _const(23, int_type)))
    result = poly * scale
    # NaN in, NaN out; tested on the bits, since LLVM may assume floats are never NaN
    bits = tirx.reinterpret(int_type, x) & _const(0x7FFFFFFF, int_type)
    return tirx.Select(bits > _const(0x7F800000, int_type), x, result)


def _lower_exp(op: tirx.Call) -> tirx.PrimExpr | None:
    dtype = str(op.ty.dtype)
    if _split(dtype)[0] != "float32":
        return None  # other types keep TVM's lowering
    return fast_exp(op.args[0], dtype)


def register() -> None:
    """Make ``exp`` of float32 on llvm targets the polynomial above (idempotent)."""
    tirx.register_intrin_lowering("tirx.exp", target="llvm", f=_lower_exp, level=101)

"""Integer converters for quantized TFLite activations: HARD_SWISH, GELU, RELU, RELU6,
RELU_N1_TO_1, LEAKY_RELU (256-entry tables of LiteRT's own arithmetic,
:mod:`bridge.quant.tables`), PRELU (both branches requantized as LiteRT does) and SOFTMAX
(an integer exp table and an exact integer normalization).

Each returns None for a case it does not cover (TVM's converter then takes it).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from bridge.quant import elementwise, fixed_point, tables
from bridge.quant.tflite_common import QParams, activation_tensors, options, qparams

RELU_BOUNDS = {
    "RELU": (0.0, float("inf")),
    "RELU6": (0.0, 6.0),
    "RELU_N1_TO_1": (-1.0, 1.0),
}
SOFTMAX_BITS = 30  # exp table entries are round(exp(-beta * s * d) * 2**30)


def _lookup(converter, op, table: np.ndarray, qx: QParams) -> relax.Expr:
    data = converter.get_tensor_expr(converter.get_input_tensors(op)[0])
    return elementwise.lookup(data, table, fixed_point.INT_RANGE[qx.dtype][0])


def _quant(qx: QParams, qy: QParams) -> tuple:
    return (*qx.pair, *qy.pair, qy.dtype)


def convert_hard_swish(converter, op) -> relax.Expr | None:
    """HARD_SWISH: LiteRT's 16-bit fixed-point kernel, tabulated."""
    quant = activation_tensors(converter, op)
    if quant is None:
        return None
    qx, qy = quant
    try:
        table = tables.hard_swish_table(*_quant(qx, qy))
    except ValueError:  # LiteRT refuses this quantization too
        return None
    return _lookup(converter, op, table, qx)


def convert_gelu(converter, op) -> relax.Expr | None:
    """GELU: LiteRT's table of the float32 function (erf, or tanh when ``approximate``)."""
    from tflite.GeluOptions import GeluOptions

    quant = activation_tensors(converter, op)
    if quant is None:
        return None
    qx, qy = quant
    approximate = op.BuiltinOptions() is not None and options(op, GeluOptions).Approximate()
    function = tables.gelu_tanh if approximate else tables.gelu
    return _lookup(converter, op, tables.lut_table(function, *_quant(qx, qy)), qx)


def convert_relu(converter, op, name: str) -> relax.Expr | None:
    """RELU-family clamps: a clip when input and output share quantization (LiteRT's rescale
    by exactly 1 changes nothing), else the rescaling table."""
    quant = activation_tensors(converter, op)
    if quant is None:
        return None
    qx, qy = quant
    table = tables.relu_table(RELU_BOUNDS[name], *_quant(qx, qy))
    if qx.pair != qy.pair:
        return _lookup(converter, op, table, qx)
    low, high = int(table.min()), int(table.max())
    data = converter.get_tensor_expr(converter.get_input_tensors(op)[0])
    return relax.op.clip(data, low, high)


def convert_leaky_relu(converter, op) -> relax.Expr | None:
    from tflite.LeakyReluOptions import LeakyReluOptions

    quant = activation_tensors(converter, op)
    if quant is None:
        return None
    qx, qy = quant
    alpha = float(options(op, LeakyReluOptions).Alpha())
    return _lookup(converter, op, tables.leaky_relu_table(alpha, *_quant(qx, qy)), qx)


def convert_prelu(converter, op) -> relax.Expr | None:
    """PRELU with a constant 8-bit alpha: ``x - zx`` requantized by ``sx / sy`` where it is
    not negative, ``(x - zx) * (alpha - za)`` by ``sx * sa / sy`` where it is (TFLite's two
    multipliers, reference rounding)."""
    data, alpha = converter.get_input_tensors(op)[:2]
    quant = activation_tensors(converter, op)
    qa = qparams(converter, alpha)
    if quant is None or qa is None or qa.dtype != quant[0].dtype or qa.scale.size != 1:
        return None
    if converter.has_expr(alpha.tensor_idx) or converter.is_prefetched(alpha.tensor_idx):
        return None
    qx, qy = quant
    alpha_value = np.asarray(converter.get_tensor_value(alpha), np.int32) - qa.zp
    f32 = np.float32
    identity = fixed_point.quantize_multiplier(np.float64(f32(qx.scale[0]) / f32(qy.scale[0])))
    slope_real = f32(f32(qx.scale[0]) * f32(qa.scale[0])) / f32(qy.scale[0])
    slope = fixed_point.quantize_multiplier(np.float64(f32(slope_real)))
    centred = relax.op.subtract(
        relax.op.astype(converter.get_tensor_expr(data), "int32"), relax.const(qx.zp, "int32")
    )
    clamp = fixed_point.INT_RANGE[qy.dtype]
    positive = fixed_point.requantize(centred, identity, qy.zp, clamp, qy.dtype, "double")
    scaled = relax.op.multiply(centred, relax.const(alpha_value.astype(np.int32)))
    negative = fixed_point.requantize(scaled, slope, qy.zp, clamp, qy.dtype, "double")
    return relax.op.where(
        relax.op.greater_equal(centred, relax.const(0, "int32")), positive, negative
    )


def softmax_exp_table(scale: float, beta: float) -> np.ndarray:
    """LiteRT's softmax table ``expf(-scale * beta * d)`` for d = 0..255 (float32 argument),
    as integers ``round(value * 2**SOFTMAX_BITS)``; indexed by d."""
    step = np.float32(-np.float32(scale) * np.float32(beta))
    arguments = (step * np.arange(256, dtype=np.float32)).astype(np.float32)
    values = np.exp(arguments.astype(np.float64)).astype(np.float32).astype(np.float64)
    return np.round(values * 2.0**SOFTMAX_BITS).astype(np.int64)


def convert_softmax(converter, op) -> relax.Expr | None:
    """SOFTMAX to 8 bits with scale 1/256 (all LiteRT accepts for int8): each row's largest
    value minus each value indexes LiteRT's exp table (as 30-bit integers), and the output is
    ``round(256 * e / sum(e))`` computed exactly in int64, plus the zero point. LiteRT
    normalizes in float32; the two agree unless its float32 sum lands within rounding error of
    a half step (within 1 step by construction)."""
    from tflite.SoftmaxOptions import SoftmaxOptions

    quant = activation_tensors(converter, op)
    if quant is None:
        return None
    qx, qy = quant
    if np.float32(qy.scale[0]) != np.float32(1.0 / 256.0):
        return None
    beta = float(options(op, SoftmaxOptions).Beta()) if op.BuiltinOptions() is not None else 1.0
    x = relax.op.astype(converter.get_tensor_expr(converter.get_input_tensors(op)[0]), "int32")
    distance = relax.op.subtract(relax.op.max(x, axis=-1, keepdims=True), x)
    table = relax.const(softmax_exp_table(qx.scale[0], beta), "int64")
    exps = relax.op.astype(relax.op.take(table, distance, axis=0, mode="clip"), "int64")
    total = relax.op.sum(exps, axis=-1, keepdims=True)
    scaled = relax.op.add(
        relax.op.multiply(exps, relax.const(512, "int64")), total
    )  # round(256 e / S) = floor((512 e + S) / 2S)
    out = relax.op.floor_divide(scaled, relax.op.multiply(total, relax.const(2, "int64")))
    if qy.zp:
        out = relax.op.add(out, relax.const(qy.zp, "int64"))
    low, high = fixed_point.INT_RANGE[qy.dtype]
    return relax.op.astype(relax.op.clip(out, low, high), qy.dtype)

"""Integer converters for quantized TFLite operators on whole tensors: SUB, BATCH_MATMUL of two
activations, MAX_POOL_2D and RESIZE_BILINEAR, each with LiteRT's integer arithmetic.

Each returns None for a case it does not cover (TVM's converter then takes it).
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax.frontend.tflite.tflite_frontend import get_pad_value

from bridge.quant import elementwise, fixed_point
from bridge.quant.tflite_common import (
    INTEGER,
    activation,
    activation_tensors,
    int8_binary,
    options,
    qparams,
)

RESIZE_BITS = 10  # LiteRT's ResizeBilinearInteger: positions and weights in 1/1024ths


def convert_sub(converter, op) -> relax.Expr | None:
    """SUB of two 8-bit tensors: TFLite's integer ADD with the second input's multiplier
    negated (:func:`bridge.quant.elementwise.subtract`)."""
    from tflite.SubOptions import SubOptions

    tensors = converter.get_input_tensors(op)
    outputs = converter.get_output_tensors(op)
    if len(tensors) != 2 or len(outputs) != 1:
        return None
    quant = [qparams(converter, t) for t in (*tensors, outputs[0])]
    if any(q is None or q.dtype not in INTEGER or q.scale.size != 1 for q in quant):
        return None
    if len({q.dtype for q in quant}) != 1:
        return None
    fused = "NONE"
    if op.BuiltinOptions() is not None:
        fused = activation(converter, options(op, SubOptions).FusedActivationFunction())
    if fused is None:
        return None
    qa, qb, out = quant
    a, b = (converter.get_tensor_expr(t) for t in tensors)
    clamp = fixed_point.activation_range(fused, float(out.scale[0]), out.zp, out.dtype)
    return elementwise.subtract((a, qa.pair), (b, qb.pair), out.pair, clamp, out.dtype)


def convert_batch_matmul(converter, op) -> relax.Expr | None:
    """BATCH_MATMUL of two int8 tensors (attention's ``Q @ K^T`` and ``P @ V``): the product
    of the inputs less their zero points in int32, requantized by ``sa * sb / sy`` (reference
    rounding, as LiteRT's int8 kernel)."""
    from tflite.BatchMatMulOptions import BatchMatMulOptions

    binary = int8_binary(converter, op)
    if binary is None:
        return None
    tensors, quant = binary
    qa, qb, out = quant
    parsed = options(op, BatchMatMulOptions)
    centred = []
    for tensor, q, adjoint in zip(tensors, (qa, qb), (parsed.AdjX(), parsed.AdjY())):
        x = relax.op.astype(converter.get_tensor_expr(tensor), "int32")
        if q.zp:
            x = relax.op.subtract(x, relax.const(q.zp, "int32"))
        if adjoint:
            rank = len(converter.get_tensor_shape(tensor))
            x = relax.op.permute_dims(x, [*range(rank - 2), rank - 1, rank - 2])
        centred.append(x)
    acc = relax.op.matmul(*centred, out_dtype="int32")
    real = np.float64(qa.scale[0]) * np.float64(qb.scale[0]) / np.float64(out.scale[0])
    multiplier = fixed_point.quantize_multiplier(real)
    clamp = fixed_point.INT_RANGE[out.dtype]
    return fixed_point.requantize(acc, multiplier, out.zp, clamp, out.dtype, "double")


def convert_max_pool2d(converter, op) -> relax.Expr | None:
    """MAX_POOL_2D with equal input and output quantization: the integer maximum (padding
    never wins), clamped to the fused activation's range (TFLite's rounding of its bounds)."""
    from tflite.Pool2DOptions import Pool2DOptions

    quant = activation_tensors(converter, op)
    if quant is None or quant[0].pair != quant[1].pair:
        return None
    qy = quant[1]
    parsed = options(op, Pool2DOptions)
    fused = activation(converter, parsed.FusedActivationFunction())
    shape = [int(d) for d in converter.get_tensor_shape(converter.get_input_tensors(op)[0])]
    if fused is None or len(shape) != 4 or parsed.Padding() not in (0, 1):
        return None
    window = (parsed.FilterHeight(), parsed.FilterWidth())
    strides = (parsed.StrideH(), parsed.StrideW())
    padding = (0, 0, 0, 0)
    if parsed.Padding() == 0:  # SAME
        top, bottom = get_pad_value(shape[1], window[0], strides[0])
        left, right = get_pad_value(shape[2], window[1], strides[1])
        padding = (top, left, bottom, right)
    data = converter.get_tensor_expr(converter.get_input_tensors(op)[0])
    pooled = relax.op.nn.max_pool2d(
        data, window, strides, padding=padding, layout="NHWC", out_layout="NHWC"
    )
    low, high = fixed_point.activation_range(fused, float(qy.scale[0]), qy.zp, qy.dtype)
    if (low, high) == fixed_point.INT_RANGE[qy.dtype]:
        return pooled
    return relax.op.clip(pooled, low, high)


def resize_weights(
    out_size: int, in_size: int, align_corners: bool, half_pixel: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """LiteRT's ``ComputeInterpolationValuesInteger`` for every output position: lower and
    upper source index and their weights in 1/1024ths (they sum to 1024)."""
    one = 1 << RESIZE_BITS
    if align_corners and out_size > 1:
        scale = (one * (in_size - 1) + (out_size - 1) // 2) // (out_size - 1)
    else:
        scale = (one * in_size + out_size // 2) // out_size
    position = np.arange(out_size, dtype=np.int64) * scale
    if half_pixel:
        position += scale // 2 - (one >> 1)
    lower = np.maximum(np.trunc(position / one).astype(np.int64), 0)  # C division
    upper = np.minimum((position + one - 1) // one, in_size - 1)
    fraction = position - one * lower
    return lower, upper, one - fraction, fraction


def convert_resize_bilinear(converter, op) -> relax.Expr | None:
    """RESIZE_BILINEAR of an 8-bit tensor with equal input and output quantization (as TFLite
    requires): for int8 LiteRT's integer interpolation (weights in 1/1024ths along each axis,
    the sum divided by 2**20 rounding half away from zero), separably, in int32; for uint8 its
    float32 kernel (:func:`resize_bilinear_uint8`)."""
    from tflite.ResizeBilinearOptions import ResizeBilinearOptions

    quant = activation_tensors(converter, op)
    tensors = converter.get_input_tensors(op)
    if quant is None or quant[0].pair != quant[1].pair or len(tensors) != 2:
        return None
    if converter.has_expr(tensors[1].tensor_idx):
        return None
    shape = [int(d) for d in converter.get_tensor_shape(tensors[0])]
    size = [int(v) for v in np.asarray(converter.get_tensor_value(tensors[1])).reshape(-1)]
    if len(shape) != 4 or len(size) != 2:
        return None
    parsed = options(op, ResizeBilinearOptions)
    align, half = bool(parsed.AlignCorners()), bool(parsed.HalfPixelCenters())
    if quant[0].dtype == "uint8":
        return resize_bilinear_uint8(
            converter.get_tensor_expr(tensors[0]), shape[1:3], size, align, half
        )
    x = relax.op.astype(converter.get_tensor_expr(tensors[0]), "int32")
    for axis, (out_size, in_size) in zip((1, 2), zip(size, shape[1:3])):
        lower, upper, w_lower, w_upper = resize_weights(out_size, in_size, align, half)
        weight_shape = [1, 1, 1, 1]
        weight_shape[axis] = out_size
        x = relax.op.add(
            relax.op.multiply(
                relax.op.take(x, relax.const(lower.astype(np.int32)), axis=axis),
                relax.const(w_lower.astype(np.int32).reshape(weight_shape)),
            ),
            relax.op.multiply(
                relax.op.take(x, relax.const(upper.astype(np.int32)), axis=axis),
                relax.const(w_upper.astype(np.int32).reshape(weight_shape)),
            ),
        )
    half_step = relax.const(1 << (2 * RESIZE_BITS - 1), "int32")
    magnitude = relax.op.right_shift(
        relax.op.add(relax.op.abs(x), half_step), relax.const(2 * RESIZE_BITS, "int32")
    )
    rounded = relax.op.where(
        relax.op.less(x, relax.const(0, "int32")), relax.op.negative(magnitude), magnitude
    )
    low, high = fixed_point.INT_RANGE[quant[1].dtype]
    return relax.op.astype(relax.op.clip(rounded, low, high), quant[1].dtype)


def _float32_taps(
    out_size: int, in_size: int, align_corners: bool, half_pixel: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LiteRT's float ``ComputeInterpolationValues`` for every output position: lower and
    upper source index and the float32 distance from the lower one."""
    f32 = np.float32
    if align_corners and out_size > 1:
        scale = f32(in_size - 1) / f32(out_size - 1)
    else:
        scale = f32(in_size) / f32(out_size)
    position = np.arange(out_size).astype(f32)
    position = (position + f32(0.5)) * scale - f32(0.5) if half_pixel else position * scale
    lower = np.maximum(np.floor(position).astype(np.int64), 0)
    upper = np.minimum(np.ceil(position).astype(np.int64), in_size - 1)
    return lower, upper, (position - lower.astype(f32)).astype(f32)


def resize_bilinear_uint8(
    x: relax.Expr, in_size: list[int], size: list[int], align: bool, half: bool
) -> relax.Expr:
    """LiteRT's uint8 RESIZE_BILINEAR (optimized ``ResizeBilinearGenericSmallChannel``; only
    int8 has the integer kernel): each output is ``(v00 * s0 + v01 * s1 + v10 * s2 + v11 *
    s3) + 0.5`` in float32, added in that order, truncated to uint8; the four float32 weights
    per output pixel are constants (``(1 - dy) * (1 - dx)``, ...). No fused multiply-add:
    LiteRT's x86 build has none here (an FMA model is 1 step off on u8_resize)."""
    f32 = np.float32
    y0, y1, dy = _float32_taps(size[0], in_size[0], align, half)
    x0, x1, dx = _float32_taps(size[1], in_size[1], align, half)
    one = f32(1)
    weights = [
        np.outer(a, b).astype(f32)[None, :, :, None]
        for a, b in ((one - dy, one - dx), (one - dy, dx), (dy, one - dx), (dy, dx))
    ]
    data = relax.op.astype(x, "float64")
    total = None
    for (rows, cols), weight in zip(((y0, x0), (y0, x1), (y1, x0), (y1, x1)), weights):
        tap = relax.op.take(data, relax.const(rows.astype(np.int32)), axis=1)
        tap = relax.op.take(tap, relax.const(cols.astype(np.int32)), axis=2)
        # exact in float64 (8 x 24 bits), then rounded to float32: a float32 multiply that
        # LLVM cannot contract with the add into an FMA (which it did on FMA hosts: 1 step off)
        product = relax.op.multiply(tap, relax.const(weight.astype(np.float64), "float64"))
        term = relax.op.astype(product, "float32")
        total = term if total is None else relax.op.add(total, term)
    total = relax.op.add(total, relax.const(0.5, "float32"))
    return relax.op.astype(relax.op.clip(total, 0.0, 255.0), "uint8")

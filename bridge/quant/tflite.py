"""Integer converters for quantized TFLite operators (CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED, MEAN over the spatial axes, AVERAGE_POOL_2D, ADD, MUL, LOGISTIC, TANH,
QUANTIZE between 8-bit types, CONCATENATION).

TVM's converter keeps quantized tensors as integers between operators but computes each
quantized operator as dequantize -> float operator -> quantize. Here an operator whose
activations are int8/uint8 and whose weights are constant symmetric int8 (or per-tensor uint8
with any zero point: TensorFlow 1's quantization, a ``weight_offset`` in
:mod:`bridge.quant.kernels`) becomes an integer product (:mod:`bridge.quant.kernels`) with
TFLite's fixed-point requantization (:mod:`bridge.quant.fixed_point`); any other operator goes
to TVM's converter unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.relax.frontend.tflite.tflite_frontend import get_pad_value

from bridge.quant import (
    elementwise,
    fixed_point,
    kernels,
    tflite_activations,
    tflite_reduce,
    tflite_squared_difference,
    tflite_tensors,
)
from bridge.quant.tflite_common import INTEGER, QParams, qparams
from bridge.quant.tflite_common import activation as _activation
from bridge.quant.tflite_common import activation_tensors as _activation_tensors
from bridge.quant.tflite_common import options as _options

# The rounding each operator's LiteRT builtin kernel uses on x86 (checked against LiteRT's
# intermediate tensors in tests/test_int8.py).
ROUNDING = {
    "CONV_2D": "double_up",
    # LiteRT's general depthwise kernel (every x86 case) requantizes 8 channels at a time with
    # SIMD and the channels left over with scalar code
    "DEPTHWISE_CONV_2D": functools.partial(fixed_point.simd_roundings, block=8),
    "FULLY_CONNECTED": "double_up",
    "GROUPED": "double",  # a grouped CONV_2D runs LiteRT's reference kernel
}
# uint8 weights (TensorFlow 1's uint8 models), checked against LiteRT on ties of both signs
# (tests/test_tflite_uint8.py): its uint8 convolutions and dense layers round halves up like
# the int8 ones ("double" is 1 step low on u8_conv, u8_dense); its uint8 depthwise kernel
# requantizes every channel with scalar code, away from zero (the int8 kernel's 8-channel
# SIMD blocks, or "double_up", are 1 step high on u8_depthwise)
UINT8_ROUNDING = {
    "CONV_2D": "double_up",
    "DEPTHWISE_CONV_2D": "double",
    "FULLY_CONNECTED": "double_up",
}


def integer_converters(converter) -> dict[str, Callable]:
    """``convert_map`` entries: the integer converter where it applies, else TVM's."""
    table = {
        "CONV_2D": convert_conv2d,
        "DEPTHWISE_CONV_2D": convert_depthwise_conv2d,
        "FULLY_CONNECTED": convert_fully_connected,
        "MEAN": convert_mean,
        "AVERAGE_POOL_2D": convert_average_pool2d,
        "ADD": convert_add,
        "MUL": convert_mul,
        "LOGISTIC": functools.partial(convert_table, function=_sigmoid),
        "TANH": functools.partial(convert_table, function=np.tanh),
        "QUANTIZE": convert_quantize,
        "CONCATENATION": convert_concatenation,
        **_more_converters(),
    }
    return {
        name: functools.partial(_integer_or, converter, integer, converter.convert_map[name])
        for name, integer in table.items()
        if name in converter.convert_map
    }


def _more_converters() -> dict[str, Callable]:
    """The activations (:mod:`bridge.quant.tflite_activations`), whole-tensor operators
    (:mod:`bridge.quant.tflite_tensors`), REDUCE_PROD (:mod:`bridge.quant.tflite_reduce`) and
    SQUARED_DIFFERENCE (:mod:`bridge.quant.tflite_squared_difference`)."""
    act, tensors = tflite_activations, tflite_tensors
    relus = {name: functools.partial(act.convert_relu, name=name) for name in act.RELU_BOUNDS}
    return {
        "HARD_SWISH": act.convert_hard_swish,
        "GELU": act.convert_gelu,
        **relus,
        "LEAKY_RELU": act.convert_leaky_relu,
        "PRELU": act.convert_prelu,
        "SOFTMAX": act.convert_softmax,
        "SUB": tensors.convert_sub,
        "BATCH_MATMUL": tensors.convert_batch_matmul,
        "MAX_POOL_2D": tensors.convert_max_pool2d,
        "RESIZE_BILINEAR": tensors.convert_resize_bilinear,
        "REDUCE_PROD": tflite_reduce.convert_reduce_prod,
        "SQUARED_DIFFERENCE": tflite_squared_difference.convert_squared_difference,
    }


def _integer_or(converter, integer: Callable, fallback: Callable, op) -> relax.Expr:
    result = integer(converter, op)
    return fallback(op=op) if result is None else result


@dataclass(frozen=True)
class _Operands:
    x: relax.Expr
    weight: np.ndarray
    bias: np.ndarray | None
    input: QParams
    weight_q: QParams
    output: QParams
    weight_offset: int  # 128 - zero point for uint8 weights (stored as w - 128), else 0


def _operands(converter, op) -> _Operands | None:
    """The operands of an integer product, or None when the operator does not qualify:
    int8/uint8 activations, constant int8 weights with zero point 0 or uint8 weights with one
    zero point, int32 bias."""
    tensors = converter.get_input_tensors(op)
    outputs = converter.get_output_tensors(op)
    if len(tensors) < 2 or len(outputs) != 1:
        return None
    data, weight = tensors[:2]
    bias = tensors[2] if len(tensors) > 2 and tensors[2].tensor_idx >= 0 else None
    qx, qw, qy = (
        qparams(converter, data),
        qparams(converter, weight),
        qparams(converter, outputs[0]),
    )
    if qx is None or qw is None or qy is None:
        return None
    if qx.dtype not in INTEGER or qy.dtype not in INTEGER:
        return None
    if qx.zero_point.size != 1 or qy.zero_point.size != 1:
        return None
    if qw.dtype == "uint8" and qw.zero_point.size == 1 and qw.scale.size == 1:
        offset = 128 - qw.zp
    elif qw.dtype == "int8" and not np.any(qw.zero_point):
        offset = 0
    else:
        return None
    if converter.has_expr(weight.tensor_idx) or converter.is_prefetched(weight.tensor_idx):
        return None  # weights computed in the graph
    bias_value = None
    if bias is not None:
        if converter.has_expr(bias.tensor_idx) or bias.tensor.Type() != 2:  # 2: INT32
            return None
        bias_value = np.asarray(converter.get_tensor_value(bias), np.int32)
    weight_value = np.asarray(converter.get_tensor_value(weight))
    weight_value = (weight_value.astype(np.int16) - (128 if offset else 0)).astype(np.int8)
    expr = converter.get_tensor_expr(data)
    if offset:  # the offset's window sums read the input's static shape
        expr = converter.bb.normalize(expr)
    return _Operands(expr, weight_value, bias_value, qx, qw, qy, offset)


def _multiplier(operands: _Operands, channels: int) -> fixed_point.Multiplier:
    """``input_scale * weight_scale[c] / output_scale`` in double, per output channel."""
    weight_scale = np.broadcast_to(operands.weight_q.scale.astype(np.float64), (channels,))
    real = np.float64(operands.input.scale[0]) * weight_scale / np.float64(operands.output.scale[0])
    return fixed_point.quantize_multiplier(real)


def _epilogue(acc, operands: _Operands, channels: int, activation: str, op_name: str):
    out = operands.output
    clamp = fixed_point.activation_range(activation, float(out.scale[0]), out.zp, out.dtype)
    rounding = (UINT8_ROUNDING if operands.weight_q.dtype == "uint8" else ROUNDING)[op_name]
    rounding = rounding(channels) if callable(rounding) else rounding
    return fixed_point.requantize(
        acc, _multiplier(operands, channels), out.zp, clamp, out.dtype, rounding
    )


def _static_spatial(x: relax.Expr) -> bool:
    try:
        kernels.spatial_size(x)
    except ValueError:
        return False
    return True


def _padding(code: int, size: tuple[int, int], kernel: tuple[int, int], options) -> tuple:
    """(top, left, bottom, right) for TFLite's SAME (0) or VALID (1) padding."""
    if code == 1:
        return (0, 0, 0, 0)
    (h, w), (kh, kw) = size, kernel
    dh, dw = options.DilationHFactor(), options.DilationWFactor()
    top, bottom = get_pad_value(h, dh * (kh - 1) + 1, options.StrideH())
    left, right = get_pad_value(w, dw * (kw - 1) + 1, options.StrideW())
    return (top, left, bottom, right)


def _spatial(converter, op, options, kernel: tuple[int, int]) -> kernels.Window | None:
    _, h, w, _ = (int(d) for d in converter.get_tensor_shape(converter.get_input_tensors(op)[0]))
    if options.Padding() not in (0, 1):
        return None
    return kernels.Window(
        (options.StrideH(), options.StrideW()),
        _padding(options.Padding(), (h, w), kernel, options),
        (options.DilationHFactor(), options.DilationWFactor()),
    )


def _product_operator(converter, op, options_class, ndim: int):
    """(operands, options, fused activation) of a CONV_2D, DEPTHWISE_CONV_2D or
    FULLY_CONNECTED whose weights have ``ndim`` dimensions, or None."""
    operands = _operands(converter, op)
    if operands is None or operands.weight.ndim != ndim:
        return None
    options = _options(op, options_class)
    return operands, options, _activation(converter, options.FusedActivationFunction())


def convert_conv2d(converter, op) -> relax.Expr | None:
    from tflite.Conv2DOptions import Conv2DOptions

    parts = _product_operator(converter, op, Conv2DOptions, 4)
    if parts is None:
        return None
    operands, options, activation = parts
    out_channels, kh, kw, in_channels = operands.weight.shape
    data_channels = int(converter.get_tensor_shape(converter.get_input_tensors(op)[0])[3])
    if activation is None or data_channels % in_channels:
        return None
    groups = data_channels // in_channels  # grouped: LiteRT's reference kernel
    if operands.weight_q.scale.size > 1 and operands.weight_q.axis != 0:
        return None
    if operands.weight_offset and (groups != 1 or not _static_spatial(operands.x)):
        return None
    window = _spatial(converter, op, options, (kh, kw))
    if window is None:
        return None
    acc = kernels.conv2d(
        operands.x,
        operands.weight,
        operands.bias,
        operands.input.zp,
        window,
        groups,
        operands.weight_offset,
    )
    kind = "CONV_2D" if groups == 1 else "GROUPED"
    return _epilogue(acc, operands, out_channels, activation, kind)


def convert_depthwise_conv2d(converter, op) -> relax.Expr | None:
    from tflite.DepthwiseConv2DOptions import DepthwiseConv2DOptions

    parts = _product_operator(converter, op, DepthwiseConv2DOptions, 4)
    if parts is None or parts[0].weight.shape[0] != 1:
        return None
    operands, options, activation = parts
    _, kh, kw, out_channels = operands.weight.shape
    channels = int(converter.get_tensor_shape(converter.get_input_tensors(op)[0])[3])
    if activation is None or out_channels % channels:
        return None
    if operands.weight_q.scale.size > 1 and operands.weight_q.axis != 3:
        return None
    window = _spatial(converter, op, options, (kh, kw))
    if window is None:
        return None
    acc = kernels.depthwise_conv2d(
        operands.x,
        operands.weight,
        operands.bias,
        operands.input.zp,
        window,
        channels,
        operands.weight_offset,
    )
    return _epilogue(acc, operands, out_channels, activation, "DEPTHWISE_CONV_2D")


def convert_fully_connected(converter, op) -> relax.Expr | None:
    from tflite.FullyConnectedOptions import FullyConnectedOptions

    parts = _product_operator(converter, op, FullyConnectedOptions, 2)
    if parts is None:
        return None
    operands, options, activation = parts
    if activation is None or options.WeightsFormat() != 0:  # 0: DEFAULT (not shuffled)
        return None
    if operands.weight_q.scale.size > 1 and operands.weight_q.axis != 0:
        return None
    units, depth = operands.weight.shape
    x = relax.op.reshape(operands.x, [-1, depth])
    acc = kernels.dense(
        x, operands.weight, operands.bias, operands.input.zp, operands.weight_offset
    )
    out = _epilogue(acc, operands, units, activation, "FULLY_CONNECTED")
    if not options.KeepNumDims():  # (rows, units), as computed: stored shapes may be placeholders
        return out
    leading = list(converter.bb.normalize(operands.x).ty.shape.values)[:-1]
    return relax.op.reshape(out, [*leading, units])


def convert_mean(converter, op) -> relax.Expr | None:
    """MEAN of an 8-bit tensor as LiteRT computes it: with ``keep_dims`` over the spatial axes
    of a 4-D tensor, its optimized kernel (raw sum, float32 multiplier and bias, SIMD rounding
    by 16 channels); otherwise its reference ``QuantizedMeanOrSum`` (the sum less the zero
    points, the multiplier divided by the count in integers, reference rounding)."""
    from tflite.ReducerOptions import ReducerOptions

    quant = _activation_tensors(converter, op)
    tensors = converter.get_input_tensors(op)
    if quant is None or len(tensors) != 2 or converter.has_expr(tensors[1].tensor_idx):
        return None
    qx, qy = quant
    shape = [int(d) for d in converter.get_tensor_shape(tensors[0])]
    axes = np.atleast_1d(converter.get_tensor_value(tensors[1]))
    axes = sorted({int(a) % len(shape) for a in axes})
    count = int(np.prod([shape[a] for a in axes]))
    if not axes or count <= 0:
        return None
    keep_dims = bool(_options(op, ReducerOptions).KeepDims())
    x = converter.get_tensor_expr(tensors[0])
    clamp = fixed_point.INT_RANGE[qy.dtype]
    if keep_dims and len(shape) == 4 and axes == [1, 2]:
        multiplier, bias = fixed_point.mean_fast_path(_pair(qx), _pair(qy), count)
        roundings = fixed_point.simd_roundings(shape[3])
        total = kernels.spatial_sum(x, 0)
        return fixed_point.requantize(total, multiplier, bias, clamp, qy.dtype, roundings)
    total = kernels.reduce_sum(x, axes, keep_dims, qx.zp, count)
    multiplier = fixed_point.mean_reference_multiplier(qx.scale[0], qy.scale[0], count)
    return fixed_point.requantize(total, multiplier, qy.zp, clamp, qy.dtype, "double")


def convert_average_pool2d(converter, op) -> relax.Expr | None:
    """AVERAGE_POOL_2D with equal input and output quantization (as TFLite requires): each
    window's integer sum divided by its pixel count, rounded half away from zero."""
    from tflite.Pool2DOptions import Pool2DOptions

    quant = _activation_tensors(converter, op)
    if quant is None:
        return None
    qx, qy = quant
    if qx.zp != qy.zp or qx.scale[0] != qy.scale[0]:
        return None
    options = _options(op, Pool2DOptions)
    activation = _activation(converter, options.FusedActivationFunction())
    data = converter.get_input_tensors(op)[0]
    shape = [int(d) for d in converter.get_tensor_shape(data)]
    if activation is None or len(shape) != 4 or options.Padding() not in (0, 1):
        return None
    window = (options.FilterHeight(), options.FilterWidth())
    strides = (options.StrideH(), options.StrideW())
    if options.Padding() == 1:
        padding = (0, 0, 0, 0)
    else:
        top, bottom = get_pad_value(shape[1], window[0], strides[0])
        left, right = get_pad_value(shape[2], window[1], strides[1])
        padding = (top, left, bottom, right)
    total = kernels.window_sum(converter.get_tensor_expr(data), window, strides, padding)
    counts = kernels.window_counts((shape[1], shape[2]), window, strides, padding)
    mean = kernels.divide_round_away(total, counts)
    low, high = fixed_point.activation_range(activation, float(qy.scale[0]), qy.zp, qy.dtype)
    return relax.op.astype(relax.op.clip(mean, low, high), qy.dtype)


def _binary(converter, op, options_class):
    """(inputs' exprs, their quantization, output quantization, activation) of a two-input
    elementwise operator on 8-bit tensors of one dtype, or None."""
    tensors = converter.get_input_tensors(op)
    outputs = converter.get_output_tensors(op)
    if len(tensors) != 2 or len(outputs) != 1:
        return None
    quant = [qparams(converter, t) for t in (*tensors, outputs[0])]
    if any(q is None or q.dtype not in INTEGER or q.scale.size != 1 for q in quant):
        return None
    if len({q.dtype for q in quant}) != 1:
        return None
    activation = "NONE"
    if op.BuiltinOptions() is not None:
        activation = _activation(converter, _options(op, options_class).FusedActivationFunction())
    if activation is None:
        return None
    exprs = [converter.get_tensor_expr(t) for t in tensors]
    return exprs, quant[:2], quant[2], activation


def _pair(q: QParams) -> tuple[float, int]:
    return float(q.scale[0]), q.zp


def convert_add(converter, op) -> relax.Expr | None:
    from tflite.AddOptions import AddOptions

    return _convert_binary(converter, op, AddOptions, elementwise.add)


def convert_mul(converter, op) -> relax.Expr | None:
    from tflite.MulOptions import MulOptions

    return _convert_binary(converter, op, MulOptions, elementwise.multiply)


def _convert_binary(converter, op, options_class, compute) -> relax.Expr | None:
    parts = _binary(converter, op, options_class)
    if parts is None:
        return None
    (a, b), (qa, qb), out, activation = parts
    clamp = fixed_point.activation_range(activation, float(out.scale[0]), out.zp, out.dtype)
    return compute((a, _pair(qa)), (b, _pair(qb)), _pair(out), clamp, out.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.float32(1) / (np.float32(1) + np.exp(-x))


def convert_table(converter, op, function) -> relax.Expr | None:
    """A unary operator on an 8-bit tensor (LOGISTIC, TANH) as the 256-entry table TFLite's
    optimized kernels build (float32 function of each dequantized value, rounded)."""
    quant = _activation_tensors(converter, op)
    if quant is None:
        return None
    qx, qy = quant
    table = fixed_point.float_table(function, qx.scale[0], qx.zp, qy.scale[0], qy.zp, qy.dtype)
    data = converter.get_tensor_expr(converter.get_input_tensors(op)[0])
    return elementwise.lookup(data, table, fixed_point.INT_RANGE[qx.dtype][0])


def convert_quantize(converter, op) -> relax.Expr | None:
    """QUANTIZE of an 8-bit tensor to another 8-bit quantization (requantize) as a table."""
    data = converter.get_input_tensors(op)[0]
    outputs = converter.get_output_tensors(op)
    qx, qy = qparams(converter, data), qparams(converter, outputs[0])
    if qx is None or qy is None or qx.dtype not in INTEGER or qy.dtype not in INTEGER:
        return None
    if qx.scale.size != 1 or qy.scale.size != 1:
        return None
    table = fixed_point.requantize_table(qx.scale[0], qx.zp, qx.dtype, qy.scale[0], qy.zp, qy.dtype)
    low = fixed_point.INT_RANGE[qx.dtype][0]
    return elementwise.lookup(converter.get_tensor_expr(data), table, low)


def convert_concatenation(converter, op) -> relax.Expr | None:
    """CONCATENATION of 8-bit tensors: inputs quantized like the output pass through, the
    others are rescaled by table (TFLite's float32 formula), then joined as integers."""
    from tflite.ConcatenationOptions import ConcatenationOptions

    tensors = converter.get_input_tensors(op)
    out = qparams(converter, converter.get_output_tensors(op)[0])
    quant = [qparams(converter, t) for t in tensors]
    if out is None or out.dtype not in INTEGER or out.scale.size != 1:
        return None
    if any(q is None or q.dtype != out.dtype or q.scale.size != 1 for q in quant):
        return None
    options = _options(op, ConcatenationOptions)
    activation = _activation(converter, options.FusedActivationFunction())
    if activation is None:
        return None
    parts = []
    for tensor, q in zip(tensors, quant):
        x = converter.get_tensor_expr(tensor)
        if (q.zp, q.scale[0]) != (out.zp, out.scale[0]):
            table = fixed_point.rescale_table(
                q.scale[0], q.zp, q.dtype, out.scale[0], out.zp, out.dtype
            )
            x = elementwise.lookup(x, table, fixed_point.INT_RANGE[q.dtype][0])
        parts.append(x)
    joined = relax.op.concat(parts, axis=options.Axis())
    if activation == "NONE":
        return joined
    low, high = fixed_point.activation_range(activation, float(out.scale[0]), out.zp, out.dtype)
    return relax.op.astype(relax.op.clip(joined, low, high), out.dtype)

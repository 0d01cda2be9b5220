"""Integer products as Relax operators: int8/uint8 activations x int8 weights -> int32.

Each kernel returns the int32 accumulator with the input zero point already folded into a
precomputed bias, so the product itself is a pure ``sum(x * w)`` (the form a VNNI/sdot
schedule takes) and requantization is a separate elementwise epilogue
(:func:`bridge.quant.fixed_point.requantize`) that fuses into the kernel's write-back:

    sum_k (x - zx) * w + b  =  sum_k x * w + (b - zx * sum_k w)

Padding is filled with the input zero point (a real zero), so the fold holds at the borders.
Weights are constant numpy arrays (TFLite's symmetric int8: weight zero point 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

ACC = "int32"


@dataclass(frozen=True)
class Window:
    """A 2-D convolution's strides, padding (top, left, bottom, right) and dilation."""

    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)


def fold_bias(
    bias: np.ndarray | None, weight_sums: np.ndarray, input_zero_point: int
) -> np.ndarray:
    """``bias - zx * sum_k w`` per output channel, as int32 (raises if it overflows)."""
    folded = -int(input_zero_point) * weight_sums.astype(np.int64)
    if bias is not None:
        folded = folded + bias.astype(np.int64)
    if np.abs(folded).max(initial=0) >= 2**31:
        raise ValueError("folded bias overflows int32")
    return folded.astype(np.int32)


def _pad(x: relax.Expr, padding: tuple[int, int, int, int], value: int) -> relax.Expr:
    top, left, bottom, right = padding
    if not any(padding):
        return x
    return relax.op.nn.pad(x, [0, 0, top, bottom, left, right, 0, 0], pad_value=float(value))


def conv2d(
    x: relax.Expr,
    weight_ohwi: np.ndarray,
    bias: np.ndarray | None,
    input_zero_point: int,
    window: Window,
    groups: int = 1,
) -> relax.Expr:
    """NHWC convolution, weights as TFLite stores them (OHWI, I the channels of one of
    ``groups`` groups): int32 accumulators + bias."""
    weight = np.ascontiguousarray(weight_ohwi.transpose(1, 2, 3, 0))  # HWIO
    folded = fold_bias(bias, weight_ohwi.astype(np.int64).sum(axis=(1, 2, 3)), input_zero_point)
    acc = relax.op.nn.conv2d(
        _pad(x, window.padding, input_zero_point),
        relax.const(weight),
        strides=window.strides,
        dilation=window.dilation,
        groups=groups,
        data_layout="NHWC",
        kernel_layout="HWIO",
        out_dtype=ACC,
    )
    return relax.op.add(acc, relax.const(folded))


def depthwise_conv2d(
    x: relax.Expr,
    weight_1hwc: np.ndarray,
    bias: np.ndarray | None,
    input_zero_point: int,
    window: Window,
    channels: int,
) -> relax.Expr:
    """NHWC depthwise convolution, weights [1, KH, KW, C * M] (output ``c * M + m`` reads
    input channel ``c``): int32 accumulators + bias."""
    _, kh, kw, out_channels = weight_1hwc.shape
    multiplier = out_channels // channels
    folded = fold_bias(bias, weight_1hwc.astype(np.int64).sum(axis=(0, 1, 2)), input_zero_point)
    if channels == 1:  # one group: an ordinary convolution with M output channels
        weight, layout, groups = weight_1hwc.reshape(kh, kw, 1, multiplier), "HWIO", 1
    else:
        weight, layout, groups = weight_1hwc.reshape(kh, kw, out_channels, 1), "HWOI", channels
    acc = relax.op.nn.conv2d(
        _pad(x, window.padding, input_zero_point),
        relax.const(np.ascontiguousarray(weight)),
        strides=window.strides,
        dilation=window.dilation,
        groups=groups,
        data_layout="NHWC",
        kernel_layout=layout,
        out_dtype=ACC,
    )
    return relax.op.add(acc, relax.const(folded))


def dense(
    x: relax.Expr, weight_nk: np.ndarray, bias: np.ndarray | None, input_zero_point: int
) -> relax.Expr:
    """``x @ W.T`` for x [..., K] and weights [N, K] as TFLite stores them: int32 + bias."""
    folded = fold_bias(bias, weight_nk.astype(np.int64).sum(axis=1), input_zero_point)
    acc = relax.op.matmul(x, relax.const(np.ascontiguousarray(weight_nk.T)), out_dtype=ACC)
    return relax.op.add(acc, relax.const(folded))


def spatial_sum(x: relax.Expr, input_zero_point: int) -> relax.Expr:
    """``sum_hw (x - zx)`` over the spatial axes of NHWC ``x``, keeping them as 1 x 1: int32."""
    h, w = (int(d) for d in x.ty.shape.values[1:3])  # the batch may be symbolic
    total = relax.op.sum(relax.op.astype(x, ACC), axis=[1, 2], keepdims=True)
    if not input_zero_point:
        return total
    return relax.op.subtract(total, relax.const(int(input_zero_point) * h * w, ACC))


def reduce_sum(
    x: relax.Expr, axes: list[int], keep_dims: bool, input_zero_point: int, count: int
) -> relax.Expr:
    """``sum (x - zx)`` over ``axes`` (``count`` elements each), as the int32 sum less
    ``zx * count``: int32."""
    total = relax.op.sum(relax.op.astype(x, ACC), axis=axes, keepdims=keep_dims)
    if not input_zero_point:
        return total
    return relax.op.subtract(total, relax.const(int(input_zero_point) * count, ACC))


def window_sum(
    x: relax.Expr,
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
) -> relax.Expr:
    """Sum of each pooling window of NHWC ``x`` (padding adds nothing): int32. A depthwise
    product with unit weights, so it takes the depthwise schedule."""
    channels = int(x.ty.shape.values[3])
    ones = np.ones((1, *window, channels), np.int8)
    return depthwise_conv2d(x, ones, None, 0, Window(strides, padding), channels)


def window_counts(
    size: tuple[int, int],
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
) -> np.ndarray:
    """How many input pixels each output pixel's window covers (padding excluded): [OH, OW]."""
    top, left, bottom, right = padding

    def counts(n: int, k: int, s: int, before: int, after: int) -> np.ndarray:
        starts = np.arange(0, n + before + after - k + 1, s) - before
        return np.minimum(starts + k, n) - np.maximum(starts, 0)

    rows = counts(size[0], window[0], strides[0], top, bottom)
    cols = counts(size[1], window[1], strides[1], left, right)
    return np.outer(rows, cols).astype(np.int32)


def divide_round_away(total: relax.Expr, counts: np.ndarray) -> relax.Expr:
    """``total / counts`` rounded half away from zero (TFLite's integer average pool:
    ``(acc +- count / 2) / count`` with C's truncating division), int32."""
    if np.all(counts == counts.flat[0]):
        count = relax.const(int(counts.flat[0]), ACC)
        half = relax.const(int(counts.flat[0]) // 2, ACC)
    else:
        count = relax.const(counts[None, :, :, None])
        half = relax.const((counts // 2)[None, :, :, None])
    magnitude = relax.op.floor_divide(relax.op.add(relax.op.abs(total), half), count)
    negative = relax.op.less(total, relax.const(0, ACC))
    return relax.op.where(negative, relax.op.negative(magnitude), magnitude)

"""Integer products as Relax operators: int8/uint8 activations x int8 weights -> int32.

Each kernel returns the int32 accumulator with the input zero point already folded into a
precomputed bias, so the product itself is a pure ``sum(x * w)`` (the form a VNNI/sdot
schedule takes) and requantization is a separate elementwise epilogue
(:func:`bridge.quant.fixed_point.requantize`) that fuses into the kernel's write-back:

    sum_k (x - zx) * w + b  =  sum_k x * w + (b - zx * sum_k w)

Padding is filled with the input zero point (a real zero), so the fold holds at the borders.
Weights are constant numpy int8 arrays (TFLite's symmetric int8: weight zero point 0).

uint8 weights with zero point ``zw`` (TensorFlow 1's quantization) are passed as
``w8 = w - 128`` (always int8) and ``weight_offset = 128 - zw``, so that ``w - zw = w8 +
weight_offset``: the product stays ``uint8 x int8`` and gains ``weight_offset * sum_k x`` (each
window's sum of the padded input: strided slices of its channel sums for a convolution, the
same depthwise product with unit weights, a row sum for dense), and the fold uses the true
weight sums:

    sum_k (x - zx) * (w - zw) + b  =  sum_k x * w8 + weight_offset * sum_k x
                                     + (b - zx * sum_k (w - zw))
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


def _true_sums(weight_sums: np.ndarray, taps: int, weight_offset: int) -> np.ndarray:
    """``sum_k (w8 + weight_offset)`` over ``taps`` weights per output channel."""
    return weight_sums.astype(np.int64) + int(weight_offset) * taps


def _plus_offset(acc: relax.Expr, window_sum: relax.Expr, weight_offset: int) -> relax.Expr:
    """``acc + weight_offset * window_sum`` (int32; the sum broadcasts over channels)."""
    scaled = relax.op.multiply(window_sum, relax.const(int(weight_offset), ACC))
    return relax.op.add(acc, scaled)


def spatial_size(x: relax.Expr) -> tuple[int, int]:
    """(height, width) of NHWC ``x`` (normalized, so that it has a type); ValueError unless
    both are known integers."""
    shape = getattr(x.ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None or len(values) != 4:
        raise ValueError("a weight offset needs an NHWC input of known shape")
    try:
        return int(values[1]), int(values[2])
    except TypeError as exc:
        raise ValueError("a weight offset needs a static height and width") from exc


def _window_totals(
    plane: relax.Expr, size: tuple[int, int], kernel: tuple[int, int], window: Window
) -> relax.Expr:
    """Each output pixel's sum over its ``kernel`` taps of ``plane`` (int32 NHWC, already
    padded to ``size``): one strided slice per tap, added."""
    (h, w), (kh, kw) = size, kernel
    (sh, sw), (dh, dw) = window.strides, window.dilation
    oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    total = None
    for i in range(kh):
        for j in range(kw):
            tap = relax.op.strided_slice(
                plane,
                axes=[1, 2],
                begin=[i * dh, j * dw],
                end=[i * dh + sh * (oh - 1) + 1, j * dw + sw * (ow - 1) + 1],
                strides=[sh, sw],
            )
            total = tap if total is None else relax.op.add(total, tap)
    return total


def _offset_sums(
    x: relax.Expr, padded: relax.Expr, kernel: tuple[int, int], window: Window
) -> relax.Expr:
    """``sum_k x`` of each convolution output (padding included), over its window and every
    channel: [N, OH, OW, 1]. The channel sums, then their window totals (a one-channel
    product with unit weights instead took 7x the convolution's time on x86)."""
    h, w = spatial_size(x)
    top, left, bottom, right = window.padding
    plane = relax.op.sum(relax.op.astype(padded, ACC), axis=[3], keepdims=True)
    return _window_totals(plane, (h + top + bottom, w + left + right), kernel, window)


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
    weight_offset: int = 0,
) -> relax.Expr:
    """NHWC convolution, weights as TFLite stores them (OHWI, I the channels of one of
    ``groups`` groups): int32 accumulators + bias. A ``weight_offset`` (uint8 weights, see
    the module's docstring) needs ``groups == 1``."""
    if weight_offset and groups != 1:
        raise ValueError("a weight offset needs an ungrouped convolution")
    _, kh, kw, depth = weight_ohwi.shape
    weight = np.ascontiguousarray(weight_ohwi.transpose(1, 2, 3, 0))  # HWIO
    sums = _true_sums(
        weight_ohwi.astype(np.int64).sum(axis=(1, 2, 3)), kh * kw * depth, weight_offset
    )
    folded = fold_bias(bias, sums, input_zero_point)
    padded = _pad(x, window.padding, input_zero_point)
    acc = relax.op.nn.conv2d(
        padded,
        relax.const(weight),
        strides=window.strides,
        dilation=window.dilation,
        groups=groups,
        data_layout="NHWC",
        kernel_layout="HWIO",
        out_dtype=ACC,
    )
    if weight_offset:
        sums = _offset_sums(x, padded, (kh, kw), window)
        acc = _plus_offset(acc, sums, weight_offset)
    return relax.op.add(acc, relax.const(folded))


def depthwise_conv2d(
    x: relax.Expr,
    weight_1hwc: np.ndarray,
    bias: np.ndarray | None,
    input_zero_point: int,
    window: Window,
    channels: int,
    weight_offset: int = 0,
) -> relax.Expr:
    """NHWC depthwise convolution, weights [1, KH, KW, C * M] (output ``c * M + m`` reads
    input channel ``c``): int32 accumulators + bias (a ``weight_offset``: the module's
    docstring)."""
    _, kh, kw, out_channels = weight_1hwc.shape
    multiplier = out_channels // channels
    sums = _true_sums(weight_1hwc.astype(np.int64).sum(axis=(0, 1, 2)), kh * kw, weight_offset)
    folded = fold_bias(bias, sums, input_zero_point)
    padded = _pad(x, window.padding, input_zero_point)

    def product(w_1hwc: np.ndarray) -> relax.Expr:
        if channels == 1:  # one group: an ordinary convolution with M output channels
            weight, layout, groups = w_1hwc.reshape(kh, kw, 1, multiplier), "HWIO", 1
        else:
            weight, layout, groups = w_1hwc.reshape(kh, kw, out_channels, 1), "HWOI", channels
        return relax.op.nn.conv2d(
            padded,
            relax.const(np.ascontiguousarray(weight)),
            strides=window.strides,
            dilation=window.dilation,
            groups=groups,
            data_layout="NHWC",
            kernel_layout=layout,
            out_dtype=ACC,
        )

    acc = product(weight_1hwc)
    if weight_offset:
        # the same depthwise product with unit weights: strided slices of every channel were
        # 4x slower than this (x86, 56 x 56 x 64)
        acc = _plus_offset(acc, product(np.ones_like(weight_1hwc)), weight_offset)
    return relax.op.add(acc, relax.const(folded))


def dense(
    x: relax.Expr,
    weight_nk: np.ndarray,
    bias: np.ndarray | None,
    input_zero_point: int,
    weight_offset: int = 0,
) -> relax.Expr:
    """``x @ W.T`` for x [..., K] and weights [N, K] as TFLite stores them: int32 + bias (a
    ``weight_offset``: the module's docstring)."""
    depth = weight_nk.shape[1]
    sums = _true_sums(weight_nk.astype(np.int64).sum(axis=1), depth, weight_offset)
    folded = fold_bias(bias, sums, input_zero_point)
    acc = relax.op.matmul(x, relax.const(np.ascontiguousarray(weight_nk.T)), out_dtype=ACC)
    if weight_offset:
        row_sum = relax.op.sum(relax.op.astype(x, ACC), axis=[-1], keepdims=True)
        acc = _plus_offset(acc, row_sum, weight_offset)
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

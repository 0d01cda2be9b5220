"""Helpers shared by the spatial layer families: tuples, channels_first, TF-style padding."""

from __future__ import annotations

import math
from typing import Any

from tvm import relax
from tvm.relax import op as R

# Relax layouts for channels_last data and Keras kernels, by number of spatial dims.
DATA_LAYOUT = {1: "NWC", 2: "NHWC", 3: "NDHWC"}
KERNEL_LAYOUT = {1: "WIO", 2: "HWIO", 3: "DHWIO"}


def ntuple(value: Any, n: int) -> tuple[int, ...]:
    """Keras accepts an int or a sequence for sizes, strides and rates."""
    if isinstance(value, int):
        return (value,) * n
    values = tuple(int(v) for v in value)
    return values * n if len(values) == 1 else values


def channels_first(config: dict[str, Any]) -> bool:
    return config.get("data_format") == "channels_first"


def to_channels_last(ctx: Any, x: relax.Expr) -> relax.Expr:
    rank = len(ctx.shape(x))
    return ctx.emit(R.permute_dims(x, [0, *range(2, rank), 1]))


def to_channels_first(ctx: Any, x: relax.Expr) -> relax.Expr:
    rank = len(ctx.shape(x))
    return ctx.emit(R.permute_dims(x, [0, rank - 1, *range(1, rank - 1)]))


def channels_last_op(ctx: Any, x: relax.Expr, body) -> relax.Expr:
    """Run ``body`` (written for channels_last) on ``x`` honouring the layer's data_format."""
    if not channels_first(ctx.config):
        return body(x)
    return to_channels_first(ctx, body(to_channels_last(ctx, x)))


def same_padding(size: Any, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow/Keras 'same' padding (the extra pixel goes after); ``size`` may be symbolic
    (see :func:`symbolic_same_padding`)."""
    if not isinstance(size, int):
        return symbolic_same_padding(kernel, stride, dilation)
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def symbolic_same_padding(kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """'same' padding for a size known only at run time: one (before, after) that gives every
    size TensorFlow's windows and its ``ceil(size / stride)`` outputs. TensorFlow's padding
    depends on ``size % stride`` only; where its ``before`` does too (a window wider than the
    stride plus one), no static padding fits: ValueError, the length must be a size."""
    effective = (kernel - 1) * dilation + 1
    sizes = [stride * 4 + r for r in range(stride)]  # one size per residue
    pads = [same_padding(n, kernel, stride, dilation) for n in sizes]
    before = pads[0][0]
    after = max(a for _, a in pads)
    fits = all(
        b == before and (n + before + after - effective) // stride + 1 == math.ceil(n / stride)
        for n, (b, _) in zip(sizes, pads)
    )
    if not fits:
        raise ValueError(
            f"'same' padding with window {effective} and stride {stride} pads differently by "
            f"length: this layer needs a static length (a size in input_shapes)"
        )
    return before, after


def paddings(padding: str, sizes, kernels, strides, dilations) -> tuple[list[int], list[int]]:
    """(befores, afters) per spatial axis for Keras 'valid', 'same' or 'causal' padding."""
    befores, afters = [], []
    for size, k, s, d in zip(sizes, kernels, strides, dilations):
        if padding == "same":
            b, a = same_padding(size, k, s, d)
        elif padding == "causal":
            b, a = (k - 1) * d, 0
        else:
            b, a = 0, 0
        befores.append(b)
        afters.append(a)
    return befores, afters


def add_bias(ctx: Any, y: relax.Expr, name: str = "bias") -> relax.Expr:
    """Add the layer's bias along the last (channel) axis if it has one."""
    if not ctx.has_weight(name):
        return y
    return ctx.emit(R.add(y, ctx.weight(name, (ctx.shape(y)[-1],))))

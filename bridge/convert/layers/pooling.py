"""Pooling: Max/Average 1D/2D/3D windows, Global Average/Max 1D/2D/3D, and Keras 3's
AdaptiveAverage/AdaptiveMax 1D/2D/3D (a fixed output size from any input size)."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.context import dtype_of
from bridge.convert.registry import register
from bridge.convert.resize import apply_matrix, check_matrix
from bridge.convert.spatial import DATA_LAYOUT, channels_first, channels_last_op, ntuple, paddings

POOL_OPS = {
    ("max", 1): R.nn.max_pool1d,
    ("max", 2): R.nn.max_pool2d,
    ("avg", 1): R.nn.avg_pool1d,
    ("avg", 2): R.nn.avg_pool2d,
    ("max", 3): R.nn.max_pool3d,
    ("avg", 3): R.nn.avg_pool3d,
}


def _check_padding(config: dict[str, Any]) -> list[str]:
    padding = config.get("padding", "valid")
    return [] if padding in ("valid", "same") else [f"padding={padding!r} is not supported"]


def _window(ctx, inputs, kind: str):
    def body(x):
        n = len(ctx.shape(x)) - 2
        pool = ntuple(ctx.get("pool_size", 2), n)
        strides = ntuple(ctx.get("strides") or pool, n)
        befores, afters = paddings(
            ctx.get("padding", "valid"), ctx.shape(x)[1:-1], pool, strides, (1,) * n
        )
        extra = {"count_include_pad": False} if kind == "avg" else {}
        return ctx.emit(
            POOL_OPS[kind, n](
                x, pool, strides, padding=befores + afters, layout=DATA_LAYOUT[n], **extra
            )
        )

    return channels_last_op(ctx, inputs[0], body)


@register("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", check=_check_padding)
def max_pooling(ctx, inputs):
    return _window(ctx, inputs, "max")


@register("AveragePooling1D", "AveragePooling2D", "AveragePooling3D", check=_check_padding)
def average_pooling(ctx, inputs):
    return _window(ctx, inputs, "avg")


def _global(ctx, inputs, reduce):
    x = inputs[0]
    rank = len(ctx.shape(x))
    axes = list(range(2, rank)) if channels_first(ctx.config) else list(range(1, rank - 1))
    return ctx.emit(reduce(x, axis=axes, keepdims=bool(ctx.get("keepdims", False))))


@register("GlobalAveragePooling2D", "GlobalAveragePooling3D")
def global_average_pooling(ctx, inputs):
    return _global(ctx, inputs, R.mean)


@register("GlobalAveragePooling1D", masks="custom")
def global_average_pooling_1d(ctx, inputs):
    """With a Keras mask (``Embedding(mask_zero=True)``), the mean of the unmasked steps only."""
    x, mask = inputs[0], ctx.mask()
    if mask is None:
        return _global(ctx, inputs, R.mean)
    axis = 2 if channels_first(ctx.config) else 1
    weight = ctx.emit(R.expand_dims(ctx.emit(R.astype(mask, dtype_of(x))), axis=3 - axis))
    keepdims = bool(ctx.get("keepdims", False))
    total = ctx.emit(R.sum(ctx.emit(R.multiply(x, weight)), axis=[axis], keepdims=keepdims))
    return ctx.emit(R.divide(total, ctx.emit(R.sum(weight, axis=[axis], keepdims=keepdims))))


@register("GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D")
def global_max_pooling(ctx, inputs):
    return _global(ctx, inputs, R.max)


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """Output ``i`` pools input ``[floor(i * size / out), ceil((i + 1) * size / out))``."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _adaptive_axis(ctx, x: relax.Expr, axis: int, out: int, kind: str) -> relax.Expr:
    check_matrix(out, ctx.shape(x)[axis])
    windows = adaptive_windows(ctx.shape(x)[axis], out)
    if kind == "avg":  # a mean is linear: one averaging matrix
        matrix = np.zeros((out, ctx.shape(x)[axis]), dtype="float32")
        for i, (start, end) in enumerate(windows):
            matrix[i, start:end] = 1.0 / (end - start)
        return apply_matrix(ctx, x, axis, matrix)
    parts = [
        ctx.emit(R.max(ctx.emit(R.strided_slice(x, [axis], [s], [e])), axis=[axis], keepdims=True))
        for s, e in windows
    ]
    return ctx.emit(R.concat(parts, axis=axis)) if len(parts) > 1 else parts[0]


def _adaptive(ctx, inputs, kind: str):
    def body(x):
        n = len(ctx.shape(x)) - 2
        for axis, out in enumerate(ntuple(ctx.get("output_size"), n), start=1):
            x = _adaptive_axis(ctx, x, axis, out, kind)
        return x

    return channels_last_op(ctx, inputs[0], body)


@register("AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D", "AdaptiveAveragePooling3D")
def adaptive_average_pooling(ctx, inputs):
    return _adaptive(ctx, inputs, "avg")


@register("AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D")
def adaptive_max_pooling(ctx, inputs):
    return _adaptive(ctx, inputs, "max")

"""Pooling: Max/Average 1D/2D/3D windows and Global Average/Max 1D/2D/3D."""

from __future__ import annotations

from typing import Any

from tvm.relax import op as R

from bridge.convert.context import dtype_of
from bridge.convert.registry import register
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

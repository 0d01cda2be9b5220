"""Reshaping: Flatten, Reshape, Permute, RepeatVector, ZeroPadding/Cropping/UpSampling 1D-3D."""

from __future__ import annotations

import math
from typing import Any

from tvm.relax import op as R

from bridge.convert.registry import register
from bridge.convert.spatial import channels_first, channels_last_op, ntuple, to_channels_last


@register("Flatten")
def flatten(ctx, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    if channels_first(ctx.config) and len(shape) > 2:
        x = to_channels_last(ctx, x)
    return ctx.emit(R.reshape(x, (shape[0], math.prod(shape[1:]))))


@register("Reshape")
def reshape(ctx, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    target = [int(d) for d in ctx.get("target_shape")]
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(shape[1:]) // known
    return ctx.emit(R.reshape(x, (shape[0], *target)))


@register("Permute")
def permute(ctx, inputs):
    return ctx.emit(R.permute_dims(inputs[0], [0, *(int(d) for d in ctx.get("dims"))]))


@register("RepeatVector")
def repeat_vector(ctx, inputs):
    x = ctx.emit(R.expand_dims(inputs[0], 1))
    return ctx.emit(R.repeat(x, int(ctx.get("n")), axis=1))


def _pairs(value: Any, n: int) -> list[tuple[int, int]]:
    """Keras padding/cropping: int, (a, b) per axis, or ((before, after), ...) per axis; the 1D
    layers take an int or one (before, after) pair."""
    if isinstance(value, int):
        return [(value, value)] * n
    if n == 1 and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [(int(value[0]), int(value[1]))]
    return [tuple(v) if isinstance(v, (list, tuple)) else (int(v), int(v)) for v in value]


@register("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D")
def zero_padding(ctx, inputs):
    def body(x):
        pads = _pairs(ctx.get("padding", 1), len(ctx.shape(x)) - 2)
        width = [0, 0, *(p for pair in pads for p in pair), 0, 0]
        return ctx.emit(R.nn.pad(x, width))

    return channels_last_op(ctx, inputs[0], body)


@register("Cropping1D", "Cropping2D", "Cropping3D")
def cropping(ctx, inputs):
    def body(x):
        shape = ctx.shape(x)
        crops = _pairs(ctx.get("cropping", 0), len(shape) - 2)
        axes = list(range(1, len(shape) - 1))
        begin = [b for b, _ in crops]
        end = [shape[a] - e for a, (_, e) in zip(axes, crops)]
        return ctx.emit(R.strided_slice(x, axes, begin, end))

    return channels_last_op(ctx, inputs[0], body)


INTERPOLATION = {"nearest": "nearest_neighbor", "bilinear": "linear", "bicubic": "cubic"}


@register(
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    check=lambda c: (
        []
        if c.get("interpolation", "nearest") in INTERPOLATION
        else [f"interpolation={c.get('interpolation')!r} is not supported"]
    ),
)
def upsampling(ctx, inputs):
    def body(x):
        shape = ctx.shape(x)
        size = ntuple(ctx.get("size", 2), len(shape) - 2)
        method = ctx.get("interpolation", "nearest")
        if method == "nearest":
            for axis, factor in enumerate(size, start=1):
                x = ctx.emit(R.repeat(x, factor, axis=axis))
            return x
        out = [d * f for d, f in zip(shape[1:-1], size)]
        return ctx.emit(
            R.image.resize2d(
                x,
                out,
                layout="NHWC",
                method=INTERPOLATION[method],
                coordinate_transformation_mode="half_pixel",
            )
        )

    return channels_last_op(ctx, inputs[0], body)

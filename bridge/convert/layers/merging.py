"""Merging layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot."""

from __future__ import annotations

import math
from functools import reduce

from tvm import relax
from tvm.relax import op as R

from bridge.convert.registry import register


def _fold(ctx, inputs, op):
    return reduce(lambda a, b: ctx.emit(op(a, b)), inputs)


@register("Add")
def add(ctx, inputs):
    return _fold(ctx, inputs, R.add)


@register("Subtract")
def subtract(ctx, inputs):
    return ctx.emit(R.subtract(inputs[0], inputs[1]))


@register("Multiply")
def multiply(ctx, inputs):
    return _fold(ctx, inputs, R.multiply)


@register("Average")
def average(ctx, inputs):
    total = _fold(ctx, inputs, R.add)
    return ctx.emit(R.divide(total, relax.const(float(len(inputs)), "float32")))


@register("Maximum")
def maximum(ctx, inputs):
    return _fold(ctx, inputs, R.maximum)


@register("Minimum")
def minimum(ctx, inputs):
    return _fold(ctx, inputs, R.minimum)


@register("Concatenate")
def concatenate(ctx, inputs):
    return ctx.emit(R.concat(inputs, axis=int(ctx.get("axis", -1))))


def l2_normalize(ctx, x: relax.Expr, axis: int) -> relax.Expr:
    """``x * rsqrt(max(sum(x**2), 1e-12))`` along ``axis``, as Keras normalizes."""
    square_sum = ctx.emit(R.sum(ctx.emit(R.multiply(x, x)), axis=[axis], keepdims=True))
    inv = ctx.emit(R.rsqrt(ctx.emit(R.maximum(square_sum, relax.const(1e-12, "float32")))))
    return ctx.emit(R.multiply(x, inv))


@register("Dot")
def dot(ctx, inputs):
    """Keras' batched dot product over one axis of each input (optionally cosine-normalized)."""
    x, y = inputs
    xs, ys = ctx.shape(x), ctx.shape(y)
    axes = ctx.get("axes")
    axes = [axes, axes] if isinstance(axes, int) else [int(a) for a in axes]
    ax, ay = axes[0] % len(xs), axes[1] % len(ys)
    if ctx.get("normalize", False):
        x, y = l2_normalize(ctx, x, ax), l2_normalize(ctx, y, ay)
    # x -> (B, rest_x, K), y -> (B, K, rest_y); one batched matmul.
    x = ctx.emit(R.permute_dims(x, [i for i in range(len(xs)) if i != ax] + [ax]))
    y = ctx.emit(R.permute_dims(y, [0, ay] + [i for i in range(1, len(ys)) if i != ay]))
    rest_x = [d for i, d in enumerate(xs) if i not in (0, ax)]
    rest_y = [d for i, d in enumerate(ys) if i not in (0, ay)]
    x = ctx.emit(R.reshape(x, (xs[0], math.prod(rest_x), xs[ax])))
    y = ctx.emit(R.reshape(y, (ys[0], ys[ay], math.prod(rest_y))))
    out = ctx.emit(R.matmul(x, y))
    return ctx.emit(R.reshape(out, (xs[0], *(rest_x + rest_y or [1]))))

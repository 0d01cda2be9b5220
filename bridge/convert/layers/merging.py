"""Merging layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot."""

from __future__ import annotations

import math
from functools import reduce

from tvm import relax
from tvm.relax import op as R

from bridge.convert.registry import register


def _fold(ctx, inputs, op):
    return reduce(lambda a, b: ctx.emit(op(a, b)), inputs)


def _merge_masks(ctx, count: int) -> None:
    """Keras' mask of an elementwise merge: Keras 3 ORs the masks (none if an input has none),
    Keras 2 ANDs the masks there are."""
    masks = [ctx.mask(i) for i in range(count)]
    if ctx.keras_major >= 3:
        if all(m is not None for m in masks):
            ctx.set_masks([_fold(ctx, masks, R.logical_or)])
    elif any(m is not None for m in masks):
        ctx.set_masks([_fold(ctx, [m for m in masks if m is not None], R.logical_and)])


def elementwise(fn):
    """A merge converter that also merges the inputs' masks."""

    def merge(ctx, inputs):
        _merge_masks(ctx, len(inputs))
        return fn(ctx, inputs)

    merge.__name__, merge.__doc__ = fn.__name__, fn.__doc__
    return merge


@register("Add", masks="custom")
@elementwise
def add(ctx, inputs):
    return _fold(ctx, inputs, R.add)


@register("Subtract", masks="custom")
@elementwise
def subtract(ctx, inputs):
    return ctx.emit(R.subtract(inputs[0], inputs[1]))


@register("Multiply", masks="custom")
@elementwise
def multiply(ctx, inputs):
    return _fold(ctx, inputs, R.multiply)


@register("Average", masks="custom")
@elementwise
def average(ctx, inputs):
    total = _fold(ctx, inputs, R.add)
    return ctx.emit(R.divide(total, relax.const(float(len(inputs)), "float32")))


@register("Maximum", masks="custom")
@elementwise
def maximum(ctx, inputs):
    return _fold(ctx, inputs, R.maximum)


@register("Minimum", masks="custom")
@elementwise
def minimum(ctx, inputs):
    return _fold(ctx, inputs, R.minimum)


@register("Concatenate", masks="custom")
def concatenate(ctx, inputs):
    axis = int(ctx.get("axis", -1))
    masks = [ctx.mask(i) for i in range(len(inputs))]
    if any(m is not None for m in masks):
        ctx.set_masks([_concatenate_mask(ctx, inputs, masks, axis)])
    return ctx.emit(R.concat(inputs, axis=axis))


def _concatenate_mask(ctx, inputs, masks, axis: int) -> relax.Expr:
    """Keras' way: each input's mask broadcast to its shape (all true if it has none),
    concatenated like the inputs, then reduced over the last axis (any in Keras 3, all in 2)."""
    full = []
    for x, mask in zip(inputs, masks):
        shape = ctx.shape(x)
        if mask is None:
            full.append(ctx.emit(R.ones(shape, "bool")))
            continue
        while len(ctx.shape(mask)) < len(shape):
            mask = ctx.emit(R.expand_dims(mask, -1))
        full.append(ctx.emit(R.broadcast_to(mask, shape)))
    joined = ctx.emit(R.astype(ctx.emit(R.concat(full, axis=axis)), "float32"))
    reduce_op = R.max if ctx.keras_major >= 3 else R.min
    return ctx.emit(R.astype(ctx.emit(reduce_op(joined, axis=[-1])), "bool"))


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

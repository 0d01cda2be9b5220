"""Merging layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate."""

from __future__ import annotations

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

"""Activation layers: ReLU, LeakyReLU, PReLU, ELU, Softmax, ThresholdedReLU (Keras 2)."""

from __future__ import annotations

from tvm import relax
from tvm.relax import op as R

from bridge.convert.registry import register


def _c(value: float) -> relax.Constant:
    return relax.const(float(value), "float32")


@register("ReLU", masks="keep")
def relu(ctx, inputs):
    """Keras' general ReLU: threshold, max_value and negative_slope, in Keras' own order."""
    x = inputs[0]
    threshold = float(ctx.get("threshold", 0.0))
    max_value = ctx.config.get("max_value")
    slope = float(ctx.get("negative_slope", 0.0))
    if threshold != 0.0:
        positive = ctx.emit(R.where(ctx.emit(R.greater(x, _c(threshold))), x, _c(0.0)))
    else:
        positive = ctx.emit(R.nn.relu(x))
    if max_value is not None:
        positive = ctx.emit(R.clip(positive, 0.0, float(max_value)))
    if slope == 0.0:
        return positive
    negative = ctx.emit(R.nn.relu(ctx.emit(R.subtract(_c(threshold), x))))
    return ctx.emit(R.subtract(positive, ctx.emit(R.multiply(_c(slope), negative))))


@register("LeakyReLU", masks="keep")
def leaky_relu(ctx, inputs):
    slope = ctx.config.get("negative_slope", ctx.config.get("alpha", 0.3))
    return ctx.emit(R.nn.leakyrelu(inputs[0], float(slope)))


@register("PReLU", weights=lambda c: ["alpha"], masks="keep")
def prelu(ctx, inputs):
    x = inputs[0]
    shape = list(ctx.shape(x)[1:])
    for axis in ctx.get("shared_axes", None) or []:
        shape[axis - 1] = 1
    alpha = ctx.weight("alpha", tuple(shape))
    negative = ctx.emit(R.multiply(alpha, ctx.emit(R.minimum(x, _c(0.0)))))
    return ctx.emit(R.add(ctx.emit(R.nn.relu(x)), negative))


@register("ELU", masks="keep")
def elu(ctx, inputs):
    x = inputs[0]
    alpha = float(ctx.get("alpha", 1.0))
    expm1 = ctx.emit(R.subtract(ctx.emit(R.exp(ctx.emit(R.minimum(x, _c(0.0))))), _c(1.0)))
    return ctx.emit(
        R.where(ctx.emit(R.greater(x, _c(0.0))), x, ctx.emit(R.multiply(_c(alpha), expm1)))
    )


@register("Softmax", masks="keep")
def softmax(ctx, inputs):
    """With a Keras mask (broadcast against the input as numpy does), masked entries count as
    -1e9 (Keras 2 adds -1e9 to them) and Keras 3 zeroes them in the result."""
    x = inputs[0]
    mask = ctx.mask()
    if mask is not None:
        if ctx.keras_major >= 3:
            x = ctx.emit(R.where(mask, x, _c(-1.0e9)))
            out = _softmax(ctx, x, ctx.get("axis", -1))
            return ctx.emit(R.where(mask, out, _c(0.0)))
        dropped = ctx.emit(R.subtract(_c(1.0), ctx.emit(R.astype(mask, "float32"))))
        x = ctx.emit(R.add(x, ctx.emit(R.multiply(dropped, _c(-1.0e9)))))
    return _softmax(ctx, x, ctx.get("axis", -1))


def _softmax(ctx, x, axis):
    if isinstance(axis, int):
        return ctx.emit(R.nn.softmax(x, axis=axis))
    axes = [int(a) for a in axis]
    shifted = ctx.emit(R.subtract(x, ctx.emit(R.max(x, axis=axes, keepdims=True))))
    exp = ctx.emit(R.exp(shifted))
    return ctx.emit(R.divide(exp, ctx.emit(R.sum(exp, axis=axes, keepdims=True))))


@register("ThresholdedReLU", masks="keep")
def thresholded_relu(ctx, inputs):
    """Keras 2 only: ``x`` where ``x > theta``, else 0."""
    x = inputs[0]
    theta = float(ctx.get("theta", 1.0))
    return ctx.emit(R.where(ctx.emit(R.greater(x, _c(theta))), x, _c(0.0)))

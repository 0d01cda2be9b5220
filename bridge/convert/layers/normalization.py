"""Normalization layers: BatchNormalization (folded to one multiply-add at compile time),
LayerNormalization, GroupNormalization, UnitNormalization, RMSNormalization."""

from __future__ import annotations

from typing import Any

from tvm import relax
from tvm.relax import op as R

from bridge.convert.registry import register


def _bn_weights(config: dict[str, Any]) -> list[str]:
    names = ["gamma"] if config.get("scale", True) else []
    names += ["beta"] if config.get("center", True) else []
    return [*names, "moving_mean", "moving_variance"]


def channel_axes(axis: Any, rank: int) -> list[int]:
    axes = [axis] if isinstance(axis, int) else list(axis)
    return sorted(int(a) % rank for a in axes)


def broadcast_param(ctx, param: relax.Expr, axes: list[int], shape: tuple[int, ...]) -> relax.Expr:
    """Reshape a per-channel parameter so it broadcasts against ``shape`` along ``axes``."""
    target = [shape[i] if i in axes else 1 for i in range(len(shape))]
    return ctx.emit(R.reshape(param, target))


# Older tf.keras files name the class BatchNormalizationV1/V2 (tf.keras 2.15 still reads them).
@register(
    "BatchNormalization",
    "BatchNormalizationV1",
    "BatchNormalizationV2",
    weights=_bn_weights,
    masks="keep",
)
def batch_normalization(ctx, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    axes = channel_axes(ctx.get("axis", -1), len(shape))
    params = tuple(shape[a] for a in axes)
    eps = relax.const(float(ctx.get("epsilon", 1e-3)), "float32")
    variance = ctx.weight("moving_variance", params)
    scale = ctx.emit(R.rsqrt(ctx.emit(R.add(variance, eps))))
    if ctx.has_weight("gamma"):
        scale = ctx.emit(R.multiply(scale, ctx.weight("gamma", params)))
    shift = ctx.emit(R.negative(ctx.emit(R.multiply(ctx.weight("moving_mean", params), scale))))
    if ctx.has_weight("beta"):
        shift = ctx.emit(R.add(shift, ctx.weight("beta", params)))
    y = ctx.emit(R.multiply(x, broadcast_param(ctx, scale, axes, shape)))
    return ctx.emit(R.add(y, broadcast_param(ctx, shift, axes, shape)))


def _c(value: float) -> relax.Constant:
    return relax.const(float(value), "float32")


def _moments(ctx, x: relax.Expr, axes: list[int]) -> tuple[relax.Expr, relax.Expr]:
    """Mean and (biased) variance over ``axes``, kept for broadcasting."""
    mean = ctx.emit(R.mean(x, axis=axes, keepdims=True))
    centered = ctx.emit(R.subtract(x, mean))
    square = ctx.emit(R.multiply(centered, centered))
    return mean, ctx.emit(R.mean(square, axis=axes, keepdims=True))


def _ln_weights(config: dict[str, Any]) -> list[str]:
    rms = bool(config.get("rms_scaling", False))
    names = ["gamma"] if config.get("scale", True) or rms else []
    return names + (["beta"] if config.get("center", True) and not rms else [])


@register("LayerNormalization", weights=_ln_weights, masks="keep")
def layer_normalization(ctx, inputs):
    """Over any axes; ``rms_scaling`` is Keras 3's (it divides by the standard deviation)."""
    x = inputs[0]
    shape = ctx.shape(x)
    axes = channel_axes(ctx.get("axis", -1), len(shape))
    params = tuple(shape[a] for a in axes)
    mean, variance = _moments(ctx, x, axes)
    inv = ctx.emit(R.rsqrt(ctx.emit(R.add(variance, _c(ctx.get("epsilon", 1e-3))))))
    if not ctx.get("rms_scaling", False):
        x = ctx.emit(R.subtract(x, mean))
    y = ctx.emit(R.multiply(x, inv))
    if ctx.has_weight("gamma"):
        y = ctx.emit(R.multiply(y, broadcast_param(ctx, ctx.weight("gamma", params), axes, shape)))
    if ctx.has_weight("beta"):
        y = ctx.emit(R.add(y, broadcast_param(ctx, ctx.weight("beta", params), axes, shape)))
    return y


def _gn_weights(config: dict[str, Any]) -> list[str]:
    names = ["gamma"] if config.get("scale", True) else []
    return names + (["beta"] if config.get("center", True) else [])


@register("GroupNormalization", weights=_gn_weights, masks="keep")
def group_normalization(ctx, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    axis = int(ctx.get("axis", -1)) % len(shape)
    channels = shape[axis]
    groups = int(ctx.get("groups", 32))
    groups = channels if groups == -1 else groups
    grouped = (*shape[:axis], groups, channels // groups, *shape[axis + 1 :])
    g = ctx.emit(R.reshape(x, grouped))
    axes = [i for i in range(1, len(grouped)) if i != axis]
    mean, variance = _moments(ctx, g, axes)
    inv = ctx.emit(R.rsqrt(ctx.emit(R.add(variance, _c(ctx.get("epsilon", 1e-3))))))
    y = ctx.emit(R.reshape(ctx.emit(R.multiply(ctx.emit(R.subtract(g, mean)), inv)), shape))
    if ctx.has_weight("gamma"):
        gamma = ctx.weight("gamma", (channels,))
        y = ctx.emit(R.multiply(y, broadcast_param(ctx, gamma, [axis], shape)))
    if ctx.has_weight("beta"):
        y = ctx.emit(R.add(y, broadcast_param(ctx, ctx.weight("beta", (channels,)), [axis], shape)))
    return y


@register("UnitNormalization", masks="keep")
def unit_normalization(ctx, inputs):
    """``x / max(||x||, 1e-6)``, computed as Keras does: ``x * rsqrt(max(sum(x**2), 1e-12))``."""
    x = inputs[0]
    axes = channel_axes(ctx.get("axis", -1), len(ctx.shape(x)))
    square_sum = ctx.emit(R.sum(ctx.emit(R.multiply(x, x)), axis=axes, keepdims=True))
    return ctx.emit(R.multiply(x, ctx.emit(R.rsqrt(ctx.emit(R.maximum(square_sum, _c(1e-12)))))))


@register("RMSNormalization", weights=lambda c: ["scale"])
def rms_normalization(ctx, inputs):
    """``x * rsqrt(mean(x**2) + epsilon) * scale`` over the layer's axes."""
    x = inputs[0]
    shape = ctx.shape(x)
    axes = channel_axes(ctx.get("axis", -1), len(shape))
    mean_square = ctx.emit(R.mean(ctx.emit(R.multiply(x, x)), axis=axes, keepdims=True))
    eps = ctx.config.get("epsilon")
    inv = ctx.emit(R.rsqrt(ctx.emit(R.add(mean_square, _c(1e-7 if eps is None else eps)))))
    scale = ctx.weight("scale", tuple(shape[a] for a in axes))
    return ctx.emit(
        R.multiply(ctx.emit(R.multiply(x, inv)), broadcast_param(ctx, scale, axes, shape))
    )

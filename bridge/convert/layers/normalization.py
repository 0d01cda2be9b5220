"""Normalization layers: BatchNormalization (folded to one multiply-add at compile time)."""

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


@register("BatchNormalization", weights=_bn_weights)
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

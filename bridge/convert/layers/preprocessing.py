"""Preprocessing layers with inference semantics: Rescaling, Normalization."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.layers.normalization import broadcast_param
from bridge.convert.registry import register

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(), the floor of Normalization's std


@register("Rescaling", masks="keep")
def rescaling(ctx, inputs):
    scale = np.asarray(ctx.get("scale", 1.0), dtype="float32")
    offset = np.asarray(ctx.get("offset", 0.0), dtype="float32")
    y = ctx.emit(R.multiply(inputs[0], relax.const(scale)))
    return ctx.emit(R.add(y, relax.const(offset)))


def _normalization_weights(config: dict[str, Any]) -> list[str]:
    return [] if config.get("mean") is not None else ["mean", "variance", "count"]


def _keep_axes(axis: Any, rank: int) -> list[int]:
    if axis is None:
        return []
    axes = [axis] if isinstance(axis, int) else list(axis)
    return sorted(int(a) % rank for a in axes)


def _config_stat(value: Any, target: list[int]) -> np.ndarray:
    """A mean/variance given in the config (scalar or per-channel), shaped to broadcast."""
    array = np.asarray(value, dtype="float32")
    if array.size == int(np.prod(target)):
        return array.reshape(target)
    return np.broadcast_to(array, target).copy()


@register("Normalization", weights=_normalization_weights, masks="keep")
def normalization(ctx, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    axes = _keep_axes(ctx.config.get("axis", -1), len(shape))
    params = tuple(shape[a] for a in axes)
    if ctx.config.get("mean") is not None:
        target = [shape[i] if i in axes else 1 for i in range(len(shape))]
        mean = relax.const(_config_stat(ctx.config["mean"], target))
        variance = relax.const(_config_stat(ctx.config["variance"], target))
    else:
        mean = broadcast_param(ctx, ctx.weight("mean", params), axes, shape)
        variance = broadcast_param(ctx, ctx.weight("variance", params), axes, shape)
    std = ctx.emit(R.maximum(ctx.emit(R.sqrt(variance)), relax.const(KERAS_EPSILON, "float32")))
    if ctx.get("invert", False):
        return ctx.emit(R.add(ctx.emit(R.multiply(x, std)), mean))
    return ctx.emit(R.divide(ctx.emit(R.subtract(x, mean)), std))

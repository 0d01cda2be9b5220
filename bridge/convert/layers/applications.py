"""The custom layer classes of keras.applications models, known by name so those models convert
without user converters: ConvNeXt's LayerScale and InceptionResNetV2's CustomScaleLayer
(Keras 3 and tf.keras 2.15; Keras 2 legacy files name the latter ``Custom>CustomScaleLayer``)."""

from __future__ import annotations

from typing import Any

from tvm.relax import op as R

from bridge.convert.registry import register


def _check_layer_scale(config: dict[str, Any]) -> list[str]:
    if "projection_dim" not in config:
        return ["not keras.applications' ConvNeXt LayerScale (no projection_dim in the config)"]
    return []


@register("LayerScale", weights=lambda c: ["gamma"], check=_check_layer_scale)
def layer_scale(ctx, inputs):
    """``x * gamma``, one learned factor per channel (the last axis)."""
    x = inputs[0]
    gamma = ctx.weight("gamma", (int(ctx.get("projection_dim")),))
    return ctx.emit(R.multiply(x, gamma))


@register(
    "CustomScaleLayer",
    "Custom>CustomScaleLayer",
    check=lambda c: [] if "scale" in c else ["no 'scale' in the config"],
)
def custom_scale_layer(ctx, inputs):
    """InceptionResNetV2's residual scaling: ``inputs[0] + inputs[1] * scale``."""
    residual = ctx.emit(R.multiply(inputs[1], ctx.const(float(ctx.get("scale")))))
    return ctx.emit(R.add(inputs[0], residual))

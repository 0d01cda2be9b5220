"""Regularization layers, all identities at inference."""

from __future__ import annotations

from bridge.convert.registry import register


@register(
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    masks="keep",
)
def identity_at_inference(ctx, inputs):
    return inputs[0]

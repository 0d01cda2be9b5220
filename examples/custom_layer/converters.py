"""Converters for the custom layers of custom_scale.keras, in bridge's converter interface.

A converter is ``fn(ctx, inputs)``: it reads the layer's config (``ctx.get``), its weights
(``ctx.weight``, in the order named by ``bridge.converter(weights=...)``) and emits Relax ops
through ``ctx.emit``, returning the output tensor(s). ``CUSTOM_LAYERS`` is what
``bridge.build(..., custom_layers=...)`` and ``bridge build --custom-layers FILE:CUSTOM_LAYERS``
take: keys are a registered layer's ``"package>Name"`` or a Lambda layer's name.
"""

from __future__ import annotations

from tvm.relax import op as R

import bridge


@bridge.converter(weights=["scale", "shift"])
def scale_shift(ctx, inputs):
    """mypkg>ScaleShift: ``(x * scale + shift) * factor`` per channel."""
    x = inputs[0]
    channels = ctx.shape(x)[-1]
    y = ctx.emit(R.multiply(x, ctx.weight("scale", (channels,))))
    y = ctx.emit(R.add(y, ctx.weight("shift", (channels,))))
    return ctx.emit(R.multiply(y, ctx.const(float(ctx.get("factor", 1.0)))))


def double_minus_one(ctx, inputs):
    """The Lambda layer ``lambda t: t * 2.0 - 1.0``, rewritten as Relax (no weights)."""
    doubled = ctx.emit(R.multiply(inputs[0], ctx.const(2.0)))
    return ctx.emit(R.subtract(doubled, ctx.const(1.0)))


CUSTOM_LAYERS = {"mypkg>ScaleShift": scale_shift, "double_minus_one": double_minus_one}

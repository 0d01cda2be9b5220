"""Core layers: InputLayer, Dense, Activation."""

from __future__ import annotations

from tvm.relax import op as R

from bridge.convert.activations import activation_problem, apply_activation
from bridge.convert.registry import register
from bridge.convert.spatial import add_bias


@register("InputLayer")
def input_layer(ctx, inputs):
    """Inputs are bound by the graph walk; an InputLayer called on a tensor passes it on."""
    return inputs[0]


@register(
    "Dense",
    weights=lambda c: ["kernel", "bias"] if c.get("use_bias", True) else ["kernel"],
    activation=True,
)
def dense(ctx, inputs):
    x = inputs[0]
    kernel = ctx.weight("kernel", (ctx.shape(x)[-1], ctx.get("units")))
    return add_bias(ctx, ctx.emit(R.matmul(x, kernel)))


@register("Activation", check=lambda c: activation_problem(c.get("activation")))
def activation(ctx, inputs):
    return apply_activation(ctx, inputs[0], ctx.config.get("activation"))

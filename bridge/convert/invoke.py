"""The one way a converter is called: its function, then the config's fused ``activation`` when
the converter says it has one (``register(..., activation=True)``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.convert.activations import apply_activation

if TYPE_CHECKING:
    from tvm import relax

    from bridge.convert.context import LayerContext
    from bridge.convert.registry import Converter


def invoke(converter: Converter, ctx: LayerContext, inputs: list[relax.Expr]) -> Any:
    """``converter.fn(ctx, inputs)`` with the fused activation applied to each output; returns
    what the converter returns (one expression, or a list/tuple of them)."""
    result = converter.fn(ctx, inputs)
    if not converter.activation:
        return result
    spec = ctx.config.get("activation")
    if isinstance(result, (list, tuple)):
        return [apply_activation(ctx, out, spec) for out in result]
    return apply_activation(ctx, result, spec)

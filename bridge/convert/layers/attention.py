"""Attention layers: Attention (dot-product, Luong style; ``score_mode`` dot or concat)."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.registry import register

MASK_VALUE = 1.0e9  # Keras subtracts this from masked float32 scores


def _attention_weights(config: dict[str, Any]) -> list[str]:
    names = ["scale"] if config.get("use_scale", False) else []
    return names + (["concat_score_weight"] if config.get("score_mode", "dot") == "concat" else [])


def _check_attention(config: dict[str, Any]) -> list[str]:
    mode = config.get("score_mode", "dot")
    return [] if mode in ("dot", "concat") else [f"score_mode={mode!r} is not supported"]


def _scalar(ctx, name: str) -> relax.Expr:
    """A scalar weight (Keras stores shape (); it may arrive as (1,))."""
    weight = ctx.weight(name)
    return weight if ctx.shape(weight) in ((), (1,)) else ctx.weight(name, ())


@register("Attention", weights=_attention_weights, check=_check_attention)
def attention(ctx, inputs):
    """``softmax(scores(q, k)) @ v`` with ``inputs`` [query, value] or [query, value, key];
    the call's ``use_causal_mask`` and ``return_attention_scores`` are honoured."""
    if ctx.call.kwargs.get("mask") is not None:
        ctx.fail("masks passed to the call are not supported")
    query, value = inputs[0], inputs[1]
    key = inputs[2] if len(inputs) > 2 else value
    scale = _scalar(ctx, "scale") if ctx.has_weight("scale") else None
    if ctx.get("score_mode", "dot") == "dot":
        scores = ctx.emit(R.matmul(query, ctx.emit(R.permute_dims(key, [0, 2, 1]))))
        if scale is not None:
            scores = ctx.emit(R.multiply(scores, scale))
    else:
        pairs = ctx.emit(
            R.add(ctx.emit(R.expand_dims(query, -2)), ctx.emit(R.expand_dims(key, -3)))
        )
        if scale is not None:
            pairs = ctx.emit(R.multiply(scale, pairs))
        summed = ctx.emit(R.sum(ctx.emit(R.tanh(pairs)), axis=[-1]))
        scores = ctx.emit(R.multiply(_scalar(ctx, "concat_score_weight"), summed))
    if ctx.call.kwargs.get("use_causal_mask", False):
        steps_q, steps_v = ctx.shape(scores)[-2:]
        causal = np.triu(np.full((steps_q, steps_v), -MASK_VALUE, dtype="float32"), 1)
        scores = ctx.emit(R.add(scores, relax.const(causal, "float32")))
    weights = ctx.emit(R.nn.softmax(scores, axis=-1))
    output = ctx.emit(R.matmul(weights, value))
    return [output, weights] if ctx.call.kwargs.get("return_attention_scores", False) else output

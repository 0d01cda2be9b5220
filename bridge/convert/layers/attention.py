"""Attention layers: Attention (dot-product, Luong style; ``score_mode`` dot or concat) and
MultiHeadAttention (self/cross, causal mask, attention scores as a second output)."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.registry import register

MASK_VALUE = 1.0e9  # Keras subtracts this from masked float32 scores


def _causal_mask(ctx, steps_q: int, steps_k: int) -> relax.Expr:
    """-MASK_VALUE above the diagonal, as ops: a constant would be steps_q * steps_k floats."""
    full = ctx.emit(R.full((steps_q, steps_k), ctx.const(-MASK_VALUE)))
    return ctx.emit(R.triu(full, 1))


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
        scores = ctx.emit(R.add(scores, _causal_mask(ctx, *ctx.shape(scores)[-2:])))
    weights = ctx.emit(R.nn.softmax(scores, axis=-1))
    output = ctx.emit(R.matmul(weights, value))
    return [output, weights] if ctx.call.kwargs.get("return_attention_scores", False) else output


MHA_PARTS = ("query", "key", "value", "output")


def _mha_weights(config: dict[str, Any]) -> list[str]:
    names = ("kernel", "bias") if config.get("use_bias", True) else ("kernel",)
    return [f"{part}/{name}" for part in MHA_PARTS for name in names]


def _check_mha(config: dict[str, Any]) -> list[str]:
    reasons = []
    axes = config.get("attention_axes")
    if axes not in (None, 1, [1], (1,)):
        reasons.append(f"attention_axes={axes!r} is not supported (only the default, axis 1)")
    if config.get("use_gate"):
        reasons.append("use_gate=True is not supported")
    if config.get("sliding_window") is not None:
        reasons.append("sliding_window is not supported")
    return reasons


def _project(ctx, x: relax.Expr, part: str, heads: int, depth: int) -> relax.Expr:
    """``einsum('abc,cde->abde', x, kernel) + bias`` as one matmul, then (B, heads, T, depth)."""
    batch, steps, features = ctx.shape(x)
    kernel = ctx.weight(f"{part}/kernel", (features, heads, depth))
    y = ctx.emit(R.matmul(x, ctx.emit(R.reshape(kernel, (features, heads * depth)))))
    if ctx.has_weight(f"{part}/bias"):
        bias = ctx.weight(f"{part}/bias", (heads, depth))
        y = ctx.emit(R.add(y, ctx.emit(R.reshape(bias, (heads * depth,)))))
    y = ctx.emit(R.reshape(y, (batch, steps, heads, depth)))
    return ctx.emit(R.permute_dims(y, [0, 2, 1, 3]))


@register("MultiHeadAttention", weights=_mha_weights, check=_check_mha)
def multi_head_attention(ctx, inputs):
    """Scaled dot-product attention over ``num_heads`` projected heads, rank-3 inputs.

    ``value`` and ``key`` come positionally (Keras 3) or as call kwargs (Keras 2, Keras 3's
    ``key``); the call's ``use_causal_mask`` and ``return_attention_scores`` are honoured."""
    query = inputs[0]
    value = inputs[1] if len(inputs) > 1 else ctx.call_tensor("value")
    key = inputs[2] if len(inputs) > 2 else ctx.call_tensor("key")
    value = query if value is None else value
    key = value if key is None else key
    if any(len(ctx.shape(t)) != 3 for t in (query, value, key)):
        ctx.fail("only rank-3 (batch, steps, features) inputs are supported")
        return query
    heads, key_dim = int(ctx.get("num_heads")), int(ctx.get("key_dim"))
    value_dim = int(ctx.get("value_dim") or key_dim)
    q = _project(ctx, query, "query", heads, key_dim)
    k = _project(ctx, key, "key", heads, key_dim)
    v = _project(ctx, value, "value", heads, value_dim)
    q = ctx.emit(R.multiply(q, ctx.const(1.0 / np.sqrt(float(key_dim)))))
    scores = ctx.emit(R.matmul(q, ctx.emit(R.permute_dims(k, [0, 1, 3, 2]))))
    if ctx.call_arg("use_causal_mask", False):
        scores = ctx.emit(R.add(scores, _causal_mask(ctx, *ctx.shape(scores)[-2:])))
    weights = ctx.emit(R.nn.softmax(scores, axis=-1))
    attended = ctx.emit(R.permute_dims(ctx.emit(R.matmul(weights, v)), [0, 2, 1, 3]))
    batch, steps = ctx.shape(query)[:2]
    attended = ctx.emit(R.reshape(attended, (batch, steps, heads * value_dim)))
    out_kernel = ctx.weight("output/kernel")
    out_shape = ctx.shape(out_kernel)[2:]
    width = int(np.prod(out_shape))
    flat = ctx.weight("output/kernel", (heads, value_dim, *out_shape))
    output = ctx.emit(R.matmul(attended, ctx.emit(R.reshape(flat, (heads * value_dim, width)))))
    if ctx.has_weight("output/bias"):
        bias = ctx.weight("output/bias", tuple(out_shape))
        output = ctx.emit(R.add(output, ctx.emit(R.reshape(bias, (width,)))))
    if len(out_shape) != 1:
        output = ctx.emit(R.reshape(output, (batch, steps, *out_shape)))
    return [output, weights] if ctx.call_arg("return_attention_scores", False) else output

"""Attention layers: Attention (dot-product, Luong style; ``score_mode`` dot or concat),
AdditiveAttention (Bahdanau style), MultiHeadAttention (self/cross, any ``attention_axes``) and
GroupQueryAttention (Keras 3); the multi-head layers with Keras 3.15's ``use_gate`` and
``sliding_window`` too.

Every one honours the call's ``use_causal_mask`` and ``return_attention_scores`` and the Keras
masks of its inputs: a masked value (or key) step gets no attention, a masked query step gives
zeros (Attention, AdditiveAttention) or attends nowhere in particular (the multi-head layers,
whose softmax then spreads evenly, as in Keras). The multi-head layers also take the call's
``attention_mask`` tensor (a model input or a computed tensor; nonzero means attend), combined
with the other masks by AND.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tvm import relax, topi
from tvm.relax import op as R

from bridge.convert.context import dtype_of
from bridge.convert.registry import register

MASK_VALUE = 1.0e9  # Keras pushes masked float32 scores down by this
Expr = relax.Expr


def _scalar(ctx, name: str) -> Expr:
    """A scalar weight (Keras stores shape (); it may arrive as (1,))."""
    weight = ctx.weight(name)
    return weight if ctx.shape(weight) in ((), (1,)) else ctx.weight(name, ())


def _causal(ctx, steps_q: int, steps_k: int) -> Expr:
    """``True`` where query step i may attend key step j (j <= i); built by ops, since a
    constant would hold steps_q * steps_k values."""
    ones = ctx.emit(R.ones((steps_q, steps_k), "float32"))
    return ctx.emit(R.astype(ctx.emit(R.tril(ones)), "bool"))


def _and(ctx, a: Expr | None, b: Expr | None) -> Expr | None:
    if a is None or b is None:
        return a if b is None else b
    return ctx.emit(R.logical_and(a, b))


def softmax(ctx, scores: Expr) -> Expr:
    """Softmax over the last axis as max, ``fast_exp`` (TOPI's polynomial exponential, about
    1e-7 relative error, which vectorizes where ``exp`` makes one libm call per element), sum
    and divide: 3-4x faster than the legalized ``nn.softmax`` on CPUs."""
    top = ctx.emit(R.max(scores, axis=[-1], keepdims=True))
    exp = ctx.bb.emit_te(topi.fast_exp, ctx.emit(R.subtract(scores, top)))
    return ctx.emit(R.divide(exp, ctx.emit(R.sum(exp, axis=[-1], keepdims=True))))


def _apply_mask(ctx, scores: Expr, allowed: Expr | None) -> Expr:
    """Scores where ``allowed`` is false pushed down by ``MASK_VALUE`` (broadcasting)."""
    if allowed is None:
        return scores
    lowered = ctx.emit(R.subtract(scores, relax.const(MASK_VALUE, "float32")))
    return ctx.emit(R.where(allowed, scores, lowered))


# --- Attention, AdditiveAttention --------------------------------------------------------------
def _attention_weights(config: dict[str, Any]) -> list[str]:
    names = ["scale"] if config.get("use_scale", False) else []
    return names + (["concat_score_weight"] if config.get("score_mode", "dot") == "concat" else [])


def _check_attention(config: dict[str, Any]) -> list[str]:
    mode = config.get("score_mode", "dot")
    return [] if mode in ("dot", "concat") else [f"score_mode={mode!r} is not supported"]


def _additive_scores(
    ctx, query: Expr, key: Expr, scale: Expr | None, scale_inside: bool = False
) -> Expr:
    """``sum(scale * tanh(q[:, :, None] + k[:, None]), -1)``: (B, Tq, Tk); Attention's concat
    mode scales inside: ``tanh(scale * (q + k))``."""
    pairs = ctx.emit(R.add(ctx.emit(R.expand_dims(query, -2)), ctx.emit(R.expand_dims(key, -3))))
    if scale is not None and scale_inside:
        pairs = ctx.emit(R.multiply(scale, pairs))
    pairs = ctx.emit(R.tanh(pairs))
    if scale is not None and not scale_inside:
        pairs = ctx.emit(R.multiply(scale, pairs))
    return ctx.emit(R.sum(pairs, axis=[-1]))


def _attend(ctx, inputs: list[Expr], scores: Expr):
    """Softmax over the keys (value mask and causal mask applied), times the values; a masked
    query step gives zeros. The output's mask is the query's."""
    value = inputs[1]
    q_mask, v_mask = ctx.mask(0), ctx.mask(1)
    allowed = None if v_mask is None else ctx.emit(R.expand_dims(v_mask, -2))
    if ctx.call_arg("use_causal_mask", False):
        allowed = _and(ctx, allowed, _causal(ctx, *ctx.shape(scores)[-2:]))
    weights = softmax(ctx, _apply_mask(ctx, scores, allowed))
    output = ctx.emit(R.matmul(weights, value))
    if q_mask is not None:
        keep = ctx.emit(R.expand_dims(q_mask, -1))
        output = ctx.emit(R.where(keep, output, ctx.emit(R.zeros_like(output))))
    ctx.set_masks([q_mask])
    return [output, weights] if ctx.call_arg("return_attention_scores", False) else output


@register("Attention", weights=_attention_weights, check=_check_attention, masks="custom")
def attention(ctx, inputs):
    """``softmax(scores(q, k)) @ v`` with ``inputs`` [query, value] or [query, value, key]."""
    query, value = inputs[0], inputs[1]
    key = inputs[2] if len(inputs) > 2 else value
    scale = _scalar(ctx, "scale") if ctx.has_weight("scale") else None
    if ctx.get("score_mode", "dot") == "dot":
        scores = ctx.emit(R.matmul(query, ctx.emit(R.permute_dims(key, [0, 2, 1]))))
        if scale is not None:
            scores = ctx.emit(R.multiply(scores, scale))
    else:
        summed = _additive_scores(ctx, query, key, scale, scale_inside=True)
        scores = ctx.emit(R.multiply(_scalar(ctx, "concat_score_weight"), summed))
    return _attend(ctx, inputs, scores)


@register(
    "AdditiveAttention",
    weights=lambda c: ["scale"] if c.get("use_scale", True) else [],
    masks="custom",
)
def additive_attention(ctx, inputs):
    """Bahdanau scores ``sum(scale * tanh(q + k))``; ``scale`` has one value per feature."""
    query, value = inputs[0], inputs[1]
    key = inputs[2] if len(inputs) > 2 else value
    scale = ctx.weight("scale", (ctx.shape(key)[-1],)) if ctx.has_weight("scale") else None
    return _attend(ctx, inputs, _additive_scores(ctx, query, key, scale))


# --- MultiHeadAttention, GroupQueryAttention ---------------------------------------------------
MHA_PARTS = ("query", "key", "gate", "value", "output")  # Keras' weight order


def _mha_weights(config: dict[str, Any]) -> list[str]:
    names = ("kernel", "bias") if config.get("use_bias", True) else ("kernel",)
    parts = [p for p in MHA_PARTS if p != "gate" or config.get("use_gate", False)]
    return [f"{part}/{name}" for part in parts for name in names]


def _check_mha(config: dict[str, Any]) -> list[str]:
    window = config.get("sliding_window")
    if window is None or (isinstance(window, int) and not isinstance(window, bool) and window > 0):
        return []
    return [f"sliding_window={window!r} is not a positive integer"]


def _project(ctx, x: Expr, part: str, heads: int, depth: int) -> Expr:
    """``einsum('...c,cde->...de', x, kernel) + bias`` as one matmul: (B, *positions, N, D)."""
    shape = ctx.shape(x)
    kernel = ctx.weight(f"{part}/kernel", (shape[-1], heads, depth))
    y = ctx.emit(R.matmul(x, ctx.emit(R.reshape(kernel, (shape[-1], heads * depth)))))
    if ctx.has_weight(f"{part}/bias"):
        bias = ctx.weight(f"{part}/bias", (heads, depth))
        y = ctx.emit(R.add(y, ctx.emit(R.reshape(bias, (heads * depth,)))))
    return ctx.emit(R.reshape(y, (*shape[:-1], heads, depth)))


def _attention_axes(config: dict[str, Any], rank: int) -> list[int]:
    """The attended axes of a rank-``rank`` input (Keras' default: every axis but batch and
    features), as non-negative axes of that input."""
    axes = config.get("attention_axes")
    if axes is None:
        return list(range(1, rank - 1))
    axes = [axes] if isinstance(axes, int) else list(axes)
    return sorted(a % (rank - 1) if a < 0 else a for a in axes)


def _to_groups(ctx, x: Expr, axes: list[int]) -> Expr:
    """(B, *positions, N, D) -> (B, others*N, attended, D): the attended axes flattened last
    before the depth, every other position axis folded with the heads."""
    shape = ctx.shape(x)
    rank = len(shape)
    heads = rank - 2
    others = [a for a in range(1, heads) if a not in axes]
    x = ctx.emit(R.permute_dims(x, [0, *others, heads, *axes, rank - 1]))
    groups = math.prod(shape[a] for a in others) * shape[heads]
    return ctx.emit(R.reshape(x, (shape[0], groups, math.prod(shape[a] for a in axes), shape[-1])))


def _from_groups(ctx, y: Expr, like: Expr, axes: list[int]) -> Expr:
    """The inverse of ``_to_groups`` for an output of ``like``'s positions and heads."""
    shape = ctx.shape(like)
    rank = len(shape)
    heads = rank - 2
    others = [a for a in range(1, heads) if a not in axes]
    order = [0, *others, heads, *axes]
    y = ctx.emit(R.reshape(y, (*[shape[a] for a in order], ctx.shape(y)[-1])))
    return ctx.emit(R.permute_dims(y, list(np.argsort([*order, rank - 1]))))


def _band(ctx, steps_q: int, steps_k: int, window: int) -> Expr:
    """``True`` where ``|i - j| < window`` (Keras' symmetric sliding window), built by ops."""
    rows = ctx.emit(R.reshape(ctx.emit(R.arange(0, steps_q, 1, "int32")), (steps_q, 1)))
    cols = ctx.emit(R.reshape(ctx.emit(R.arange(0, steps_k, 1, "int32")), (1, steps_k)))
    distance = ctx.emit(R.abs(ctx.emit(R.subtract(rows, cols))))
    return ctx.emit(R.less(distance, relax.const(window, "int32")))


def _mha_allowed(
    ctx, masks: list[Expr | None], steps: tuple[int, int], attention_mask: Expr | None
) -> Expr | None:
    """Keras' attention mask (B, T, S): the call's ``attention_mask`` AND the query, value and
    key masks AND the causal and sliding-window masks, shaped (B, 1, T, S) for the heads."""
    q_mask, v_mask, k_mask = masks
    allowed = None if q_mask is None else ctx.emit(R.expand_dims(q_mask, -1))
    for mask in (v_mask, k_mask):
        if mask is not None:
            allowed = _and(ctx, allowed, ctx.emit(R.expand_dims(mask, -2)))
    if ctx.call_arg("use_causal_mask", False):
        allowed = _and(ctx, allowed, _causal(ctx, *steps))
    if ctx.get("sliding_window") is not None:
        allowed = _and(ctx, allowed, _band(ctx, *steps, int(ctx.get("sliding_window"))))
    if attention_mask is not None and dtype_of(attention_mask) != "bool":
        zero = relax.const(0, dtype_of(attention_mask))
        attention_mask = ctx.emit(R.not_equal(attention_mask, zero))
    allowed = _and(ctx, attention_mask, allowed)
    while allowed is not None and len(ctx.shape(allowed)) < 4:  # (T, S), (B, T, S): add heads
        allowed = ctx.emit(R.expand_dims(allowed, -3))
    return allowed


def _multi_head(ctx, inputs, heads: int, kv_heads: int, key_dim: int, value_dim: int):
    """The shared body of MultiHeadAttention and GroupQueryAttention (whose key/value heads are
    each repeated for ``heads // kv_heads`` query heads)."""
    query = inputs[0]
    value = inputs[1] if len(inputs) > 1 else ctx.call_tensor("value")
    key = inputs[2] if len(inputs) > 2 else ctx.call_tensor("key")
    value_mask = ctx.mask(1) if len(inputs) > 1 else _first(ctx.call_tensor_masks("value"))
    key_mask = ctx.mask(2) if len(inputs) > 2 else _first(ctx.call_tensor_masks("key"))
    value = query if value is None else value
    key, key_mask = (value, None) if key is None else (key, key_mask)
    rank = len(ctx.shape(query))
    axes = _attention_axes(ctx.config, rank)
    masks = [ctx.mask(0), value_mask, key_mask]
    attention_mask = ctx.call_tensor("attention_mask")
    masked = any(m is not None for m in [*masks, attention_mask])
    banded = ctx.call_arg("use_causal_mask", False) or ctx.get("sliding_window") is not None
    if (masked or banded) and (rank != 3 or axes != [1]):
        ctx.fail("masks, use_causal_mask and sliding_window are supported for rank-3 inputs only")
    q = _project(ctx, query, "query", heads, key_dim)
    k = _project(ctx, key, "key", kv_heads, key_dim)
    v = _project(ctx, value, "value", kv_heads, value_dim)
    if kv_heads != heads:
        k = ctx.emit(R.repeat(k, heads // kv_heads, axis=-2))
        v = ctx.emit(R.repeat(v, heads // kv_heads, axis=-2))
    q = ctx.emit(R.multiply(q, ctx.const(1.0 / math.sqrt(float(key_dim)))))
    qg, kg, vg = (_to_groups(ctx, t, axes) for t in (q, k, v))
    scores = ctx.emit(R.matmul(qg, ctx.emit(R.permute_dims(kg, [0, 1, 3, 2]))))
    allowed = _mha_allowed(ctx, masks, ctx.shape(scores)[-2:], attention_mask)
    weights = softmax(ctx, _apply_mask(ctx, scores, allowed))
    scores_out = ctx.call_arg("return_attention_scores", False)
    if allowed is not None and scores_out and ctx.keras_major >= 3:
        # Keras 3 computes returned scores with its masked Softmax layer, which zeroes masked
        # entries (a fully masked query row attends to nothing); without scores its fused
        # attention leaves such a row uniform, as Keras 2 always does.
        weights = ctx.emit(R.where(allowed, weights, ctx.emit(R.zeros_like(weights))))
    attended = _from_groups(ctx, ctx.emit(R.matmul(weights, vg)), q, axes)
    if ctx.get("use_gate", False):  # sigmoid(query projected like the values) gates each head
        gate = _project(ctx, query, "gate", heads, value_dim)
        attended = ctx.emit(R.multiply(attended, ctx.emit(R.sigmoid(gate))))
    output = _output_projection(ctx, attended, heads, value_dim)
    ctx.set_masks([masks[0]])
    if not scores_out:
        return output
    # Keras' score layout: (B, other positions..., N, attended query..., attended key...)
    q_shape, k_shape = ctx.shape(q), ctx.shape(k)
    others = [q_shape[a] for a in range(1, rank - 1) if a not in axes]
    layout = (q_shape[0], *others, heads, *[q_shape[a] for a in axes], *[k_shape[a] for a in axes])
    return [output, ctx.emit(R.reshape(weights, layout))]


def _first(items: list):
    return items[0] if items else None


def _output_projection(ctx, attended: Expr, heads: int, value_dim: int) -> Expr:
    """``einsum('...NH,NHO->...O')`` with the output kernel (N, H, *output_shape)."""
    shape = ctx.shape(attended)
    out_shape = ctx.shape(ctx.weight("output/kernel"))[2:]
    width = math.prod(out_shape)
    kernel = ctx.weight("output/kernel", (heads, value_dim, *out_shape))
    flat = ctx.emit(R.reshape(attended, (*shape[:-2], heads * value_dim)))
    output = ctx.emit(R.matmul(flat, ctx.emit(R.reshape(kernel, (heads * value_dim, width)))))
    if ctx.has_weight("output/bias"):
        bias = ctx.weight("output/bias", tuple(out_shape))
        output = ctx.emit(R.add(output, ctx.emit(R.reshape(bias, (width,)))))
    if len(out_shape) != 1:
        output = ctx.emit(R.reshape(output, (*shape[:-2], *out_shape)))
    return output


# Keras 3 names the projections ``query_dense``, Keras 2.15 (new layout) ``_query_dense``;
# Keras 3.15's optional gate projection is ``_gate_dense`` in both multi-head layers.
PROJECTIONS = ("query", "key", "gate", "value", "output")


@register(
    "MultiHeadAttention",
    weights=_mha_weights,
    check=_check_mha,
    masks="custom",
    sublayers=tuple(f"{u}{p}_dense" for p in PROJECTIONS for u in ("", "_")),
)
def multi_head_attention(ctx, inputs):
    """Scaled dot-product attention over ``num_heads`` projected heads, along
    ``attention_axes``. ``value`` and ``key`` come positionally (Keras 3) or as call kwargs
    (Keras 2, Keras 3's ``key``)."""
    heads, key_dim = int(ctx.get("num_heads")), int(ctx.get("key_dim"))
    return _multi_head(ctx, inputs, heads, heads, key_dim, int(ctx.get("value_dim") or key_dim))


@register(
    "GroupQueryAttention",
    weights=_mha_weights,
    check=_check_mha,
    masks="custom",
    sublayers=tuple(f"_{p}_dense" for p in PROJECTIONS),
)
def group_query_attention(ctx, inputs):
    """Multi-head attention whose ``num_key_value_heads`` key/value heads are shared by groups
    of query heads (Keras 3's GroupedQueryAttention, rank-3 inputs)."""
    heads, kv_heads = int(ctx.get("num_query_heads")), int(ctx.get("num_key_value_heads"))
    head_dim = int(ctx.get("head_dim"))
    return _multi_head(ctx, inputs, heads, kv_heads, head_dim, head_dim)

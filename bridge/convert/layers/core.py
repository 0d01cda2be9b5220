"""Core layers: InputLayer, Identity, Dense, EinsumDense, Activation, Embedding, Masking,
ReversibleEmbedding."""

from __future__ import annotations

import re
import string
from typing import Any

from tvm import relax
from tvm.relax import op as R

from bridge.convert.activations import activation_problem, apply_activation
from bridge.convert.context import dtype_of
from bridge.convert.registry import register
from bridge.convert.spatial import add_bias


@register("InputLayer")
def input_layer(ctx, inputs):
    """Inputs are bound by the graph walk; an InputLayer called on a tensor passes it on."""
    return inputs[0]


@register("Identity", masks="keep")
def identity(ctx, inputs):
    return inputs[0]


@register(
    "Dense",
    weights=lambda c: ["kernel", "bias"] if c.get("use_bias", True) else ["kernel"],
    activation=True,
    masks="keep",
)
def dense(ctx, inputs):
    x = inputs[0]
    kernel = ctx.weight("kernel", (ctx.shape(x)[-1], ctx.get("units")))
    return add_bias(ctx, ctx.emit(R.matmul(x, kernel)))


# The three equation forms Keras' EinsumDense accepts (no ellipsis, left, right).
EINSUM_FORMS = (
    r"[a-zA-Z]+,[a-zA-Z]+->[a-zA-Z]+",
    r"\.\.\.[a-zA-Z]+,[a-zA-Z]+->\.\.\.[a-zA-Z]+",
    r"[a-zA-Z]{2,}\.\.\.,[a-zA-Z]+->[a-zA-Z]{2,}\.\.\.",
)


def _check_einsum(config: dict[str, Any]) -> list[str]:
    equation = str(config.get("equation", ""))
    if not any(re.fullmatch(form, equation) for form in EINSUM_FORMS):
        return [f"equation {equation!r} is not a form Keras' EinsumDense accepts"]
    if config.get("lora_rank"):
        return ["LoRA kernels (lora_rank) are not supported"]
    return []


def _einsum_specs(equation: str, shape: tuple[int, ...]) -> tuple[str, str, str, int, bool]:
    """(input, kernel, output) specs with any ``...`` spelled out as letters; elided count;
    whether the ellipsis is on the left."""
    lhs, out = equation.split("->")
    inp, kernel = lhs.split(",")
    elided = len(shape) - len(inp.replace("...", ""))
    left = inp.startswith("...")
    if "..." in inp:
        free = "".join(c for c in string.ascii_letters if c not in equation)[:elided]
        inp, out = inp.replace("...", free), out.replace("...", free)
    return inp, kernel, out, elided if "..." in lhs else 0, left


@register(
    "EinsumDense",
    weights=lambda c: ["kernel", "bias"] if c.get("bias_axes") else ["kernel"],
    check=_check_einsum,
    activation=True,
)
def einsum_dense(ctx, inputs):
    """``einsum(equation, x, kernel) + bias``; weight shapes follow Keras' own analysis."""
    x = inputs[0]
    shape = ctx.shape(x)
    equation = ctx.get("equation")
    inp, kernel_spec, out, elided, left = _einsum_specs(equation, shape)
    partial = ctx.get("output_shape")
    partial = [partial] if isinstance(partial, int) else list(partial)
    if left:  # the batch is one of the elided dimensions
        partial = list(shape[1:elided]) + partial
    elif elided:
        partial = partial + list(shape[len(shape) - elided :])
    full = dict(zip(out, [shape[0], *partial]))
    dims = dict(zip(inp, shape))
    dim = lambda c: full[c] if full.get(c) is not None else dims[c]  # noqa: E731
    kernel = ctx.weight("kernel", tuple(dim(c) for c in kernel_spec))
    y = ctx.emit(R.einsum([x, kernel], f"{inp},{kernel_spec}->{out}"))
    bias_axes = ctx.get("bias_axes")
    if bias_axes:
        spec = equation.split("->")[1].replace("...", "")
        tail = spec[min(spec.find(c) for c in bias_axes) :]
        bias_shape = [dim(c) if c in bias_axes else 1 for c in tail]
        bias_shape += [1] * (elided if not left else 0)
        y = ctx.emit(R.add(y, ctx.weight("bias", tuple(bias_shape))))
    return y


@register("Activation", check=lambda c: activation_problem(c.get("activation")), masks="keep")
def activation(ctx, inputs):
    return apply_activation(ctx, inputs[0], ctx.config.get("activation"))


def _check_embedding(config: dict[str, Any]) -> list[str]:
    return ["LoRA embeddings (lora_rank) are not supported"] if config.get("lora_rank") else []


@register("Embedding", weights=lambda c: ["embeddings"], check=_check_embedding, masks="custom")
def embedding(ctx, inputs):
    """A row lookup; non-integer inputs are truncated to int32, as Keras casts them. An id out
    of range gives NaNs (as Keras 3 on JAX; ``take``'s default would read out of bounds). With
    ``mask_zero`` the output's mask is ``ids != 0``."""
    ids = x = inputs[0]
    if not dtype_of(x).startswith(("int", "uint")):
        x = ctx.emit(R.astype(x, "int32"))
    if ctx.get("mask_zero", False):
        ctx.set_masks([ctx.emit(R.not_equal(ids, relax.const(0, dtype_of(ids))))])
    table = ctx.weight("embeddings", (ctx.get("input_dim"), ctx.get("output_dim")))
    return ctx.emit(R.take(table, x, axis=0, mode="nan"))


@register("Masking", masks="custom")
def masking(ctx, inputs):
    """Steps whose features all equal ``mask_value`` are zeroed and masked out."""
    x = inputs[0]
    value = relax.const(float(ctx.get("mask_value", 0.0)), dtype_of(x))
    differs = ctx.emit(R.astype(ctx.emit(R.not_equal(x, value)), dtype_of(x)))
    keep = ctx.emit(R.max(differs, axis=-1, keepdims=True))
    ctx.set_masks([ctx.emit(R.astype(ctx.emit(R.squeeze(keep, axis=[-1])), "bool"))])
    return ctx.emit(R.multiply(x, keep))


def _reversible_weights(config: dict[str, Any]) -> list[str]:
    tied = config.get("tie_weights", True)
    return ["embeddings"] if tied else ["embeddings", "reverse_embeddings"]


@register(
    "ReversibleEmbedding",
    weights=_reversible_weights,
    check=lambda c: (
        _check_embedding(c) + (["reverse_dtype is not supported"] if c.get("reverse_dtype") else [])
    ),
)
def reversible_embedding(ctx, inputs):
    """Keras 3's tied input/output embedding: a lookup, or with the call's ``reverse=True`` the
    logits ``x @ embeddings.T`` (or ``@ reverse_embeddings``), optionally soft-capped."""
    if not ctx.call_arg("reverse", False):
        return embedding(ctx, inputs)
    dims = (ctx.get("input_dim"), ctx.get("output_dim"))
    if ctx.has_weight("reverse_embeddings"):
        kernel = ctx.weight("reverse_embeddings", dims[::-1])
    else:
        kernel = ctx.emit(R.permute_dims(ctx.weight("embeddings", dims), [1, 0]))
    logits = ctx.emit(R.matmul(inputs[0], kernel))
    cap = ctx.config.get("logit_soft_cap")
    if cap is None:
        return logits
    capped = ctx.emit(R.tanh(ctx.emit(R.divide(logits, ctx.const(float(cap))))))
    return ctx.emit(R.multiply(capped, ctx.const(float(cap))))

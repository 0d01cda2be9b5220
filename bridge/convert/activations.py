"""Keras activation functions by name, and the one place fused ``activation=`` configs are applied.

Definitions follow Keras 3 (``keras.activations``); ``hard_sigmoid`` follows the file's Keras
version, since Keras 2 defined it as ``clip(0.2x + 0.5, 0, 1)`` and Keras 3 as ``relu6(x + 3) / 6``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.context import static_shape

Emit = Callable[[relax.Expr], relax.Expr]
Activation = Callable[[Emit, relax.Expr, int], relax.Expr]


def _c(value: float) -> relax.Constant:
    return relax.const(value, "float32")


def _where(emit: Emit, cond: relax.Expr, a: relax.Expr, b: relax.Expr) -> relax.Expr:
    return emit(R.where(emit(cond), a, b))


def _softplus(emit: Emit, x: relax.Expr) -> relax.Expr:
    # log(1 + exp(x)) = max(x, 0) + log(1 + exp(-|x|)), stable for large |x|.
    tail = emit(R.exp(emit(R.negative(emit(R.abs(x))))))
    return emit(R.add(emit(R.maximum(x, _c(0.0))), emit(R.log(emit(R.add(_c(1.0), tail))))))


def _elu(emit: Emit, x: relax.Expr, alpha: float) -> relax.Expr:
    negative = emit(
        R.multiply(_c(alpha), emit(R.subtract(emit(R.exp(emit(R.minimum(x, _c(0.0))))), _c(1.0))))
    )
    return _where(emit, R.greater(x, _c(0.0)), x, negative)


def _relu6_over_6(emit: Emit, x: relax.Expr) -> relax.Expr:
    return emit(R.divide(emit(R.clip(emit(R.add(x, _c(3.0))), 0.0, 6.0)), _c(6.0)))


def hard_sigmoid(emit: Emit, x: relax.Expr, keras_major: int) -> relax.Expr:
    if keras_major < 3:
        return emit(R.clip(emit(R.add(emit(R.multiply(x, _c(0.2))), _c(0.5))), 0.0, 1.0))
    return _relu6_over_6(emit, x)


def _shrink(emit: Emit, x: relax.Expr, soft: bool, t: float = 0.5) -> relax.Expr:
    if not soft:
        return _where(emit, R.greater(emit(R.abs(x)), _c(t)), x, _c(0.0))
    inner = _where(emit, R.less(x, _c(-t)), emit(R.add(x, _c(t))), _c(0.0))
    return _where(emit, R.greater(x, _c(t)), emit(R.subtract(x, _c(t))), inner)


def _glu(emit: Emit, x: relax.Expr, axis: int = -1) -> relax.Expr:
    halves = emit(R.split(x, 2, axis=axis))
    a, b = emit(relax.TupleGetItem(halves, 0)), emit(relax.TupleGetItem(halves, 1))
    return emit(R.multiply(a, emit(R.sigmoid(b))))


def sparsemax(emit: Emit, x: relax.Expr, axis: int = -1) -> relax.Expr:
    """Sparsemax as Keras 3 computes it. Note Keras sums the *cumulative* sums over the support
    when it computes the threshold (not the sorted logits as in Martins & Astudillo); models
    were trained with Keras' version, so that is the one reproduced here."""
    shape = list(static_shape(x))
    axis = axis % len(shape)
    n = shape[axis]
    ranks_shape = [1] * len(shape)
    ranks_shape[axis] = n
    ranks = relax.const(np.arange(1, n + 1, dtype="float32").reshape(ranks_shape))
    z = emit(R.sort(x, axis=axis, descending=True))
    cumulative = emit(R.cumsum(z, axis=axis))
    support = emit(R.greater(emit(R.add(_c(1.0), emit(R.multiply(ranks, z)))), cumulative))
    support_f = emit(R.astype(support, "float32"))
    k = emit(R.sum(support_f, axis=[axis], keepdims=True))
    total = emit(R.sum(emit(R.multiply(support_f, cumulative)), axis=[axis], keepdims=True))
    tau = emit(R.divide(emit(R.subtract(total, _c(1.0))), k))
    return emit(R.maximum(emit(R.subtract(x, tau)), _c(0.0)))


def _silu(emit: Emit, x: relax.Expr) -> relax.Expr:
    return emit(R.multiply(x, emit(R.sigmoid(x))))


SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805

ACTIVATIONS: dict[str, Activation] = {
    "linear": lambda e, x, k: x,
    "relu": lambda e, x, k: e(R.nn.relu(x)),
    "relu6": lambda e, x, k: e(R.clip(x, 0.0, 6.0)),
    "sigmoid": lambda e, x, k: e(R.sigmoid(x)),
    "tanh": lambda e, x, k: e(R.tanh(x)),
    "softmax": lambda e, x, k: e(R.nn.softmax(x, axis=-1)),
    "log_softmax": lambda e, x, k: e(R.nn.log_softmax(x, axis=-1)),
    "softplus": lambda e, x, k: _softplus(e, x),
    "softsign": lambda e, x, k: e(R.divide(x, e(R.add(_c(1.0), e(R.abs(x)))))),
    "elu": lambda e, x, k: _elu(e, x, 1.0),
    "selu": lambda e, x, k: e(R.multiply(_c(SELU_SCALE), _elu(e, x, SELU_ALPHA))),
    "celu": lambda e, x, k: e(
        R.add(e(R.maximum(x, _c(0.0))), e(R.minimum(_c(0.0), _elu(e, x, 1.0))))
    ),
    "exponential": lambda e, x, k: e(R.exp(x)),
    "leaky_relu": lambda e, x, k: e(R.nn.leakyrelu(x, 0.2)),
    "silu": lambda e, x, k: _silu(e, x),
    "swish": lambda e, x, k: _silu(e, x),
    "gelu": lambda e, x, k: e(
        R.multiply(
            e(R.multiply(_c(0.5), x)),
            e(R.add(_c(1.0), e(R.erf(e(R.multiply(x, _c(1.0 / math.sqrt(2.0)))))))),
        )
    ),
    "hard_sigmoid": hard_sigmoid,
    "hard_silu": lambda e, x, k: e(R.multiply(x, _relu6_over_6(e, x))),
    "hard_swish": lambda e, x, k: e(R.multiply(x, _relu6_over_6(e, x))),
    "hard_tanh": lambda e, x, k: e(R.clip(x, -1.0, 1.0)),
    "mish": lambda e, x, k: e(R.multiply(x, e(R.tanh(_softplus(e, x))))),
    "log_sigmoid": lambda e, x, k: e(R.negative(_softplus(e, e(R.negative(x))))),
    "glu": lambda e, x, k: _glu(e, x),
    "soft_shrink": lambda e, x, k: _shrink(e, x, soft=True),
    "hard_shrink": lambda e, x, k: _shrink(e, x, soft=False),
    "tanh_shrink": lambda e, x, k: e(R.subtract(x, e(R.tanh(x)))),
    "squareplus": lambda e, x, k: e(
        R.multiply(_c(0.5), e(R.add(x, e(R.sqrt(e(R.add(e(R.multiply(x, x)), _c(4.0))))))))
    ),
    "sparse_plus": lambda e, x, k: _where(
        e,
        R.less_equal(x, _c(-1.0)),
        _c(0.0),
        _where(
            e,
            R.greater_equal(x, _c(1.0)),
            x,
            e(R.multiply(_c(0.25), e(R.multiply(e(R.add(x, _c(1.0))), e(R.add(x, _c(1.0))))))),
        ),
    ),
    "sparse_sigmoid": lambda e, x, k: e(
        R.clip(e(R.multiply(_c(0.5), e(R.add(x, _c(1.0))))), 0.0, 1.0)
    ),
    "sparsemax": lambda e, x, k: sparsemax(e, x),
}


def activation_name(spec: Any) -> str | None:
    """The activation name in a config value: a string, or a serialized function object."""
    if spec is None:
        return "linear"
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and isinstance(spec.get("config"), str):
        return spec["config"]  # {"class_name": "function", "config": "relu", ...}
    return None


def activation_problem(spec: Any) -> list[str]:
    name = activation_name(spec)
    if name in ACTIVATIONS:
        return []
    shown = name if name is not None else spec
    return [f"activation {shown!r} is not supported (known: {', '.join(sorted(ACTIVATIONS))})"]


def apply_activation(ctx: Any, x: relax.Expr, spec: Any) -> relax.Expr:
    """Apply a Keras activation (by config value) to ``x`` inside ``ctx``'s block builder."""
    return ACTIVATIONS[activation_name(spec)](ctx.emit, x, ctx.keras_major)

"""tf.keras 2's TFOpLambda and SlicingOpLambda: a TensorFlow function called on Keras tensors in a
functional model (``x + y``, ``tf.reshape(x, s)``, ``x[:, 1:]``) is saved as a layer naming the
function (``config["function"]``, e.g. ``"math.add"``); its first tensor comes positionally and
every other argument as a call kwarg (a tensor, or a constant). Only TensorFlow functions with a
known, exact translation are accepted (each one in a tf.keras 2.15 fixture, under the name
TensorFlow records); preflight names any other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import relax
from tvm.relax import op as R

from bridge.convert.layers.ops import REDUCTIONS, activation_fn, constant, getitem, reshape_to
from bridge.convert.registry import register


def _other(ctx, key: str, x: relax.Expr) -> relax.Expr:
    """The call's second operand ``key``: a tensor kwarg or a constant."""
    tensor = ctx.call_tensor(key)
    return tensor if tensor is not None else constant(ctx.call_arg(key), x)


def _binary(op: Callable, key: str = "y") -> Callable:
    return lambda ctx, inputs: ctx.emit(op(inputs[0], _other(ctx, key, inputs[0])))


def _unary(op: Callable) -> Callable:
    return lambda ctx, inputs: ctx.emit(op(inputs[0]))


def _activation(name: str) -> Callable:
    apply = activation_fn(name)
    return lambda ctx, inputs: apply(ctx, inputs[0])


def _reduce(kind: str) -> Callable:
    def convert(ctx, inputs):
        keepdims = ctx.call_arg("keepdims", ctx.call_arg("keep_dims", False))
        return REDUCTIONS[kind](ctx, inputs[0], ctx.call_arg("axis"), keepdims)

    return convert


def _swap_last(ctx, x: relax.Expr) -> relax.Expr:
    rank = len(ctx.shape(x))
    return ctx.emit(R.permute_dims(x, [*range(rank - 2), rank - 1, rank - 2]))


def _matmul(ctx, inputs):
    """``a @ b`` with ``transpose_a/b`` (``adjoint_a/b`` too: float tensors are real)."""
    a, b = inputs[0], _other(ctx, "b", inputs[0])
    if ctx.call_arg("transpose_a", False) or ctx.call_arg("adjoint_a", False):
        a = _swap_last(ctx, a)
    if ctx.call_arg("transpose_b", False) or ctx.call_arg("adjoint_b", False):
        b = _swap_last(ctx, b)
    return ctx.emit(R.matmul(a, b))


def _transpose(ctx, inputs):
    perm = ctx.call_arg("perm")
    return ctx.emit(R.permute_dims(inputs[0], None if perm is None else [int(p) for p in perm]))


def _squeeze(ctx, inputs):
    axis = ctx.call_arg("axis")
    axes = None if axis is None else [axis] if isinstance(axis, int) else list(axis)
    return ctx.emit(R.squeeze(inputs[0], axes))


def _softmax(op: Callable) -> Callable:
    return lambda ctx, inputs: ctx.emit(op(inputs[0], axis=int(ctx.call_arg("axis", -1))))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{f: _binary(R.add) for f in ("__operators__.add", "math.add")},
    "math.subtract": _binary(R.subtract),
    "math.multiply": _binary(R.multiply),
    "math.truediv": _binary(R.divide),
    "math.maximum": _binary(R.maximum),
    "math.minimum": _binary(R.minimum),
    "math.pow": _binary(R.power),
    "math.squared_difference": lambda ctx, inputs: _square(
        ctx, ctx.emit(R.subtract(inputs[0], _other(ctx, "y", inputs[0])))
    ),
    "math.negative": _unary(R.negative),
    "math.abs": _unary(R.abs),
    "math.sqrt": _unary(R.sqrt),
    "math.rsqrt": _unary(R.rsqrt),
    "math.exp": _unary(R.exp),
    "math.log": _unary(R.log),
    "math.square": lambda ctx, inputs: _square(ctx, inputs[0]),
    "math.tanh": _unary(R.tanh),
    "math.erf": _unary(R.erf),
    "math.sigmoid": _unary(R.sigmoid),
    "nn.relu": _unary(R.nn.relu),
    "nn.relu6": _activation("relu6"),
    "nn.silu": _activation("silu"),
    "math.softplus": _activation("softplus"),
    "nn.softmax": _softmax(R.nn.softmax),
    "nn.log_softmax": _softmax(R.nn.log_softmax),
    "clip_by_value": lambda ctx, inputs: ctx.emit(
        R.clip(
            inputs[0],
            float(ctx.call_arg("clip_value_min")),
            float(ctx.call_arg("clip_value_max")),
        )
    ),
    "reshape": lambda ctx, inputs: reshape_to(ctx, inputs[0], list(ctx.call_arg("shape"))),
    "compat.v1.transpose": _transpose,
    "linalg.matrix_transpose": lambda ctx, inputs: _swap_last(ctx, inputs[0]),
    "concat": lambda ctx, inputs: ctx.emit(R.concat(inputs, axis=int(ctx.call_arg("axis")))),
    "expand_dims": lambda ctx, inputs: ctx.emit(
        R.expand_dims(inputs[0], int(ctx.call_arg("axis")))
    ),
    "compat.v1.squeeze": _squeeze,
    **{f"math.reduce_{k}": _reduce(k) for k in REDUCTIONS},
    "linalg.matmul": _matmul,
    "__operators__.getitem": lambda ctx, inputs: getitem(
        ctx, inputs[0], ctx.call_arg("slice_spec")
    ),
}


def _square(ctx, x: relax.Expr) -> relax.Expr:
    return ctx.emit(R.multiply(x, x))


def _check(config: dict[str, Any]) -> list[str]:
    function = config.get("function")
    if function in FUNCTIONS:
        return []
    return [
        f"TensorFlow function tf.{function} is not supported (bridge translates "
        f"{len(FUNCTIONS)} TensorFlow functions: {', '.join(sorted(FUNCTIONS))})"
    ]


@register("TFOpLambda", "SlicingOpLambda", check=_check)
def tf_op_lambda(ctx, inputs):
    return FUNCTIONS[ctx.config["function"]](ctx, inputs)

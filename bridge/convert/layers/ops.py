"""Keras 3 operations recorded in functional graphs: ``x + 3.0`` becomes a node of class
``Add`` from module ``keras.src.ops.numpy`` whose call mixes tensors and constants
(keras.applications' MobileNetV3 builds hard-swish this way, ConvNeXt its residual adds).
Registered as ``ops.<module>.<Class>``; the tensor helpers here serve tf.keras 2's TFOpLambda too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import reduce
from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.activations import ACTIVATIONS
from bridge.convert.context import dtype_of
from bridge.convert.registry import register


def constant(value: Any, like: relax.Expr | None = None) -> relax.Constant:
    """A call's constant argument, in the dtype of the tensor it meets (float32 by default)."""
    dtype = dtype_of(like) if like is not None else "float32"
    return relax.const(np.asarray(value, dtype=dtype), dtype)


def operands(ctx, inputs: list[relax.Expr]) -> list[relax.Expr]:
    """The call's positional arguments in order: tensors, and constants as scalars/arrays."""
    constants = ctx.call.constants
    tensors = iter(inputs)
    like = inputs[0] if inputs else None
    return [
        constant(constants[i], like) if i in constants else next(tensors)
        for i in range(len(inputs) + len(constants))
    ]


# --- helpers shared with tf.keras 2's TFOpLambda ---------------------------------------------


def axes_of(axis: Any, rank: int) -> list[int] | None:
    """A reduction's ``axis`` (None: all axes) as sorted non-negative ints."""
    if axis is None:
        return None
    axes = [axis] if isinstance(axis, int) else list(axis)
    return sorted(int(a) % rank for a in axes)


def reshape_to(ctx, x: relax.Expr, target: list[int]) -> relax.Expr:
    """Reshape to a full target shape (batch included) with at most one -1."""
    target = [int(d) for d in target]
    if -1 in target:
        total = math.prod(ctx.shape(x))  # symbolic when the batch is
        known = math.prod(d for d in target if d != -1)
        target = [total // known if d == -1 else d for d in target]
    return ctx.emit(R.reshape(x, target))


def _slice_item(item: Any) -> Any:
    """One index of a serialized subscript: a slice (Keras 3 ``__slice__`` or tf.keras 2's
    start/stop/step dict), an int, None (a new axis) or an Ellipsis."""
    if isinstance(item, dict):
        if item.get("class_name") == "__slice__":
            item = item["config"]
        elif item.get("class_name") == "__ellipsis__":
            return Ellipsis
        if {"start", "stop", "step"} <= set(item):
            return slice(item["start"], item["stop"], item["step"])
    if item in ("...", "Ellipsis", "__ellipsis__"):
        return Ellipsis
    if item is None or isinstance(item, int):
        return item
    raise ValueError(f"unsupported subscript {item!r}")


def getitem(ctx, x: relax.Expr, spec: Any) -> relax.Expr:
    """``x[spec]`` with static bounds: slices with positive steps, ints, None and Ellipsis."""
    items = [_slice_item(i) for i in (spec if isinstance(spec, list) else [spec])]
    shape = ctx.shape(x)
    fill = [slice(None)] * (len(shape) - sum(1 for i in items if i not in (None, Ellipsis)))
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at : at + 1] = fill
    else:
        items += fill
    cuts: list[tuple[int, int, int, int]] = []  # (axis, begin, end, step)
    out_shape: list = []
    axis = 0
    for item in items:
        if item is None:
            out_shape.append(1)
            continue
        size = shape[axis]
        if isinstance(item, int):
            cuts.append((axis, item % size, item % size + 1, 1))
        elif item == slice(None):
            out_shape.append(size)
        else:
            if not isinstance(size, int):
                raise ValueError("slicing the batch dimension is not supported")
            start, stop, step = item.indices(size)
            if step < 1:
                raise ValueError("negative slice steps are not supported")
            cuts.append((axis, start, max(stop, start), step))
            out_shape.append(len(range(start, stop, step)))
        axis += 1
    if cuts:
        axes, begins, ends, steps = (list(c) for c in zip(*cuts))
        x = ctx.emit(R.strided_slice(x, axes, begins, ends, steps))
    return ctx.emit(R.reshape(x, out_shape)) if list(ctx.shape(x)) != out_shape else x


def reduction(op: Callable) -> Callable:
    def apply(ctx, x: relax.Expr, axis: Any, keepdims: bool) -> relax.Expr:
        return ctx.emit(op(x, axis=axes_of(axis, len(ctx.shape(x))), keepdims=bool(keepdims)))

    return apply


REDUCTIONS = {
    "mean": reduction(R.mean),
    "sum": reduction(R.sum),
    "max": reduction(R.max),
    "min": reduction(R.min),
    "prod": reduction(R.prod),
}


def activation_fn(name: str) -> Callable:
    def apply(ctx, x: relax.Expr) -> relax.Expr:
        return ACTIVATIONS[name](ctx.emit, x, ctx.keras_major)

    return apply


UNARY: dict[str, Callable] = {
    "Negative": lambda ctx, x: ctx.emit(R.negative(x)),
    "Absolute": lambda ctx, x: ctx.emit(R.abs(x)),
    "Sqrt": lambda ctx, x: ctx.emit(R.sqrt(x)),
    "Square": lambda ctx, x: ctx.emit(R.multiply(x, x)),
    "Exp": lambda ctx, x: ctx.emit(R.exp(x)),
    "Log": lambda ctx, x: ctx.emit(R.log(x)),
    "Tanh": lambda ctx, x: ctx.emit(R.tanh(x)),
}
# keras.ops.nn functions of x alone, by their Keras activation name.
NN_UNARY = {
    "Sigmoid": "sigmoid",
    "Relu": "relu",
    "Relu6": "relu6",
    "Silu": "silu",
    "HardSigmoid": "hard_sigmoid",
    "HardSilu": "hard_silu",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "Elu": "elu",
    "Selu": "selu",
    "LogSigmoid": "log_sigmoid",
}


# --- Keras 3 operation nodes ------------------------------------------------------------------


def _binary(op):
    def convert(ctx, inputs):
        return reduce(lambda a, b: ctx.emit(op(a, b)), operands(ctx, inputs))

    convert.__name__ = convert.__qualname__ = f"ops_{op.__name__}"
    convert.__doc__ = f"Elementwise {op.__name__} of tensors and constants, in argument order."
    return convert


BINARY = {
    "Add": R.add,
    "Subtract": R.subtract,
    "Multiply": R.multiply,
    "Divide": R.divide,
    "TrueDivide": R.divide,
    "Maximum": R.maximum,
    "Minimum": R.minimum,
    "Power": R.power,
    "Matmul": R.matmul,
}
for _name, _op in BINARY.items():
    register(f"ops.numpy.{_name}")(_binary(_op))


# The operations Keras 3 records for masks: ``Embedding(mask_zero=True)`` and ``Masking`` compute
# their mask with them, merge layers combine masks with them, and the result reaches the layers
# that read masks as their call's ``mask=`` tensor.
def _same_dtype_operands(ctx, inputs: list[relax.Expr]) -> list[relax.Expr]:
    """Like ``operands``, constants in the dtype of the tensors (``ids != 0`` on int32 ids)."""
    dtype = dtype_of(inputs[0])
    constants = ctx.call.constants
    tensors = iter(inputs)
    return [
        relax.const(np.asarray(constants[i], dtype=dtype)) if i in constants else next(tensors)
        for i in range(len(inputs) + len(constants))
    ]


@register("ops.numpy.NotEqual")
def not_equal(ctx, inputs):
    return ctx.emit(R.not_equal(*_same_dtype_operands(ctx, inputs)))


@register("ops.numpy.LogicalOr")
def logical_or(ctx, inputs):
    return reduce(lambda a, b: ctx.emit(R.logical_or(a, b)), inputs)


def _axes(ctx) -> list[int] | None:
    axis = ctx.get("axis")
    return None if axis is None else [int(a) for a in np.atleast_1d(axis)]


@register("ops.numpy.Any")
def any_(ctx, inputs):
    """``any`` as a max over booleans cast to int8."""
    as_int = ctx.emit(R.astype(inputs[0], "int8"))
    found = ctx.emit(R.max(as_int, axis=_axes(ctx), keepdims=bool(ctx.get("keepdims", False))))
    return ctx.emit(R.astype(found, "bool"))


@register("ops.numpy.ExpandDims")
def expand_dims(ctx, inputs):
    return ctx.emit(R.expand_dims(inputs[0], _axes(ctx)))


def _filled(ctx, x: relax.Expr, value: int) -> relax.Expr:
    dtype = str(ctx.get("dtype") or dtype_of(x))
    return ctx.emit(R.full(ctx.shape(x), relax.const(value, dtype), dtype))


@register("ops.numpy.ZerosLike")
def zeros_like(ctx, inputs):
    return _filled(ctx, inputs[0], 0)


@register("ops.numpy.OnesLike")
def ones_like(ctx, inputs):
    return _filled(ctx, inputs[0], 1)


def _unary(fn: Callable) -> Callable:
    return lambda ctx, inputs: fn(ctx, inputs[0])


for _name, _fn in UNARY.items():
    register(f"ops.numpy.{_name}")(_unary(_fn))
register("ops.math.Erf")(_unary(lambda ctx, x: ctx.emit(R.erf(x))))
for _name, _activation in NN_UNARY.items():
    register(f"ops.nn.{_name}")(_unary(activation_fn(_activation)))


@register("ops.nn.Softmax", "ops.nn.LogSoftmax")
def ops_softmax(ctx, inputs):
    op = R.nn.softmax if ctx.layer.class_name == "Softmax" else R.nn.log_softmax
    return ctx.emit(op(inputs[0], axis=int(ctx.get("axis", -1))))


@register("ops.numpy.Clip")
def ops_clip(ctx, inputs):
    return ctx.emit(R.clip(inputs[0], float(ctx.get("x_min")), float(ctx.get("x_max"))))


@register("ops.numpy.Reshape")
def ops_reshape(ctx, inputs):
    return reshape_to(ctx, inputs[0], list(ctx.get("newshape")))


@register("ops.numpy.Transpose")
def ops_transpose(ctx, inputs):
    axes = ctx.config.get("axes")
    return ctx.emit(R.permute_dims(inputs[0], None if axes is None else [int(a) for a in axes]))


@register("ops.numpy.Concatenate")
def ops_concatenate(ctx, inputs):
    return ctx.emit(R.concat(inputs, axis=int(ctx.get("axis", 0))))


@register("ops.numpy.Squeeze")
def ops_squeeze(ctx, inputs):
    axis = ctx.config.get("axis")
    rank = len(ctx.shape(inputs[0]))
    return ctx.emit(R.squeeze(inputs[0], None if axis is None else axes_of(axis, rank)))


def _reduce(kind: str):
    def convert(ctx, inputs):
        return REDUCTIONS[kind](ctx, inputs[0], ctx.config.get("axis"), ctx.get("keepdims", False))

    convert.__name__ = convert.__qualname__ = f"ops_{kind}"
    return convert


for _kind in ("mean", "sum", "max", "min", "prod"):
    register(f"ops.numpy.{_kind.capitalize()}")(_reduce(_kind))


@register("ops.numpy.GetItem")
def ops_getitem(ctx, inputs):
    return getitem(ctx, inputs[0], ctx.call.constants.get(1))

"""Keras 3 operations recorded in functional graphs: ``x + 3.0`` becomes a node of class
``Add`` from module ``keras.src.ops.numpy`` whose call mixes tensors and constants
(keras.applications' MobileNetV3 builds hard-swish this way). Registered as ``ops.numpy.*``."""

from __future__ import annotations

from functools import reduce

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.context import dtype_of
from bridge.convert.registry import register


def operands(ctx, inputs: list[relax.Expr]) -> list[relax.Expr]:
    """The call's positional arguments in order: tensors, and constants as float32 scalars."""
    constants = ctx.call.constants
    tensors = iter(inputs)
    return [
        relax.const(np.asarray(constants[i], dtype="float32")) if i in constants else next(tensors)
        for i in range(len(inputs) + len(constants))
    ]


def _binary(op):
    def convert(ctx, inputs):
        return reduce(lambda a, b: ctx.emit(op(a, b)), operands(ctx, inputs))

    convert.__name__ = convert.__qualname__ = f"ops_{op.__name__}"
    convert.__doc__ = f"Elementwise {op.__name__} of tensors and constants, in argument order."
    return convert


# Only operations with a numeric test against Keras (MobileNetV3's hard-swish uses both).
for _name, _op in {"Add": R.add, "Multiply": R.multiply}.items():
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


@register("ops.numpy.Concatenate")
def concatenate(ctx, inputs):
    return ctx.emit(R.concat(inputs, axis=int(ctx.get("axis", 0))))

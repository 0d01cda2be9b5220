"""Keras 3 operations recorded in functional graphs: ``x + 3.0`` becomes a node of class
``Add`` from module ``keras.src.ops.numpy`` whose call mixes tensors and constants
(keras.applications' MobileNetV3 builds hard-swish this way). Registered as ``ops.numpy.*``."""

from __future__ import annotations

from functools import reduce

import numpy as np
from tvm import relax
from tvm.relax import op as R

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

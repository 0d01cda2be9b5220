"""Shape arithmetic evaluated at translation: integer operators on shapes become values.

TensorFlow's converter computes shapes at run time wherever a model was traced with an unknown
dimension: ``SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE`` for a Keras ``Reshape``,
``SHAPE -> GATHER -> REDUCE_PROD -> CONCATENATION`` for a ``Dense`` on a 3-D tensor. The shapes
stored in such files are placeholders (1 where the signature says -1), so bridge does not
read them: ``SHAPE`` takes the shape TVM inferred for its input, and the operators below
evaluate with numpy on those values. A value is an integer array when every dimension is known
(it then reads as a constant: TVM's ``RESHAPE`` takes no computed shape, and a quantized
model's ``SHAPE`` needs no integer kernel), or an object array holding TIR expressions where a
dimension is symbolic (``input_shapes={"x": (1, "T")}``): ``RESHAPE`` then reshapes to them.

Only integer values are evaluated (never float tensors: they stay operators, computed in the
model's own arithmetic); an operator whose options are not understood is left to TVM.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

Options = Callable[[str], object]  # table name -> the operator's parsed options, or None


def parse_options(op, table: str):
    """``op``'s builtin options as ``tflite.<table>``, or None if it has none."""
    raw = op.BuiltinOptions()
    if raw is None:
        return None
    parsed = getattr(importlib.import_module(f"tflite.{table}"), table)()
    parsed.Init(raw.Bytes, raw.Pos)
    return parsed


def _bit(mask: int, i: int) -> bool:
    return bool(mask >> i & 1)


def strided_slice(options: Options, args: list[np.ndarray]):
    x, begin, end, strides = args[:4]
    opts = options("StridedSliceOptions")
    if opts is None or opts.EllipsisMask() or opts.NewAxisMask():
        return None
    index: list = []
    for i, (b, e, s) in enumerate(zip(begin.tolist(), end.tolist(), strides.tolist())):
        if opts.Offset():
            e = b + e
        if _bit(opts.ShrinkAxisMask(), i):
            index.append(b)
            continue
        start = None if _bit(opts.BeginMask(), i) else b
        stop = None if _bit(opts.EndMask(), i) else e
        index.append(slice(start, stop, s))
    return x[tuple(index)]


def pack(options: Options, args):
    opts = options("PackOptions")
    return np.stack(args, axis=opts.Axis() if opts else 0)


def concatenation(options: Options, args):
    opts = options("ConcatenationOptions")
    if opts is not None and opts.FusedActivationFunction():
        return None
    return np.concatenate(args, axis=opts.Axis() if opts else 0)


def gather(options: Options, args):
    opts = options("GatherOptions")
    if opts is not None and opts.BatchDims():
        return None
    return np.take(args[0], args[1].astype(np.int64), axis=opts.Axis() if opts else 0)


def reducer(function: Callable) -> Callable:
    def evaluate(options: Options, args):
        opts = options("ReducerOptions")
        axes = tuple(int(a) for a in np.atleast_1d(args[1]))
        return function(args[0], axis=axes, keepdims=bool(opts and opts.KeepDims()))

    return evaluate


def binary(function: Callable, table: str | None) -> Callable:
    def evaluate(options: Options, args):
        opts = options(table) if table else None
        if opts is not None and opts.FusedActivationFunction():
            return None
        return function(args[0], args[1])

    return evaluate


def reshape(options: Options, args):
    if len(args) < 2:
        return None
    return args[0].reshape([int(d) for d in np.atleast_1d(args[1])])


def squeeze(options: Options, args):
    opts = options("SqueezeOptions")
    dims = (
        tuple(int(d) for d in opts.SqueezeDimsAsNumpy())
        if opts and opts.SqueezeDimsLength()
        else None
    )
    return np.squeeze(args[0], axis=dims)


EVALUATORS: dict[str, Callable] = {
    "STRIDED_SLICE": strided_slice,
    "PACK": pack,
    "CONCATENATION": concatenation,
    "GATHER": gather,
    "REDUCE_PROD": reducer(np.prod),
    "SUM": reducer(np.sum),
    "REDUCE_MAX": reducer(np.max),
    "REDUCE_MIN": reducer(np.min),
    "ADD": binary(np.add, "AddOptions"),
    "SUB": binary(np.subtract, "SubOptions"),
    "MUL": binary(np.multiply, "MulOptions"),
    "FLOOR_DIV": binary(np.floor_divide, None),
    "MAXIMUM": binary(np.maximum, None),
    "MINIMUM": binary(np.minimum, None),
    "CAST": lambda options, args: args[0],
    "RESHAPE": reshape,
    "SQUEEZE": squeeze,
    "EXPAND_DIMS": lambda options, args: np.expand_dims(args[0], int(np.ravel(args[1])[0])),
}


def evaluate(name: str, options: Options, args: list[np.ndarray]) -> np.ndarray | None:
    """``name`` applied to known integer (or symbolic object) values, or None if bridge does
    not evaluate it."""
    function = EVALUATORS.get(name)
    if function is None or any(a.dtype.kind not in "iuO" for a in args):
        return None
    try:
        result = function(options, args)
    except (ValueError, IndexError, TypeError):  # not evaluable as numpy reads it: TVM's
        return None
    return None if result is None else np.asarray(result)

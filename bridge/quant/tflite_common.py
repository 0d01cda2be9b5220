"""What every integer converter of a quantized TFLite operator reads: tensor quantization,
option tables, fused activations (shared by :mod:`bridge.quant.tflite` and the operator
modules beside it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")
INTEGER = ("int8", "uint8")


@dataclass(frozen=True)
class QParams:
    """A tensor's quantization: scales (one, or one per channel along ``axis``), zero points."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int
    dtype: str

    @property
    def zp(self) -> int:
        return int(self.zero_point.flat[0])

    @property
    def pair(self) -> tuple[float, int]:
        """(scale, zero point) of a per-tensor quantization."""
        return float(self.scale[0]), self.zp


def qparams(converter, tensor) -> QParams | None:
    """The quantization of a TFLite tensor wrapper, or None when it has none."""
    if tensor.tensor_idx < 0:
        return None
    q = tensor.tensor.Quantization()
    if q is None or not q.ScaleLength():
        return None
    zero = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1, np.int64)
    dtype = converter.get_tensor_type_str(tensor.tensor.Type())
    return QParams(
        np.asarray(q.ScaleAsNumpy(), np.float32),
        np.asarray(zero, np.int64),
        int(q.QuantizedDimension()),
        dtype,
    )


def options(op, options_class):
    """The operator's builtin options as ``options_class``."""
    parsed = options_class()
    table = op.BuiltinOptions()
    parsed.Init(table.Bytes, table.Pos)
    return parsed


def activation(converter, code: int) -> str | None:
    """A fused activation's name, or None when it has no integer clamp."""
    name = converter.activation_fn_type[code]
    return name if name in ACTIVATIONS else None


def activation_tensors(converter, op) -> tuple[QParams, QParams] | None:
    """(input, output) quantization of a one-activation operator with integer tensors."""
    data = converter.get_input_tensors(op)[0]
    outputs = converter.get_output_tensors(op)
    if len(outputs) != 1:
        return None
    qx, qy = qparams(converter, data), qparams(converter, outputs[0])
    if qx is None or qy is None or qx.dtype not in INTEGER or qy.dtype != qx.dtype:
        return None
    if qx.scale.size != 1 or qy.scale.size != 1:
        return None
    return qx, qy


def int8_binary(converter, op) -> tuple[list, list[QParams]] | None:
    """(the two input tensors, [a, b, output] quantization) of an operator with two int8
    inputs and one int8 output, all per-tensor; None for any other operator."""
    tensors = converter.get_input_tensors(op)
    outputs = converter.get_output_tensors(op)
    if len(tensors) != 2 or len(outputs) != 1:
        return None
    quant = [qparams(converter, t) for t in (*tensors, outputs[0])]
    if any(q is None or q.dtype != "int8" or q.scale.size != 1 for q in quant):
        return None
    return tensors, quant

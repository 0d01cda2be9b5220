"""SQUARED_DIFFERENCE of int8 tensors as LiteRT's integer kernel computes it (the variance of
every LayerNormalization TensorFlow's converter decomposes: ConvNeXt's).

LiteRT brings both inputs to a common scale as its reference ADD does (``(x - zp) << 7`` times
``scale / (2 * max scale)``, reference double rounding), squares their int32 difference, and
requantizes by ``(2 * max scale)**2 / (2**14 * output_scale)`` with the same rounding. TVM's
path (dequantize, float square, quantize) rounds differently by a step now and then.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from bridge.quant import fixed_point
from bridge.quant.tflite_common import int8_binary

LEFT_SHIFT = 7  # int8 inputs


def multipliers(
    scale_a: float, scale_b: float, scale_out: float
) -> tuple[fixed_point.Multiplier, ...] | None:
    """(input a, input b, output) multipliers as LiteRT's ``Prepare`` computes them (double,
    from float32 scales), or None where the output's would exceed one (outside the kernel's
    ``SmallerThanOne`` requantization)."""
    twice = 2.0 * float(max(np.float32(scale_a), np.float32(scale_b)))
    real_out = twice * twice / float(np.float32(1 << 2 * LEFT_SHIFT) * np.float32(scale_out))
    result = (
        fixed_point.quantize_multiplier(float(np.float32(scale_a)) / twice),
        fixed_point.quantize_multiplier(float(np.float32(scale_b)) / twice),
        fixed_point.quantize_multiplier(real_out),
    )
    return None if int(result[2].shift[0]) > 0 else result


def convert_squared_difference(converter, op) -> relax.Expr | None:
    """SQUARED_DIFFERENCE of two int8 tensors (broadcast as LiteRT's 4-D broadcast does)."""
    binary = int8_binary(converter, op)
    if binary is None:
        return None
    tensors, quant = binary
    qa, qb, qy = quant
    found = multipliers(float(qa.scale[0]), float(qb.scale[0]), float(qy.scale[0]))
    if found is None:
        return None
    ma, mb, mo = found
    a, b = (converter.get_tensor_expr(t) for t in tensors)
    diff = relax.op.subtract(
        fixed_point.scale_input(a, qa.zp, LEFT_SHIFT, ma),
        fixed_point.scale_input(b, qb.zp, LEFT_SHIFT, mb),
    )
    y = fixed_point.multiply_high(relax.op.multiply(diff, diff), mo)
    if qy.zp:
        y = relax.op.add(y, relax.const(qy.zp, "int64"))
    low, high = fixed_point.INT_RANGE["int8"]
    return relax.op.astype(relax.op.clip(y, low, high), "int8")

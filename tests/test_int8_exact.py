"""Full-integer models bit-exact with LiteRT where the sweep (tests/fixtures/tflite/SWEEP.md)
found bridge 1-14 steps off: each fixture (tests/fixtures/make_tflite_int8_exact.py) is the
smallest TensorFlow-converted model of one class, with LiteRT's outputs (builtin kernels, x86,
one thread).

- MEAN with ``keep_dims`` over height and width (EfficientNetV2's squeeze-and-excite): LiteRT's
  optimized kernel sums without the zero point, multiplies by a float32
  ``input_scale / (count * output_scale)``, adds a float32-rounded bias, and rounds halves up in
  16-channel SIMD blocks but away from zero in the channels left over.
- MEAN otherwise: the reference ``QuantizedMeanOrSum`` (the multiplier divided by the count in
  integers, reference rounding).
- DEPTHWISE_CONV_2D: the general kernel (every x86 case) requantizes 8 channels at a time with
  SIMD (halves up) and the rest with scalar code (away from zero): NASNetMobile's 11 channels.
- grouped CONV_2D: LiteRT's reference kernel (halves away from zero); bridge used TVM's float
  path before.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES, assert_bit_exact

import bridge
from bridge.quant import fixed_point, tflite_reduce, tflite_squared_difference

EXACT = FIXTURES / "tflite" / "int8_exact"
CASES = ["mean", "mean_wide", "depthwise", "grouped"]


def load_reference(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    data = np.load(EXACT / f"{name}.npz")
    count = lambda prefix: sum(1 for k in data.files if k.startswith(prefix))  # noqa: E731
    inputs = [data[f"input_{i}"] for i in range(count("input_"))]
    return inputs, [data[f"output_{i}"] for i in range(count("output_"))]


@pytest.mark.parametrize("name", CASES)
def test_bit_exact_with_litert(name: str) -> None:
    inputs, expected = load_reference(name)
    assert all(e.dtype == np.int8 for e in expected)
    assert_bit_exact(bridge.build(EXACT / f"{name}.tflite", target="llvm")(*inputs), expected, name)


def test_simd_roundings_split_blocks_and_tail() -> None:
    assert fixed_point.simd_roundings(40) == ("double_up",) * 32 + ("double",) * 8
    assert fixed_point.simd_roundings(11, block=8) == ("double_up",) * 8 + ("double",) * 3
    assert fixed_point.simd_roundings(7, block=8) == ("double",) * 7


def test_mean_fast_path_constants() -> None:
    """float32 arithmetic as LiteRT's: bias = zp_out - round(zp_in * s_in / s_out)."""
    multiplier, bias = fixed_point.mean_fast_path((0.5, -3), (0.25, 10), 4)
    assert bias == 10 - (-6)
    assert multiplier.significand[0] == 1 << 30 and multiplier.shift[0] == 0  # 0.5 = 2**30/2**31


def test_mean_reference_multiplier_divides_in_integers() -> None:
    """(M << floor(log2 n)) // n with the exponent lowered by the same shift."""
    m = fixed_point.mean_reference_multiplier(1.0, 1.0, 3)
    base = fixed_point.quantize_multiplier(1.0)
    assert int(m.significand[0]) == (int(base.significand[0]) << 1) // 3
    assert int(m.shift[0]) == int(base.shift[0]) - 1


# REDUCE_PROD (the sweep's ops_reduce): LiteRT's QuantizedReduceProd requantizes the running
# product after every multiply (bridge.quant.tflite_reduce); TVM's float product was 1 step off.
@pytest.mark.parametrize("name", ["reduce_prod"])
def test_reduce_prod_bit_exact_with_litert(name: str) -> None:
    test_bit_exact_with_litert(name)


def test_prod_scaling_is_litert_per_step_multiplier() -> None:
    """``s_in / s_out ** (1/n)`` as a Q31 multiplier, rounded to 15 bits for the 64-bit
    ``MultiplyByQuantizedMultiplier``: 0.5 is 2**30 -> 2**14 with a shift of 15."""
    scaling = tflite_reduce.prod_scaling(0.5, 1.0, 4)
    assert (scaling.multiplier, scaling.shift) == (1 << 14, 15)
    rows = np.array([[3, -2, 5]], np.int8)  # zero point 1: 2 * -3 * 4, halved twice, then once
    got = tflite_reduce.reference_prod(rows, 1, scaling, 0, "int8")
    assert int(got[0]) == -3  # -6 -> -3; -3 * 4 = -12 -> -6; -6 -> -3


# SQUARED_DIFFERENCE (every LayerNormalization's variance; ConvNeXtLarge int8 was 2 steps off):
# LiteRT's integer kernel (inputs at a common scale << 7, int32 square, reference rounding);
# TVM's float path was 1-2 steps off at the LN, up to 4 at a small ConvNeXt's logits.
@pytest.mark.parametrize("name", ["layer_norm", "convnext_block", "convnext_random"])
def test_layer_norm_bit_exact_with_litert(name: str) -> None:
    test_bit_exact_with_litert(name)


def test_squared_difference_multipliers() -> None:
    """Inputs scaled by s / (2 max s); output by (2 max s)**2 / (2**14 s_out)."""
    ma, mb, mo = tflite_squared_difference.multipliers(0.5, 0.25, 2.0**-10)
    assert (int(ma.significand[0]), int(ma.shift[0])) == (1 << 30, 0)  # 0.5 = 2**30 / 2**31
    assert (int(mb.significand[0]), int(mb.shift[0])) == (1 << 30, -1)
    assert (int(mo.significand[0]), int(mo.shift[0])) == (1 << 30, -3)  # 1 / 2**4
    assert tflite_squared_difference.multipliers(1.0, 1.0, 2.0**-20) is None  # output > 1

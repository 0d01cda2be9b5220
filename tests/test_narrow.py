"""int64 constants narrowed to int32 and widened in the kernel (bridge.schedules.narrow): the
requantization's per-channel products become 32 x 32 -> 64-bit multiplies (``vpmuldq`` on
x86, ``smull`` on aarch64) instead of full 64-bit ones, with the same values."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import runs_here
from test_int8 import ref_requantize
from test_int8_schedules import assembly, compile_relax, relax_main, run, x86
from tvm import relax, tirx

from bridge.quant import fixed_point
from bridge.schedules import narrow
from bridge.schedules.pipeline import fuse

RNG = np.random.default_rng(11)
REAL = RNG.uniform(0.0005, 0.002, 24)  # per-channel multipliers: int64 significands < 2**31


def requantized(acc: relax.Expr) -> relax.Expr:
    mul = fixed_point.quantize_multiplier(REAL)
    return fixed_point.requantize(acc, mul, 3, (-128, 127), "int8", "double")


def accumulators() -> np.ndarray:
    return RNG.integers(-(1 << 24), 1 << 24, (2, 5, 24)).astype(np.int32)


def test_narrowable() -> None:
    assert narrow.narrowable(relax.const(np.array([1, -(1 << 31), (1 << 31) - 1]), "int64"))
    assert not narrow.narrowable(relax.const(np.array([1, 1 << 31]), "int64"))
    assert not narrow.narrowable(relax.const(np.array([1, 2]), "int32"))
    assert narrow.narrowable(relax.const(3, "int64"))  # a 0-d tensor is a load too


def kernel_params(build, x: np.ndarray) -> list[str]:
    """The dtypes of the fused kernels' constant parameters (all but the first, the input)."""
    fused = fuse(relax_main(build, [x]), x86("x86-64-v4"))
    kernels = [f for f in fused.functions.values() if isinstance(f, tirx.PrimFunc)]
    assert len(kernels) == 1, "the widening casts fuse into the epilogue"
    assert narrow.WIDEN not in str(kernels[0]), "and are inlined into its loads"
    buffers = [p for p in kernels[0].params if isinstance(p, tirx.Buffer)]
    return [str(b.dtype) for b in buffers[1:-1]]


def test_fitting_constants_become_int32_and_others_stay() -> None:
    x = accumulators()
    significands = relax.const(fixed_point.quantize_multiplier(REAL).significand, "int64")
    product = kernel_params(
        lambda v: relax.op.multiply(relax.op.astype(v, "int64"), significands), x
    )
    assert product == ["int32"]
    wide = relax.const(np.full(24, 1 << 40), "int64")
    params = kernel_params(lambda v: relax.op.add(relax.op.astype(v, "int64"), wide), x)
    assert params == ["int64"]


@pytest.mark.parametrize("mcpu", ["x86-64-v4", "x86-64-v3"])
def test_products_are_32_bit_multiplies_and_exact(mcpu: str) -> None:
    x = accumulators()
    executable = compile_relax(requantized, [x], x86(mcpu))
    asm = assembly(executable)
    assert "vpmuldq" in asm and "vpmullq" not in asm
    if runs_here(mcpu):
        want = ref_requantize(x.astype(np.int64), REAL, 3, (-128, 127), "double", "int8")
        np.testing.assert_array_equal(run(executable, [x]), want)


def test_aarch64_products_are_smull() -> None:
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    asm = assembly(compile_relax(requantized, [accumulators()], target))
    assert "smull" in asm

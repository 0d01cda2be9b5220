"""The requantization's high multiply as even and odd ``vpmuldq`` products
(bridge.schedules.high_multiply): the same int32 results bit for bit over the whole int32
range, for each lane count and operand order, and the instructions that show it fired."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from conftest import runs_here
from test_int8 import ref_conv2d, ref_requantize
from test_int8_schedules import assembly, compile_relax, run, x86
from tvm import te

from bridge.quant import fixed_point, kernels
from bridge.schedules import high_multiply, tir_pipeline

RNG = np.random.default_rng(11)
INT32 = np.iinfo(np.int32)
SIZE = 256


def _operands() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = RNG.integers(INT32.min, INT32.max, SIZE, endpoint=True, dtype=np.int64)
    b = RNG.integers(INT32.min, INT32.max, SIZE, endpoint=True, dtype=np.int64)
    a[:4] = [INT32.min, INT32.max, -1, 0]
    b[:4] = [INT32.min, INT32.min, INT32.max, -1]
    c = RNG.integers(-(2**61), 2**61, SIZE, dtype=np.int64)
    return a.astype(np.int32), b.astype(np.int32), c


def _expected(a, b, c) -> np.ndarray:
    return ((a.astype(np.int64) * b.astype(np.int64) + c) >> 32).astype(np.int32)


def _kernel(lanes: int, order: str) -> tvm.IRModule:
    """``out[i] = int32(int64(a[i]) * int64(b[i]) + c[i] >> 32)``, ``lanes`` at a time."""
    a = te.placeholder((SIZE,), "int32", "a")
    b = te.placeholder((SIZE,), "int32", "b")
    c = te.placeholder((SIZE,), "int64", "c")

    def value(i):
        product = a[i].astype("int64") * b[i].astype("int64")
        if order == "swapped":
            product = b[i].astype("int64") * a[i].astype("int64")
        total = c[i] + product if order == "addend-first" else product + c[i]
        return (total >> 32).astype("int32")

    out = te.compute((SIZE,), value, name="out")
    func = te.create_prim_func([a, b, c, out]).with_attr("global_symbol", "main")
    sch = tvm.s_tir.Schedule(func)
    (loop,) = sch.get_loops(sch.get_sblock("out"))
    sch.vectorize(sch.split(loop, [None, lanes])[1])
    return sch.mod


def _build(mod: tvm.IRModule, target: tvm.target.Target, pipeline: str):
    return tvm.compile(mod, target=target, tir_pipeline=pipeline)


@pytest.mark.parametrize(("mcpu", "lanes"), [("x86-64-v4", 16), ("x86-64-v3", 8), ("x86-64-v4", 4)])
@pytest.mark.parametrize("order", ["product-first", "addend-first", "swapped"])
def test_bit_exact_over_the_int32_range(mcpu: str, lanes: int, order: str) -> None:
    if not runs_here(mcpu):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    a, b, c = _operands()
    lib = _build(_kernel(lanes, order), x86(mcpu), high_multiply.PIPELINE)
    out = tvm.runtime.tensor(np.zeros(SIZE, np.int32))
    lib["main"](*[tvm.runtime.tensor(v) for v in (a, b, c)], out)
    np.testing.assert_array_equal(out.numpy(), _expected(a, b, c))


def test_products_without_widening() -> None:
    """With the rewrite the kernel multiplies 64-bit lanes' low halves (``vpmuldq``) and
    permutes the high halves back; without it, LLVM widens and narrows (``vpmovqd``)."""
    mod, target = _kernel(16, "product-first"), x86("x86-64-v4")
    rewritten = _build(mod, target, high_multiply.PIPELINE).mod.inspect_source("asm")
    plain = _build(mod, target, "default").mod.inspect_source("asm")
    assert "vpmovqd" in plain and "vpmovqd" not in rewritten
    assert re.search(r"vpermt2d|vpermi2d", rewritten) and "vpmuldq" in rewritten


def test_pipeline_per_target() -> None:
    """x86 CPUs with SSE4.1 take the rewrite; AArch64, CUDA and baseline x86-64 do not."""
    assert tir_pipeline(x86("x86-64-v3")) == high_multiply.PIPELINE
    assert tir_pipeline(x86("x86-64")) == "default"
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    assert tir_pipeline(arm) == "default"
    assert tir_pipeline(tvm.target.Target("cuda")) == "default"


def test_requantized_convolution_uses_it() -> None:
    """A 1x1 convolution requantized per channel (MobileNetV2's projections): bit-exact with
    the numpy model of TFLite's kernel, and its epilogue permutes instead of narrowing."""
    if not runs_here("x86-64-v4"):
        pytest.skip("this CPU cannot run x86-64-v4 code")
    x = RNG.integers(-128, 128, (1, 14, 14, 32)).astype(np.int8)
    w = RNG.integers(-127, 128, (48, 1, 1, 32)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, 48).astype(np.int32)
    real = RNG.uniform(0.0005, 0.002, 48)
    multiplier = fixed_point.quantize_multiplier(real)

    def build(v):
        acc = kernels.conv2d(v, w, bias, -7, kernels.Window())
        return fixed_point.requantize(acc, multiplier, -128, (-128, 127), "int8", "double_up")

    executable = compile_relax(build, [x], x86("x86-64-v4"))
    acc = ref_conv2d(x, w, bias, -7, (1, 1), (0, 0, 0, 0), (1, 1))
    want = ref_requantize(acc, real, -128, (-128, 127), "double_up", "int8")
    np.testing.assert_array_equal(run(executable, [x]), want)
    asm = assembly(executable)
    assert re.search(r"vpermt2d|vpermi2d", asm) and "vpmovqd" not in asm

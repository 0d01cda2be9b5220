"""SIMD integer kernels on x86 (bridge.schedules.int8): each preset's products use its dot
instruction (AVX-512 VNNI ``vpdpbusd``, AVX-512BW / AVX2 ``vpmaddwd``), read from the generated
assembly, and stay bit-exact against the numpy model of TFLite's integer products."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from test_int8 import ref_conv2d, ref_dense
from tvm import relax

from bridge.compile import compile_module
from bridge.quant import kernels
from bridge.schedules import int8

RNG = np.random.default_rng(7)
# (mcpu, the instruction its kernels must use, the one they must not)
PRESETS = [
    ("znver4", "vpdpbusd", "vpmaddwd"),  # AVX-512 VNNI
    ("x86-64-v4", "vpmaddwd", "vpdpbusd"),  # AVX-512BW without VNNI
    ("x86-64-v3", "vpmaddwd", "vpdpbusd"),  # AVX2
]


def x86(mcpu: str) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})


def compile_relax(build, inputs: list[np.ndarray], target: tvm.target.Target):
    bb = relax.BlockBuilder()
    params = [
        relax.Var(f"x{i}", relax.TensorType(x.shape, str(x.dtype))) for i, x in enumerate(inputs)
    ]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(*params))
        bb.emit_func_output(out)
    return compile_module(bb.get(), target)


def run(executable, inputs: list[np.ndarray]) -> np.ndarray:
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()


def assembly(executable) -> str:
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports)


def host_has(feature: str) -> bool:
    """The build machine's CPU lists ``feature`` (/proc/cpuinfo's spelling)."""
    try:
        with open("/proc/cpuinfo") as info:
            return feature in info.read().split()
    except OSError:
        return False


def test_dot_kind_per_target() -> None:
    assert int8.dot_kind(x86("znver4")) is int8.VNNI
    assert int8.dot_kind(x86("x86-64-v4")) is int8.AVX512_WD
    assert int8.dot_kind(x86("x86-64-v3")) is int8.AVX2_WD
    assert int8.dot_kind(x86("x86-64")) is None
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    assert int8.dot_kind(arm) is None


def test_pack_weights_layout() -> None:
    """[O'/lanes, KH, KW, C'/group, lanes, group] with zeros in the padded channels."""
    w = RNG.integers(-127, 128, (3, 3, 5, 20)).astype(np.int8)  # HWIO
    packed = int8.pack_weights(w, int8.VNNI)
    assert packed.shape == (2, 3, 3, 2, 16, 4)
    assert packed[1, 2, 1, 1, 3, 0] == w[2, 1, 4, 19]
    assert not packed[1, :, :, :, 4:].any() and not packed[:, :, :, 1, :, 1:].any()


CONVS = [
    # (shape NHWC, out channels, kernel, strides, padding, activation dtype)
    ((1, 9, 10, 32), 48, 3, (1, 1), (1, 1, 1, 1), "int8"),
    ((2, 8, 8, 3), 20, 3, (2, 2), (0, 0, 1, 1), "int8"),  # channel and output padding
    ((1, 6, 6, 16), 32, 1, (1, 1), (0, 0, 0, 0), "uint8"),
]


@pytest.mark.parametrize(("mcpu", "instruction", "other"), PRESETS)
def test_conv_and_dense_use_the_dot_instruction(mcpu: str, instruction: str, other: str) -> None:
    shape, out_c, k, strides, padding, dtype = CONVS[0]
    x = RNG.integers(-128, 128, shape).astype(dtype)
    w = RNG.integers(-127, 128, (out_c, k, k, shape[3])).astype(np.int8)
    window = kernels.Window(strides, padding)
    asm = assembly(compile_relax(lambda v: kernels.conv2d(v, w, None, 3, window), [x], x86(mcpu)))
    assert instruction in asm and other not in asm
    dense_w = RNG.integers(-127, 128, (40, 64)).astype(np.int8)
    xd = RNG.integers(-128, 128, (2, 64)).astype(np.int8)
    asm = assembly(compile_relax(lambda v: kernels.dense(v, dense_w, None, 1), [xd], x86(mcpu)))
    assert instruction in asm


@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("mcpu", [p[0] for p in PRESETS])
def test_conv_bit_exact(mcpu: str, case) -> None:
    shape, out_c, k, strides, padding, dtype = case
    if not host_has({"znver4": "avx512_vnni", "x86-64-v4": "avx512bw"}.get(mcpu, "avx2")):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    lo, hi = (-128, 128) if dtype == "int8" else (0, 256)
    x = RNG.integers(lo, hi, shape).astype(dtype)
    w = RNG.integers(-127, 128, (out_c, k, k, shape[3])).astype(np.int8)
    bias = RNG.integers(-5000, 5000, out_c).astype(np.int32)
    zx = -7 if dtype == "int8" else 131
    window = kernels.Window(strides, padding)
    got = run(compile_relax(lambda v: kernels.conv2d(v, w, bias, zx, window), [x], x86(mcpu)), [x])
    np.testing.assert_array_equal(got, ref_conv2d(x, w, bias, zx, strides, padding, (1, 1)))


@pytest.mark.parametrize("mcpu", [p[0] for p in PRESETS])
def test_dense_bit_exact(mcpu: str) -> None:
    if not host_has({"znver4": "avx512_vnni", "x86-64-v4": "avx512bw"}.get(mcpu, "avx2")):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    x = RNG.integers(-128, 128, (3, 2, 70)).astype(np.int8)  # K and N off the tile
    w = RNG.integers(-127, 128, (25, 70)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, 25).astype(np.int32)
    got = run(compile_relax(lambda v: kernels.dense(v, w, bias, 4), [x], x86(mcpu)), [x])
    np.testing.assert_array_equal(got, ref_dense(x, w, bias, 4))

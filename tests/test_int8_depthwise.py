"""SIMD int8 depthwise convolutions on x86 (bridge.schedules.int8_depthwise): outputs equal the
generic path's bit for bit (the same Relax program compiled with the rewrite switched off), and
each preset's kernel uses its ``vpmaddwd`` form (``vpdpwssd`` with AVX-512 VNNI) instead of the
generic path's ``vpmulld``, read from the generated assembly."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from conftest import FIXTURES, parallel_bodies, runs_here
from tvm import relax

from bridge.compile import compile_module
from bridge.quant import fixed_point, kernels
from bridge.schedules import int8_depthwise

RNG = np.random.default_rng(11)
# (mcpu, instruction its depthwise kernels must use)
PRESETS = [
    ("znver4", "vpdpwssd"),
    ("sapphirerapids", "vpdpwssd"),  # Intel: only with the fast-dpwssd tuning (codegen_target)
    ("x86-64-v4", "vpmaddwd"),
    ("x86-64-v3", "vpmaddwd"),
]
CASES = [
    # (input NHWC, kernel, stride, activation dtype)
    ((1, 11, 13, 32), 3, 1, "int8"),
    ((1, 12, 12, 48), 3, 2, "int8"),
    ((8, 9, 10, 16), 3, 1, "int8"),
    ((8, 10, 10, 32), 3, 2, "int8"),
    ((1, 12, 11, 16), 5, 1, "int8"),
    ((2, 13, 13, 32), 5, 2, "int8"),
    ((1, 9, 9, 24), 3, 1, "uint8"),  # 24 channels: 8-lane vectors on AVX-512 too
    ((1, 7, 7, 20), 3, 1, "int8"),  # 20 channels: no vector fits, the generic path
]


def x86(mcpu: str) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})


def same_padding(k: int, stride: int, size: int) -> tuple[int, int]:
    """TF "SAME": (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def depthwise_model(shape, k: int, stride: int, dtype: str):
    """A quantized depthwise layer as the TFLite reader emits it: zero-point padding, the
    int32 product with the folded bias, then the fixed-point requantization epilogue."""
    c = shape[3]
    w = RNG.integers(-127, 128, (1, k, k, c)).astype(np.int8)
    bias = RNG.integers(-3000, 3000, c).astype(np.int32)
    mult = fixed_point.quantize_multiplier(RNG.uniform(0.0005, 0.02, c))
    top, bottom = same_padding(k, stride, shape[1])
    left, right = same_padding(k, stride, shape[2])
    window = kernels.Window((stride, stride), (top, left, bottom, right))
    zx = -9 if dtype == "int8" else 121

    def build(x: relax.Expr) -> relax.Expr:
        acc = kernels.depthwise_conv2d(x, w, bias, zx, window, c)
        return fixed_point.requantize(acc, mult, 3, (-128, 127), "int8")

    return build


def compile_relax(build, x: np.ndarray, target: tvm.target.Target):
    bb = relax.BlockBuilder()
    var = relax.Var("x", relax.TensorType(x.shape, str(x.dtype)))
    with bb.function("main", [var]):
        with bb.dataflow():
            out = bb.emit_output(build(var))
        bb.emit_func_output(out)
    return compile_module(bb.get(), target)


def run(executable, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def assembly(executable) -> str:
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports)


def random_input(shape, dtype: str) -> np.ndarray:
    lo, hi = (-128, 128) if dtype == "int8" else (0, 256)
    return RNG.integers(lo, hi, shape).astype(dtype)


def test_widths_per_target() -> None:
    assert int8_depthwise.widths(x86("znver4")) == (16, 8)
    assert int8_depthwise.widths(x86("x86-64-v4")) == (16, 8)
    assert int8_depthwise.widths(x86("x86-64-v3")) == (8,)
    assert int8_depthwise.widths(x86("x86-64")) == ()
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    assert int8_depthwise.widths(arm) == ()
    assert int8_depthwise.channel_lanes(144, x86("znver4")) == 16
    assert int8_depthwise.channel_lanes(24, x86("znver4")) == 8
    assert int8_depthwise.channel_lanes(20, x86("znver4")) is None


def test_codegen_target_adds_fast_dpwssd_on_intel_vnni_only() -> None:
    """LLVM splits vpdpwssd into vpmaddwd + vpaddd unless the CPU's tuning says it is fast:
    Intel CPUs with VNNI get that tuning flag for code generation, others stay as they are."""
    for mcpu in ("sapphirerapids", "emeraldrapids", "alderlake"):
        mattr = int8_depthwise.codegen_target(x86(mcpu)).attrs.get("mattr", [])
        assert "+fast-dpwssd" in [str(m) for m in mattr], mcpu
    for target in (x86("znver4"), x86("x86-64-v4"), x86("x86-64-v3")):
        assert int8_depthwise.codegen_target(target).same_as(target)
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    assert int8_depthwise.codegen_target(arm).same_as(arm)


def test_pack_weights_layout() -> None:
    """[C/L, KH, KW, L] int32 words: the int16 weight in the low half, zero in the high."""
    w = RNG.integers(-128, 128, (3, 3, 32)).astype(np.int8)
    packed = int8_depthwise.pack_weights(w, 16)
    assert packed.shape == (2, 3, 3, 16) and packed.dtype == np.int32
    assert (packed >> 16 == 0).all()
    assert packed[1, 2, 0, 5].astype(np.uint16).view(np.int16) == w[2, 0, 21]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"k{c[1]}s{c[2]}")
@pytest.mark.parametrize("mcpu", [p[0] for p in PRESETS])
def test_bit_exact_against_generic_path(mcpu: str, case, monkeypatch) -> None:
    shape, k, stride, dtype = case
    if not runs_here(mcpu):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    x = random_input(shape, dtype)
    build = depthwise_model(shape, k, stride, dtype)
    packed = compile_relax(build, x, x86(mcpu))
    with monkeypatch.context() as patch:
        patch.setattr(int8_depthwise, "widths", lambda _target: ())
        generic = compile_relax(build, x, x86(mcpu))
    assert ("depthwise_int8" in assembly(packed)) == (shape[3] % 8 == 0)
    assert "depthwise_int8" not in assembly(generic)
    np.testing.assert_array_equal(run(packed, x), run(generic, x))


@pytest.mark.parametrize(("mcpu", "instruction"), PRESETS)
def test_depthwise_uses_the_pmaddwd_form(mcpu: str, instruction: str) -> None:
    shape = (1, 10, 10, 32)
    x = random_input(shape, "int8")
    asm = assembly(compile_relax(depthwise_model(shape, 3, 1, "int8"), x, x86(mcpu)))
    assert instruction in asm and "vpmovsxbd" in asm
    assert "vpmulld" not in asm  # the generic path's int32 product
    register = "%ymm" if mcpu == "x86-64-v3" else "%zmm"
    assert any(instruction in line and register in line for line in asm.splitlines())


def test_average_pool_sum_takes_the_kernel() -> None:
    """Integer average pooling's window sum is a depthwise product of ones: same kernel,
    same result as numpy."""
    x = random_input((1, 8, 8, 16), "int8")

    def build(v: relax.Expr) -> relax.Expr:
        return kernels.window_sum(v, (3, 3), (1, 1), (1, 1, 1, 1))

    executable = compile_relax(build, x, x86("znver4"))
    assert "depthwise_int8" in assembly(executable)
    padded = np.pad(x.astype(np.int32), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = sum(padded[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3))
    if runs_here("znver4"):
        np.testing.assert_array_equal(run(executable, x), want)


def test_tile_accumulators_are_on_the_stack(monkeypatch) -> None:
    """A MobileNet-like int8 model (depthwise, pointwise, average pool): no kernel's parallel
    loop body allocates from TVM's workspace pool, so each register tile's int32 accumulators
    are a stack slot; with bridge.schedules.stack switched off, the depthwise tiles allocate
    theirs (the control)."""
    import bridge
    from bridge.compile import compile_model
    from bridge.schedules import stack

    mod, params = bridge.to_relax(FIXTURES / "tflite" / "mobile_int8.tflite")

    def allocates() -> bool:
        compiled = compile_model(mod, params, x86("znver4"))
        asm = "\n".join(m.inspect_source("asm") for m in compiled.executable.mod.imports)
        assert "depthwise_int8" in asm
        return "AllocWorkspace" in parallel_bodies(asm)

    assert not allocates()
    with monkeypatch.context() as patch:
        patch.setattr(stack, "stack_buffers", lambda func: func)
        assert allocates(), "the control build should allocate its tiles from the pool"


LOOKUP_CASES = [
    # (input NHWC, kernel, stride, input dtype, table dtype, fused: rows of whole 64-byte vectors)
    ((1, 8, 8, 32), 3, 1, "int8", "int8", True),
    ((1, 12, 12, 48), 3, 2, "int8", "int8", True),
    ((2, 9, 8, 16), 5, 1, "uint8", "uint8", True),
    ((1, 6, 8, 16), 3, 2, "int8", "uint8", True),
    ((1, 7, 7, 24), 3, 1, "int8", "int8", False),  # a row of 168 bytes: the lookup kernel
]


def lookup_depthwise_model(shape, k: int, stride: int, dtype: str, table_dtype: str):
    """A table lookup (a quantized activation: swish before MBConv's depthwise layer) feeding
    a padded depthwise layer."""
    from bridge.quant import elementwise

    low = -128 if dtype == "int8" else 0
    info = np.iinfo(table_dtype)
    table = RNG.integers(info.min, info.max + 1, 256).astype(table_dtype)
    depthwise = depthwise_model(shape, k, stride, table_dtype)
    return lambda x: depthwise(elementwise.lookup(x, table, low))


@pytest.mark.parametrize("case", LOOKUP_CASES, ids=lambda c: "x".join(map(str, c[0])) + c[3] + c[4])
@pytest.mark.parametrize("mcpu", ["znver4", "sapphirerapids", "x86-64-v4"])
def test_a_lookup_before_the_depthwise_layer_is_done_in_its_copy(mcpu, case, monkeypatch):
    """With AVX-512 VBMI the lookup runs inside the depthwise kernel, each padded row looked
    up (vpermi2b) as it is copied, and no lookup kernel of its own remains; bit-exact with the
    lookup and depthwise layer on the generic path."""
    shape, k, stride, dtype, table_dtype, fused = case
    if not runs_here(mcpu):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    x = random_input(shape, dtype)
    build = lookup_depthwise_model(shape, k, stride, dtype, table_dtype)
    packed = compile_relax(build, x, x86(mcpu))
    with monkeypatch.context() as patch:
        patch.setattr(int8_depthwise, "widths", lambda _target: ())
        generic = compile_relax(build, x, x86(mcpu))
    asm = assembly(packed)
    fused = fused and mcpu != "x86-64-v4"  # no VBMI there
    assert ("bridge_lookup" not in asm) == fused
    assert "depthwise_int8" in asm
    if fused:  # LLVM writes vpermi2b as vpermt2b where that saves a register move
        assert "vpermt2b" in asm or "vpermi2b" in asm
        assert "vpinsrb" not in asm  # a gather byte by byte
    np.testing.assert_array_equal(run(packed, x), run(generic, x))


@pytest.mark.parametrize("batch", [1, 8])
def test_the_padded_copy_runs_band_by_band_in_the_products_parallel_loop(batch):
    """Without a table lookup in it, each band of output rows copies the padded input rows
    it reads in its own parallel iteration: the kernel launches one parallel loop, not a
    copy pass and then the products (MobileNetV2 int8 0.8x at batch 8 on Zen 4). A lookup
    keeps the copy pass (a parallel loop of its own)."""
    if not runs_here("x86-64-v4"):
        pytest.skip("this CPU cannot run x86-64-v4 code")
    shape = (batch, 20, 20, 32)
    x = random_input(shape, "int8")
    plain = assembly(compile_relax(depthwise_model(shape, 3, 1, "int8"), x, x86("x86-64-v4")))
    assert parallel_loops(plain) == 1
    if runs_here("znver4"):
        build = lookup_depthwise_model(shape, 3, 1, "int8", "int8")
        assert parallel_loops(assembly(compile_relax(build, x, x86("znver4")))) >= 2


def parallel_loops(asm: str) -> int:
    """How many parallel loop bodies an assembly has."""
    return len(re.findall(r"^\.L__tvm_parallel_lambda[\w.]*:$", asm, re.M))

"""SIMD integer kernels on x86 (bridge.schedules.int8): each preset's products use its dot
instruction (AVX-512 VNNI ``vpdpbusd``, AVX-512BW / AVX2 ``vpmaddwd``), read from the generated
assembly, and stay bit-exact against the numpy model of TFLite's integer products."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from conftest import parallel_bodies, runs_here
from test_int8 import ref_add, ref_conv2d, ref_dense, ref_requantize
from tvm import relax, tirx

from bridge.compile import compile_module
from bridge.quant import elementwise, fixed_point, kernels
from bridge.schedules import int8
from bridge.schedules.common import weights_first
from bridge.schedules.pipeline import fuse

RNG = np.random.default_rng(7)
# (mcpu, the instruction its kernels must use, the one they must not)
PRESETS = [
    ("znver4", "vpdpbusd", "vpmaddwd"),  # AVX-512 VNNI
    ("x86-64-v4", "vpmaddwd", "vpdpbusd"),  # AVX-512BW without VNNI
    ("x86-64-v3", "vpmaddwd", "vpdpbusd"),  # AVX2
]


def x86(mcpu: str) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})


def relax_main(build, inputs: list[np.ndarray]) -> tvm.IRModule:
    """``main(x0, x1, ...) = build(x0, x1, ...)`` for inputs shaped like ``inputs``."""
    bb = relax.BlockBuilder()
    params = [
        relax.Var(f"x{i}", relax.TensorType(x.shape, str(x.dtype))) for i, x in enumerate(inputs)
    ]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(*params))
        bb.emit_func_output(out)
    return bb.get()


def compile_relax(build, inputs: list[np.ndarray], target: tvm.target.Target):
    return compile_module(relax_main(build, inputs), target)


def run(executable, inputs: list[np.ndarray]) -> np.ndarray:
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()


def assembly(executable) -> str:
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports)


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
    ((2, 7, 7, 512), 256, 3, (1, 1), (1, 1, 1, 1), "int8"),  # 1.1 MiB weights: channels first
    ((1, 9, 11, 20), 24, 1, (2, 3), (0, 0, 0, 0), "int8"),  # strided 1x1: a subsampled copy
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
    if not runs_here(mcpu):
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
    if not runs_here(mcpu):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    x = RNG.integers(-128, 128, (3, 2, 70)).astype(np.int8)  # K and N off the tile
    w = RNG.integers(-127, 128, (25, 70)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, 25).astype(np.int32)
    got = run(compile_relax(lambda v: kernels.dense(v, w, bias, 4), [x], x86(mcpu)), [x])
    np.testing.assert_array_equal(got, ref_dense(x, w, bias, 4))


# --- the epilogue in registers ------------------------------------------------------------------

# a 1x1 projection (24 channels: the tile pads them to 32) requantized, then TFLite's ADD with
# a residual input: MobileNetV2's residual kernels
RESIDUAL_Q = ((0.06, -3), (0.05, 5), (0.08, -1))  # conv output, residual, sum


def residual_block(x, r, w, bias, real):
    """conv -> requantize -> integer ADD of ``r``, as bridge.quant builds MobileNetV2's."""
    mul = fixed_point.quantize_multiplier(real)
    acc = kernels.conv2d(x, w, bias, -7, kernels.Window())
    conv = fixed_point.requantize(acc, mul, RESIDUAL_Q[0][1], (-128, 127), "int8", "double_up")
    return elementwise.add(
        (conv, RESIDUAL_Q[0]), (r, RESIDUAL_Q[1]), RESIDUAL_Q[2], (-128, 127), "int8"
    )


def residual_case():
    x = RNG.integers(-128, 128, (1, 6, 16, 40)).astype(np.int8)
    r = RNG.integers(-128, 128, (1, 6, 16, 24)).astype(np.int8)
    w = RNG.integers(-127, 128, (24, 1, 1, 40)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, 24).astype(np.int32)
    real = RNG.uniform(0.0005, 0.002, 24)
    return x, r, w, bias, real


def residual_expected(x, r, w, bias, real) -> np.ndarray:
    acc = ref_conv2d(x, w, bias, -7, (1, 1), (0, 0, 0, 0), (1, 1))
    conv = ref_requantize(acc, real, RESIDUAL_Q[0][1], (-128, 127), "double_up", "int8")
    return ref_add(conv, RESIDUAL_Q[0], r, RESIDUAL_Q[1], RESIDUAL_Q[2], (-128, 127))


def dot_kernel(build, inputs: list[np.ndarray], target: tvm.target.Target) -> tirx.PrimFunc:
    """The fused TIR kernel holding ``build``'s int8 product, before scheduling."""
    bb = relax.BlockBuilder()
    params = [
        relax.Var(f"x{i}", relax.TensorType(x.shape, str(x.dtype))) for i, x in enumerate(inputs)
    ]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(*params))
        bb.emit_func_output(out)
    fused = fuse(bb.get(), target)
    funcs = [
        f for f in fused.functions.values() if isinstance(f, tirx.PrimFunc) and int8.DOT in str(f)
    ]
    assert len(funcs) == 1
    return funcs[0]


def global_intermediates(sch) -> list[str]:
    """Full-size buffers a scheduled kernel allocates, name:dtype (not the register tile's
    accumulators, which the dot block writes: compacted to the tile at lowering)."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    dot = next(b for b in blocks if sch.get(b).name_hint.startswith(int8.DOT))
    tile = sch.get(dot).writes[0].source
    root = sch.get(sch.get_sblock("root"))
    return [f"{b.name}:{b.dtype}" for b in root.alloc_buffers if not b.same_as(tile)]


def output_block(sch):
    """The block writing the kernel's output (its last parameter)."""
    out = sch.mod["main"].params[-1]
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    return next(b for b in blocks if any(w.source.same_as(out) for w in sch.get(b).writes))


def vectorized(sch, block) -> bool:
    return sch.get(sch.get_loops(block)[-1]).kind == tirx.ForKind.VECTORIZED


def in_tile(sch, block) -> bool:
    """Under the dot's loop nest (the register tile's parallel loop)."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    dot = next(b for b in blocks if sch.get(b).name_hint.startswith(int8.DOT))
    return sch.get(sch.get_loops(block)[0]).same_as(sch.get(sch.get_loops(dot)[0]))


@pytest.mark.parametrize("mcpu", [p[0] for p in PRESETS])
def test_residual_epilogue_runs_in_the_tile(mcpu: str) -> None:
    """The residual kernel's whole epilogue (the shift's correction, requantization, the
    residual's rescale, the add and its requantization) is one vectorized block in the
    register tile's loop: the only buffer in memory is the activation copy (uint8 for
    VNNI, int16 pairs for vpmaddwd), no int32 sums or int64 intermediates."""
    x, r, w, bias, real = residual_case()
    func = dot_kernel(lambda a, b: residual_block(a, b, w, bias, real), [x, r], x86(mcpu))
    sch = int8.Int8Kernels().apply(func, x86(mcpu), False)
    assert sch is not None
    copy = "int16" if int8.dot_kind(x86(mcpu)).widen else "uint8"
    assert global_intermediates(sch) == [f"{int8.ACT}:{copy}"]
    out = output_block(sch)
    assert in_tile(sch, out) and vectorized(sch, out)


@pytest.mark.parametrize("mcpu", [p[0] for p in PRESETS])
def test_residual_kernel_bit_exact(mcpu: str) -> None:
    if not runs_here(mcpu):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    x, r, w, bias, real = residual_case()
    build = lambda a, b: residual_block(a, b, w, bias, real)  # noqa: E731
    got = run(compile_relax(build, [x, r], x86(mcpu)), [x, r])
    np.testing.assert_array_equal(got, residual_expected(x, r, w, bias, real))


def test_padded_output_keeps_the_pad_as_a_pass() -> None:
    """A requantized output padded for the next layer: requantized in the tile (int8 written
    once), the pad a separate vectorized pass; bit-exact."""
    x = RNG.integers(-128, 128, (1, 8, 8, 16)).astype(np.int8)
    w = RNG.integers(-127, 128, (40, 1, 1, 16)).astype(np.int8)
    real = RNG.uniform(0.0005, 0.002, 40)
    mul = fixed_point.quantize_multiplier(real)

    def build(v):
        acc = kernels.conv2d(v, w, None, 3, kernels.Window())
        y = fixed_point.requantize(acc, mul, -2, (-128, 127), "int8", "double_up")
        return relax.op.nn.pad(y, [0, 0, 0, 1, 0, 1, 0, 0], pad_value=-2.0)

    target = x86("znver4")
    sch = int8.Int8Kernels().apply(dot_kernel(build, [x], target), target, False)
    assert sch is not None
    assert all(b.endswith(("int8", "uint8")) for b in global_intermediates(sch))
    assert not in_tile(sch, output_block(sch)) and vectorized(sch, output_block(sch))
    if runs_here("znver4"):
        acc = ref_conv2d(x, w, None, 3, (1, 1), (0, 0, 0, 0), (1, 1))
        y = ref_requantize(acc, real, -2, (-128, 127), "double_up", "int8")
        want = np.pad(y, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-2)
        np.testing.assert_array_equal(run(compile_relax(build, [x], target), [x]), want)


@pytest.mark.parametrize("mcpu", [p[0] for p in PRESETS])
def test_dense_rows_bit_exact(mcpu: str) -> None:
    """A 2-D dense layer (several rows, the tile's pixels): its epilogue reads the tile
    through the reshape back to [M, N]."""
    if not runs_here(mcpu):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    x = RNG.integers(-128, 128, (6, 70)).astype(np.int8)
    w = RNG.integers(-127, 128, (25, 70)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, 25).astype(np.int32)
    real = RNG.uniform(0.0005, 0.002, 25)
    mul = fixed_point.quantize_multiplier(real)

    def build(v):
        acc = kernels.dense(v, w, bias, 4)
        return fixed_point.requantize(acc, mul, 1, (-128, 127), "int8", "double_up")

    got = run(compile_relax(build, [x], x86(mcpu)), [x])
    want = ref_requantize(ref_dense(x, w, bias, 4), real, 1, (-128, 127), "double_up", "int8")
    np.testing.assert_array_equal(got, want)


def test_tile_allocates_nothing_per_iteration() -> None:
    """The register tile's accumulators live on the stack: no TVMBackendAllocWorkspace call
    (and free) in the parallel loop's body for every tile (a "local" buffer, or one of 1024
    bytes and more, is a workspace allocation in TVM's lowering; so is a name bound inside
    the dot instruction's implementation)."""
    x = RNG.integers(-128, 128, (1, 8, 16, 16)).astype(np.int8)
    w = RNG.integers(-127, 128, (64, 1, 1, 16)).astype(np.int8)
    window = kernels.Window()
    for mcpu, _, _ in PRESETS:
        exe = compile_relax(lambda v: kernels.conv2d(v, w, None, 3, window), [x], x86(mcpu))
        body = parallel_bodies(assembly(exe))
        assert "vpdpbusd" in body or "vpmaddwd" in body, mcpu
        assert "AllocWorkspace" not in body, mcpu


@pytest.mark.parametrize(("channels", "kernel", "padding"), [(24, 1, 0), (24, 3, 1), (3, 3, 1)])
def test_activation_copy_moves_vectors_not_bytes(channels: int, kernel: int, padding: int) -> None:
    """The +128 shift of 24-channel activations (MobileNetV2's) runs pixel by pixel on byte
    vectors, not as one vector over pixels and channels together, which LLVM can only gather
    and scatter byte by byte; bit-exact, and for a first convolution's 3 channels too."""
    x = RNG.integers(-128, 128, (1, 8, 14, channels)).astype(np.int8)
    w = RNG.integers(-127, 128, (32, kernel, kernel, channels)).astype(np.int8)
    pads = (padding,) * 4
    build = lambda v: kernels.conv2d(v, w, None, 3, kernels.Window((1, 1), pads))  # noqa: E731
    body = parallel_bodies(assembly(compile_relax(build, [x], x86("znver4"))))
    if channels % 4 == 0:  # (3 channels: a pixel's 3 bytes are inserted into one vector)
        assert not any(op in body for op in ("vpinsrb", "vpextrb", "\tmovb\t")), body[:2000]
    if runs_here("znver4"):
        got = run(compile_relax(build, [x], x86("znver4")), [x])
        want = ref_conv2d(x, w, None, 3, (1, 1), pads, (1, 1))
        np.testing.assert_array_equal(got, want)


STRIP_CASES = [
    # (shape NHWC, strides, padding, parallel regions: 1 = the copy runs per strip)
    ((4, 16, 28, 64), (2, 2), 0, 1),  # strided: the copy reads only the rows it needs
    ((2, 14, 14, 96), (1, 1), 0, 1),
    ((2, 14, 14, 32), (1, 1), 0, 2),  # few channels: the copy stays a pass of its own
    ((2, 14, 14, 64), (1, 1), 1, 2),  # padded: so does a padded copy
    ((1, 7, 7, 64), (1, 1), 0, 1),  # 7 strips: too few for the threads; the copy (3 KB,
    # under SERIAL_ELEMENTS) then runs on the calling thread, the product in parallel
]


@pytest.mark.parametrize(("shape", "strides", "padding", "regions"), STRIP_CASES)
def test_unpadded_copy_runs_per_strip(shape, strides, padding: int, regions: int) -> None:
    """A 1x1 convolution's +128 copy of 64 channels and more is made inside the product's
    parallel loop, a strip of pixels at a time, when the map has enough strips (one
    parallel region, not two: the copy and the product); bit-exact either way."""
    x = RNG.integers(-128, 128, shape).astype(np.int8)
    w = RNG.integers(-127, 128, (96, 1, 1, shape[3])).astype(np.int8)
    bias = RNG.integers(-5000, 5000, 96).astype(np.int32)
    pads = (padding,) * 4
    window = kernels.Window(strides, pads)
    build = lambda v: kernels.conv2d(v, w, bias, -3, window)  # noqa: E731
    asm = assembly(compile_relax(build, [x], x86("znver4")))
    lambdas = {line for line in asm.splitlines() if line.startswith(".L__tvm_parallel_lambda")}
    assert len(lambdas) == regions, lambdas
    if runs_here("znver4"):
        got = run(compile_relax(build, [x], x86("znver4")), [x])
        want = ref_conv2d(x, w, bias, -3, strides, pads, (1, 1))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("case", "order"), [(CONVS[3], []), (CONVS[0], None)])
def test_large_weights_run_channel_blocks_outside_pixels(case, order) -> None:
    """Weights of SWEPT_WEIGHTS or more over a smaller input (ResNet50's last stage): the dot
    sweeps each block of output channels over every pixel (ResNet50 int8 7% faster at batch
    1 and 8); test_conv_bit_exact runs that case."""
    shape, out_c, k, strides, padding, dtype = case
    x = RNG.integers(-128, 128, shape).astype(dtype)
    w = RNG.integers(-127, 128, (out_c, k, k, shape[3])).astype(np.int8)
    build = lambda v: kernels.conv2d(v, w, None, 3, kernels.Window(strides, padding))  # noqa: E731
    sch = tvm.s_tir.Schedule(dot_kernel(build, [x], x86("znver4")))
    assert weights_first(sch, int8._dot_block(sch), 3) == order


@pytest.mark.parametrize(
    ("pixels", "channels", "parallel"),
    [((1, 1), 1152, False), ((8, 16), 1152, True)],
    ids=["squeeze-excite-gate", "feature-map"],
)
def test_squeeze_excite_sized_kernels_run_on_one_thread(pixels, channels: int, parallel) -> None:
    """A squeeze-excite gate's expanding 1x1 convolution of one pixel (48 -> 1152 channels:
    under SERIAL_PRODUCTS multiply-adds) runs on the calling thread, with no parallel launch
    and join for 36 channel blocks; the same layer over a feature map runs in parallel."""
    x = RNG.integers(-128, 128, (1, *pixels, 48)).astype(np.int8)
    w = RNG.integers(-127, 128, (channels, 1, 1, 48)).astype(np.int8)
    mul = fixed_point.quantize_multiplier(0.004)

    def build(v):
        acc = kernels.conv2d(v, w, None, 3, kernels.Window())
        return fixed_point.requantize(acc, mul, 1, (-128, 127), "int8", "double_up")

    asm = assembly(compile_relax(build, [x], x86("znver4")))
    assert ("__tvm_parallel_lambda" in asm) == parallel
    if runs_here("x86-64-v4"):
        got = run(compile_relax(build, [x], x86("x86-64-v4")), [x])
        acc = ref_conv2d(x, w, None, 3, (1, 1), (0, 0, 0, 0), (1, 1))
        want = ref_requantize(acc, np.float64(0.004), 1, (-128, 127), "double_up", "int8")
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("shape", "parallel"), [((1, 1, 1, 1152), False), ((1, 56, 56, 144), True)]
)
def test_small_elementwise_kernels_run_on_one_thread(shape, parallel: bool) -> None:
    """Requantizing a squeeze-excite mean (1152 int32 values, under SERIAL_ELEMENTS) runs on
    the calling thread; a feature map's requantization runs in parallel."""
    acc = RNG.integers(-50000, 50000, shape).astype(np.int32)
    mul = fixed_point.quantize_multiplier(0.003)

    def build(v):
        return fixed_point.requantize(v, mul, -2, (-128, 127), "int8", "double_up")

    executable = compile_relax(build, [acc], x86("x86-64-v4"))
    assert ("__tvm_parallel_lambda" in assembly(executable)) == parallel
    if runs_here("x86-64-v4"):
        want = ref_requantize(acc, np.float64(0.003), -2, (-128, 127), "double_up", "int8")
        np.testing.assert_array_equal(run(executable, [acc]), want)


# --- a producer writing the shifted activations its 1x1 consumer reads -------------------------

CHAIN_Q = ((-7, 5), (0.0012, 0.0009))  # (zero points of x and the middle), requantization scales


def chain(x, w1, b1, w2, b2, real1, real2, both: bool):
    """Two 1x1 convolutions, each requantized: a depthwise-to-projection hand-off. ``both``:
    the middle tensor is an output too (read twice)."""
    (zx, zm), _ = CHAIN_Q
    m1, m2 = (fixed_point.quantize_multiplier(r) for r in (real1, real2))
    acc1 = kernels.conv2d(x, w1, b1, zx, kernels.Window())
    middle = fixed_point.requantize(acc1, m1, zm, (-128, 127), "int8", "double_up")
    acc2 = kernels.conv2d(middle, w2, b2, zm, kernels.Window())
    out = fixed_point.requantize(acc2, m2, -3, (-128, 127), "int8", "double_up")
    return relax.Tuple([out, middle]) if both else out


def chain_case():
    x = RNG.integers(-128, 128, (1, 8, 12, 24)).astype(np.int8)
    w1 = RNG.integers(-127, 128, (48, 1, 1, 24)).astype(np.int8)
    w2 = RNG.integers(-127, 128, (32, 1, 1, 48)).astype(np.int8)
    b1, b2 = (RNG.integers(-5000, 5000, n).astype(np.int32) for n in (48, 32))
    return x, w1, b1, w2, b2, RNG.uniform(0.001, 0.004, 48), RNG.uniform(0.0005, 0.002, 32)


@pytest.mark.parametrize("both", [False, True])
def test_producer_writes_the_shifted_activations(both: bool) -> None:
    """The first kernel ends in ``+128`` to uint8 and the 1x1 consumer reads it with no copy;
    with the middle tensor read twice, it stays int8 and the consumer copies. Bit-exact with
    the numpy model either way."""
    x, w1, b1, w2, b2, real1, real2 = chain_case()
    target = x86("znver4")
    mod = relax_main(lambda v: chain(v, w1, b1, w2, b2, real1, real2, both), [x])
    fused = fuse(mod, target)
    dots = [
        f for f in fused.functions.values() if isinstance(f, tirx.PrimFunc) and int8.DOT in str(f)
    ]
    assert len(dots) == 2
    # the consumer reads the 48-channel middle tensor
    consumer = next(f for f in dots if int(f.params[0].shape[-1]) == 48)
    producer = next(f for f in dots if f is not consumer)
    assert str(producer.params[-1].dtype) == ("int8" if both else "uint8")
    consumer = str(consumer)
    assert (int8.ACT in consumer) == both
    if not runs_here("znver4"):
        return
    vm = relax.VirtualMachine(compile_module(mod, target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x))
    got = got[0].numpy() if both else got.numpy()
    (zx, zm), _ = CHAIN_Q
    acc1 = ref_conv2d(x, w1, b1, zx, (1, 1), (0, 0, 0, 0), (1, 1))
    middle = ref_requantize(acc1, real1, zm, (-128, 127), "double_up", "int8")
    acc2 = ref_conv2d(middle, w2, b2, zm, (1, 1), (0, 0, 0, 0), (1, 1))
    np.testing.assert_array_equal(
        got, ref_requantize(acc2, real2, -3, (-128, 127), "double_up", "int8")
    )


@pytest.mark.parametrize("mcpu", ["x86-64-v3", "x86-64-v4"])
def test_pmaddwd_activations_are_widened_once(mcpu: str) -> None:
    """Without VNNI the copy widens the activations to int16 pairs once, and each register
    tile broadcasts a pair with one load (``vpbroadcastd`` from memory); before, every tile
    of output channels sign-extended each pair again (``vmovd`` from a general register,
    ``vpmovsxbw``, ``vpbroadcastd``: three vector uops per pixel and step). Bit-exact."""
    x = RNG.integers(-128, 128, (1, 14, 14, 96)).astype(np.int8)
    w = RNG.integers(-127, 128, (64, 1, 1, 96)).astype(np.int8)
    build = lambda v: kernels.conv2d(v, w, None, 3, kernels.Window())  # noqa: E731
    exe = compile_relax(build, [x], x86(mcpu))
    body = parallel_bodies(assembly(exe))
    assert "vpmaddwd" in body
    assert not re.search(r"vmovd\t%e|vpmovsxbw\t%xmm\d+, %xmm", body)
    assert re.search(r"vpbroadcastd\t-?\d*\(", body)
    if runs_here(mcpu):
        np.testing.assert_array_equal(
            run(exe, [x]), ref_conv2d(x, w, None, 3, (1, 1), (0,) * 4, (1, 1))
        )


@pytest.mark.parametrize(
    ("kind", "width", "tile"),
    [
        (int8.AVX2_WD, 14, (7, 1)),  # 7 pixels x 1 vector, not 2 x 2
        (int8.AVX2_WD, 7, (7, 1)),  # not 1 x 2
        (int8.AVX2_WD, 112, (4, 2)),
        (int8.VNNI, 14, (7, 2)),  # 24 accumulators: as before
        (int8.VNNI, 112, (7, 2)),  # (the stack's 1 KiB bounds it)
    ],
)
def test_register_tile_holds_the_most_accumulators(kind, width: int, tile) -> None:
    assert int8._tile_shape(width, 96, kind) == tile

"""bridge's default CPU schedules apply to the kernels that dominate real models.

Numeric correctness of every scheduled kernel is covered by the layer/model/application tests
(they all build with these schedules); this checks that the rules actually fire.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm.relax.backend.cpu_generic.pipeline import legalize_passes, library_dispatch_passes

import bridge
from bridge.compile import bind_weights
from bridge.schedules.common import most_accumulators
from bridge.schedules.cpu import (
    MAX_ACCUMULATORS,
    ChannelsLastKernels,
    register_tile,
    simd_lanes,
    vector_registers,
)
from tests.conftest import EXAMPLES, KERAS3, conv_clip_pad_module, runs_here

TARGET = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v4"})


def fused_kernels(*args) -> dict[str, tvm.tirx.PrimFunc]:
    mod, params = bridge.to_relax(*args)
    with TARGET:
        mod = tvm.transform.Sequential(library_dispatch_passes(TARGET) + legalize_passes(TARGET))(
            bind_weights(mod, params)
        )
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize(
    "model", [KERAS3 / "models" / "seq_cnn.keras", EXAMPLES / "digits" / "digits_cnn.keras"]
)
def test_conv_dense_pool_kernels_are_tiled_vectorized_parallel(model):
    rule = ChannelsLastKernels()
    checked = 0
    for name, func in fused_kernels(model).items():
        if any(op in name for op in ("conv2d", "matmul", "max_pool")):
            sch = rule.apply(func, TARGET, False)
            assert sch is not None, f"{name} was not scheduled"
            text = sch.mod["main"].script()
            assert "T.parallel" in text and "T.vectorized" in text, name
            checked += 1
    assert checked >= 3


def _x86(mcpu: str | None = None) -> tvm.target.Target:
    return tvm.target.Target(
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu", **({"mcpu": mcpu} if mcpu else {})}
    )


def test_simd_width_follows_target():
    assert (simd_lanes(TARGET), vector_registers(TARGET)) == (16, 32)
    assert simd_lanes(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})) == 8
    # CPU names by their features (TVM's llvm_get_vector_width says 512 for all of them)
    for mcpu in ("znver3", "haswell"):
        assert (simd_lanes(_x86(mcpu)), vector_registers(_x86(mcpu))) == (8, 16), mcpu
    for mcpu in ("znver4", "skylake-avx512"):
        assert (simd_lanes(_x86(mcpu)), vector_registers(_x86(mcpu))) == (16, 32), mcpu
    assert simd_lanes(_x86()) == 4  # no CPU named: LLVM's baseline x86-64 (SSE2)
    neon = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
    assert (simd_lanes(neon), vector_registers(neon)) == (4, 32)


@pytest.mark.parametrize(
    "width, channels, lanes, registers, want",
    [
        (112, 96, 8, 16, (4, 16)),  # AVX2: two vectors leave room for 6 pixels; 4 divide 112
        (14, 96, 8, 16, (7, 8)),  # one vector x 7 pixels beats two x 2
        (22, 96, 8, 16, (11, 8)),  # one vector: up to 12 pixels (4 registers spare)
        (7, 32, 8, 16, (7, 8)),
        (56, 24, 8, 16, (8, 8)),  # 24 channels: one vector is the block
        (112, 96, 16, 32, (8, 32)),  # AVX-512: two vectors x 8 pixels (a tie with 16 x 1)
        (7, 32, 16, 32, (7, 32)),
        (14, 112, 16, 32, (14, 16)),  # 112 channels: one vector is the block, 14 pixels
        (56, 12, 4, 32, (14, 4)),  # NEON, 12 channels: one vector x 14 pixels
    ],
)
def test_register_tile_fits_the_register_file(width, channels, lanes, registers, want):
    pixels, block = register_tile(width, channels, lanes, registers, MAX_ACCUMULATORS)
    assert (pixels, block) == want
    vectors = -(-block // lanes)
    assert pixels * vectors + vectors + 1 <= registers
    assert pixels * vectors <= min(MAX_ACCUMULATORS, registers - 4)


@pytest.mark.parametrize(
    "width, limits, want",
    [
        (14, {2: 6, 1: 13}, (7, 1)),  # 7 x 1 holds more than 2 x 2
        (12, {2: 6, 1: 14}, (6, 2)),  # a tie (12 each): more vectors
        (7, {2: 0, 1: 0}, (1, 2)),  # no room: one pixel still
        (13, {2: 8}, (1, 2)),  # a prime row: one pixel per tile
    ],
)
def test_most_accumulators_picks_the_largest_tile(width, limits, want):
    assert most_accumulators(width, limits) == want


def _stack_vectors(executable, register: str) -> int:
    """Vector register stores to and loads from the stack in the parallel loop bodies."""
    import re

    from tests.conftest import parallel_bodies

    asm = "\n".join(m.inspect_source("asm") for m in executable.mod.imports)
    spill = re.compile(rf"{register}\d+.*\(%r[sb]p\)|\(%r[sb]p\).*{register}\d+")
    return sum(1 for line in parallel_bodies(asm).splitlines() if spill.search(line))


@pytest.mark.parametrize("groups", [1, 64], ids=["conv", "depthwise"])
def test_avx2_tiles_stay_in_registers(groups):
    """Built for an AVX2 CPU (16 ymm registers), a convolution's register tile spills no
    vector to the stack; tiled for AVX-512's 32 registers (TVM's vector width for every x86
    CPU name) the 1x1 kernel spilled 72 times and the depthwise one 376. Where the host runs
    AVX2, the kernel gives what the baseline x86-64 build gives."""
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module

    avx2 = compile_module(_conv_module(groups), _x86("znver3"))
    assert _stack_vectors(avx2, "%ymm") == 0
    if runs_here("x86-64-v3"):
        x = np.random.default_rng(2).standard_normal((1, 14, 14, 64)).astype("float32")
        got, want = (
            VirtualMachine(e, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
            for e in (avx2, compile_module(_conv_module(groups), _x86("x86-64")))
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gpu_pipeline_keeps_padding_out_of_conv_epilogues():
    from bridge.schedules.pipeline import fuse

    target = bridge.targets.resolve("cuda-sm90").tvm_target()
    with target:
        mod = fuse(conv_clip_pad_module(), target)
    names = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("conv2d" in n for n in names) and any("pad" in n for n in names), names
    assert not any("conv2d" in n and "pad" in n for n in names), names


def test_gpu_build_of_conv_clip_pad_has_compiled_device_code(tmp_path):
    from bridge.compile import compile_module
    from bridge.cuda import check_device_code, enable_offline_codegen

    enable_offline_codegen()
    target = bridge.targets.resolve("cuda-sm90").tvm_target()
    executable = compile_module(conv_clip_pad_module(), target)
    library = tmp_path / "model.so"
    executable.export_library(str(library))
    check_device_code(library, "sm_90")


def test_guarded_rule_failure_means_not_applicable():
    from tvm.s_tir.dlight.base import ScheduleRule

    from bridge.schedules.gpu import Guarded

    class Broken(ScheduleRule):
        def apply(self, func, target, tunable):
            raise RuntimeError("consumers not inlined")

    assert Guarded(Broken()).apply(None, None, False) is None


def test_channel_slice_after_pool_stays_in_bounds():
    """max_pool2d -> the first half of the channels (MediaPipe's hand_recrop): the slice must not
    be folded into the pool's write-back, which would write all 64 channels into 32."""
    from tvm import relax
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 8, 8, 64], "float32"))
    with builder.function("main", [x], attrs={"num_input": 1}):
        with builder.dataflow():
            pooled = builder.emit(relax.op.nn.max_pool2d(x, [2, 2], [2, 2], layout="NHWC"))
            half = builder.emit(relax.op.strided_slice(pooled, axes=[3], begin=[0], end=[32]))
            out = builder.emit_output(relax.op.multiply(half, relax.const(2.0)))
        builder.emit_func_output(out)
    a = np.random.default_rng(0).standard_normal((1, 8, 8, 64)).astype("float32")
    vm = VirtualMachine(compile_module(builder.get(), tvm.target.Target("llvm")), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(a)).numpy()
    expected = 2 * a.reshape(1, 4, 2, 4, 2, 64).max(axis=(2, 4))[..., :32]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def _unary_kernel(op, target: dict, lanes: int = 16, dtype: str = "float32"):
    from tvm import te

    a = te.placeholder((4096,), dtype, name="a")
    b = te.compute((4096,), lambda i: op(a[i]), name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    (loop,) = sch.get_loops(sch.get_sblock("b"))
    sch.vectorize(sch.split(loop, [None, lanes])[1])
    return tvm.compile(sch.mod, target=target).mod


def _run_unary(lib, x: np.ndarray) -> np.ndarray:
    y = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), y)
    return y.numpy()


SPECIALS = [np.nan, np.inf, -np.inf, 0, 89, -90, 88.75, -87.5, 1e30, -1e30]


@pytest.mark.parametrize("mcpu, lanes", [("x86-64-v3", 8), ("x86-64-v4", 32)])
def test_exp_is_vector_arithmetic_and_accurate(mcpu, lanes):
    """``exp`` as vector arithmetic (no libm call per lane), within 5e-7 of float64 and exact
    on the special values (NaN, infinities, overflow to inf, underflow to 0), in vectors of
    one register and of two."""
    from tvm import te

    import bridge.schedules  # noqa: F401  (registers the exp lowering)

    if not runs_here(mcpu):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    lib = _unary_kernel(te.exp, {"kind": "llvm", "mcpu": mcpu}, lanes)
    source = lib.inspect_source("ll")
    assert "expf" not in source and "llvm.exp" not in source  # no libm call per lane
    x = np.concatenate([np.linspace(-86, 88.72, 4096 - len(SPECIALS)), SPECIALS])
    got = _run_unary(lib, x.astype("float32"))
    with np.errstate(over="ignore"):
        want = np.exp(x.astype("float32").astype("float64"))
    n = 4096 - len(SPECIALS)
    assert np.max(np.abs(got[:n] - want[:n]) / want[:n]) < 5e-7
    np.testing.assert_array_equal(got[n:], [np.nan, np.inf, 0, 1, np.inf, 0, np.inf, 0, np.inf, 0])


@pytest.mark.parametrize("mcpu, lanes", [("x86-64-v3", 8), ("x86-64-v4", 32)])
def test_sigmoid_folds_the_negation_and_is_accurate(mcpu, lanes):
    """``sigmoid`` as ``1 / (1 + exp(-x))`` with the negation folded into exp's constants
    (no subtraction from zero before the clamp), within 3e-7 of float64 (relative, and
    absolute below 1e-30) and exact on the special values."""
    from tvm import te

    import bridge.schedules  # noqa: F401

    if not runs_here(mcpu):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    lib = _unary_kernel(te.sigmoid, {"kind": "llvm", "mcpu": mcpu}, lanes)
    negations = re.findall(
        r"fsub <\d+ x float> (?:zeroinitializer|splat \(float -?0\.0+e\+00\))",
        lib.inspect_source("ll"),
    )
    assert not negations
    x = np.concatenate([np.linspace(-90, 20, 4096 - len(SPECIALS)), SPECIALS])
    got = _run_unary(lib, x.astype("float32"))
    with np.errstate(over="ignore"):
        want = 1 / (1 + np.exp(-x.astype("float32").astype("float64")))
    n = 4096 - len(SPECIALS)
    error = np.abs(got[:n] - want[:n])
    assert np.all((error <= 3e-7 * want[:n]) | (error < 1e-30))
    np.testing.assert_allclose(got[n:], want[n:], rtol=3e-7, atol=1e-37)  # NaN stays NaN
    assert np.isnan(got[n]) and got[n + 1] == 1 and got[n + 2] == 0


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_exp_and_sigmoid_of_other_types_keep_llvms_exp(dtype):
    """float16 and float64 ``exp`` and ``sigmoid`` compile (to LLVM's exp) with bridge's
    float32 lowering registered: its rule answers for every type."""
    from tvm import te

    import bridge.schedules  # noqa: F401

    x = np.linspace(-5, 5, 4096).astype(dtype)
    for op, want in ((te.exp, np.exp(x)), (te.sigmoid, 1 / (1 + np.exp(-x)))):
        got = _run_unary(_unary_kernel(op, {"kind": "llvm"}, 8, dtype), x)
        np.testing.assert_allclose(got, want, rtol=2e-3 if dtype == "float16" else 1e-12)


def test_row_kernels_are_vectorized_per_row_and_exact():
    """Reductions over the last axis (softmax's steps, layer norm, sum/max/mean): scheduled
    row by row with vector partial results, and equal to numpy (extents 160: 10 vectors of
    16; 1000: 125 of 8; 999: no vector width divides it, so scalar reductions per row)."""
    from tvm import relax
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module
    from bridge.schedules.cpu import schedule_rows

    def softmax_and_norm(width: int) -> tvm.IRModule:
        builder = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType([2, 3, width], "float32"))
        with builder.function("main", [x], attrs={"num_input": 1}):
            with builder.dataflow():
                soft = builder.emit(relax.op.nn.softmax(x, axis=-1))
                mean = builder.emit(relax.op.mean(x, axis=[-1], keepdims=True))
                centered = builder.emit(relax.op.subtract(x, mean))
                var = relax.op.mean(relax.op.multiply(centered, centered), axis=[-1], keepdims=True)
                norm = builder.emit(relax.op.multiply(centered, relax.op.rsqrt(var)))
                peak = builder.emit(relax.op.max(x, axis=[-1]))
                out = builder.emit_output(relax.Tuple([soft, norm, peak]))
            builder.emit_func_output(out)
        return builder.get()

    for width in (160, 1000, 999):
        mod = softmax_and_norm(width)
        kernels = fused_kernels_of(mod)
        rows = [n for n, f in kernels.items() if schedule_rows(tvm.s_tir.Schedule(f), 16)]
        assert len(rows) >= 3, (width, sorted(kernels))
        for name in rows:
            text = schedule_rows(tvm.s_tir.Schedule(kernels[name]), 16).mod["main"].script()
            assert "T.parallel" in text, name
            assert ("_rf" in text) == ("T.vectorized" in text) == (width != 999), name
        x = np.random.default_rng(0).standard_normal((2, 3, width)).astype("float32") * 4
        vm = VirtualMachine(compile_module(mod, tvm.target.Target("llvm")), tvm.cpu())
        soft, norm, peak = (t.numpy() for t in vm["main"](tvm.runtime.tensor(x)))
        e = np.exp(x - x.max(-1, keepdims=True))
        np.testing.assert_allclose(soft, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
        c = x - x.mean(-1, keepdims=True)
        expected = c / np.sqrt((c * c).mean(-1, keepdims=True))
        np.testing.assert_allclose(norm, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(peak, x.max(-1))


def fused_kernels_of(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    with TARGET:
        mod = tvm.transform.Sequential(library_dispatch_passes(TARGET) + legalize_passes(TARGET))(
            mod
        )
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize(
    "strides, padding, dilation",
    [
        ((1, 1), (1, 1, 1, 1), (1, 1)),
        ((2, 2), (0, 0, 1, 1), (1, 1)),
        ((1, 1), (2, 2, 2, 2), (2, 2)),
    ],
)
def test_prepacked_weights_give_the_same_results(strides, padding, dilation):
    """Constant conv2d / dense weights wider than one register tile are repacked at compile time
    ([out / tile, ..., tile]); the packed kernels must equal TVM's own unpacked lowering."""
    from tvm import relax
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module
    from bridge.schedules.pipeline import fuse

    rng = np.random.default_rng(0)  # 12 input channels: too few for Winograd
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 9, 9, 12], "float32"))
    w = relax.const(rng.standard_normal((3, 3, 12, 96)).astype("float32"))
    dense = relax.const(rng.standard_normal((96, 64)).astype("float32"))
    with builder.function("main", [x], attrs={"num_input": 1}):
        with builder.dataflow():
            y = builder.emit(
                relax.op.nn.conv2d(
                    x, w, strides, padding, dilation, data_layout="NHWC", kernel_layout="HWIO"
                )
            )
            y = builder.emit(relax.op.nn.relu(y))
            out = builder.emit_output(relax.op.matmul(y, dense))
        builder.emit_func_output(out)
    mod = builder.get()
    target = tvm.target.Target("llvm")
    names = [gv.name_hint for gv in fuse(mod, target).get_global_vars()]
    assert any("conv2d_nhwc_packed" in n for n in names), names
    assert any("matmul_packed" in n for n in names), names
    a = tvm.runtime.tensor(rng.standard_normal((1, 9, 9, 12)).astype("float32"))
    got = VirtualMachine(compile_module(mod, target), tvm.cpu())["main"](a).numpy()
    with target:
        reference = tvm.compile(mod, target=target)  # TVM's pipeline: unpacked, unscheduled
    want = VirtualMachine(reference, tvm.cpu())["main"](a).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 8])
def test_zero_padding_is_folded_into_the_next_convolution(groups):
    """ZeroPadding2D -> Conv2D/DepthwiseConv2D (MobileNetV2's strided blocks): the convolution
    takes the padding itself (no padded copy), with the same results as TVM's own lowering."""
    from tvm import relax
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module
    from bridge.schedules.pipeline import fuse

    rng = np.random.default_rng(0)
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 10, 10, 8], "float32"))
    w = relax.const(rng.standard_normal((3, 3, 8 // groups, 8)).astype("float32"))
    with builder.function("main", [x], attrs={"num_input": 1}):
        with builder.dataflow():
            y = builder.emit(relax.op.nn.relu(x))
            y = builder.emit(relax.op.nn.pad(y, [0, 0, 0, 1, 1, 2, 0, 0]))
            y = relax.op.nn.conv2d(
                y, w, (2, 2), (1, 0, 0, 0), groups=groups, data_layout="NHWC", kernel_layout="HWIO"
            )
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    mod = builder.get()
    target = tvm.target.Target("llvm")
    assert "R.nn.pad" not in fuse(mod, target)["main"].script()
    kernels = [gv.name_hint for gv in fuse(mod, target).get_global_vars()]
    assert not any("pad" in k for k in kernels), kernels
    a = tvm.runtime.tensor(rng.standard_normal((1, 10, 10, 8)).astype("float32"))
    got = VirtualMachine(compile_module(mod, target), tvm.cpu())["main"](a).numpy()
    with target:
        reference = tvm.compile(mod, target=target)
    want = VirtualMachine(reference, tvm.cpu())["main"](a).numpy()
    assert got.shape == want.shape == (1, 5, 6, 8)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile", [4, 2])
def test_winograd_matrices_compute_a_3x3_correlation(tile):
    """F(m x m, 3x3): A^T [(G g G^T) * (B^T d B)] A is the valid 3x3 correlation of a tile."""
    from bridge.schedules.winograd import VARIANTS

    v = VARIANTS[tile]
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((tile + 2, tile + 2)), rng.standard_normal((3, 3))
    got = v.a_t @ ((v.g @ g @ v.g.T) * (v.b_t @ d @ v.b_t.T)) @ v.a_t.T
    want = [[np.sum(d[i : i + 3, j : j + 3] * g) for j in range(tile)] for i in range(tile)]
    np.testing.assert_allclose(got, np.array(want), rtol=1e-12, atol=1e-12)


def _conv_epilogue_module(shape, channels_out, padding, rng) -> tvm.IRModule:
    """conv2d (3x3, stride 1) + bias + residual-style add of the input's first channels + relu."""
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), "float32"))
    w = rng.standard_normal((3, 3, shape[3], channels_out)).astype("float32") / 3
    bias = relax.const(rng.standard_normal(channels_out).astype("float32"))
    with builder.function("main", [x], attrs={"num_input": 1}):
        with builder.dataflow():
            y = builder.emit(
                relax.op.nn.conv2d(
                    x, relax.const(w), 1, padding, data_layout="NHWC", kernel_layout="HWIO"
                )
            )
            y = builder.emit(relax.op.nn.relu(relax.op.add(y, bias)))
            out = builder.emit_output(relax.op.multiply(y, y))
        builder.emit_func_output(out)
    return builder.get()


@pytest.mark.parametrize(
    "shape, channels_out, padding",
    [
        ((1, 14, 14, 32), 48, (1, 1, 1, 1)),  # 16 tiles over 16x16: the output is cropped
        ((2, 13, 11, 16), 32, (0, 0, 0, 0)),  # valid padding, two images, partial tiles
        ((1, 17, 15, 24), 40, (0, 2, 1, 1)),  # asymmetric padding, odd channel counts
        ((1, 7, 7, 64), 32, (1, 1, 1, 1)),  # F(2, 3): 16 tiles of 2x2 over 8x8, cropped
        ((2, 8, 8, 16), 16, (0, 0, 0, 0)),  # F(2, 3), valid padding, 9 tiles per image
    ],
)
def test_winograd_convolution_equals_tvm_lowering(shape, channels_out, padding):
    """3x3 stride-1 convolutions with enough tiles become Winograd's three kernels (epilogue
    fused into the output transform); results equal TVM's own direct lowering."""
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module
    from bridge.schedules.pipeline import fuse

    rng = np.random.default_rng(1)
    mod = _conv_epilogue_module(shape, channels_out, padding, rng)
    target = bridge.targets.resolve("native").tvm_target()
    names = [gv.name_hint for gv in fuse(mod, target).get_global_vars()]
    assert {"winograd_input", "winograd_product"} <= set(names), names
    assert any(n.startswith("fused_winograd_output") for n in names), names  # epilogue fused
    assert not any("conv2d" in n for n in names), names
    a = tvm.runtime.tensor(rng.standard_normal(shape).astype("float32"))
    got = VirtualMachine(compile_module(mod, target), tvm.cpu())["main"](a).numpy()
    with target:
        reference = tvm.compile(mod, target=target)
    want = VirtualMachine(reference, tvm.cpu())["main"](a).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("stage", ["input", "output"])
def test_winograd_rule_refusing_falls_back_to_generic_schedule(stage, monkeypatch):
    """Should a Winograd transform rule refuse a kernel, the build still succeeds (generic
    injective schedule) with the same results."""
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module
    from bridge.schedules import winograd

    calls = []

    def refuse(sch, lanes):
        calls.append(stage)
        raise ValueError("unexpected kernel")

    monkeypatch.setattr(winograd, f"schedule_{stage}", refuse)
    rng = np.random.default_rng(2)
    shape = (1, 14, 14, 16)
    mod = _conv_epilogue_module(shape, 32, (1, 1, 1, 1), rng)
    target = bridge.targets.resolve("native").tvm_target()
    a = tvm.runtime.tensor(rng.standard_normal(shape).astype("float32"))
    got = VirtualMachine(compile_module(mod, target), tvm.cpu())["main"](a).numpy()
    assert calls == [stage]
    with target:
        reference = tvm.compile(mod, target=target)
    want = VirtualMachine(reference, tvm.cpu())["main"](a).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize(
    "shape, kernel, strides",
    [
        ((1, 5, 5, 64), (3, 3), 1),  # 9 tiles of 2x2: too few to amortize larger weights
        ((1, 16, 16, 8), (3, 3), 1),  # 8 input channels: the transforms would dominate
        ((1, 33, 33, 32), (3, 3), 2),  # strided
        ((1, 16, 16, 32), (5, 5), 1),  # not 3x3
    ],
)
def test_winograd_only_where_it_pays(shape, kernel, strides):
    from tvm import relax

    from bridge.schedules.pipeline import fuse

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), "float32"))
    w = relax.const(np.ones((*kernel, shape[3], 32), "float32"))
    with builder.function("main", [x], attrs={"num_input": 1}):
        with builder.dataflow():
            y = relax.op.nn.conv2d(x, w, strides, 1, data_layout="NHWC", kernel_layout="HWIO")
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    target = bridge.targets.resolve("native").tvm_target()
    names = [gv.name_hint for gv in fuse(builder.get(), target).get_global_vars()]
    assert not any("winograd" in n for n in names), names
    assert any("conv2d" in n for n in names), names


@pytest.mark.parametrize(
    "shape, tile",
    [
        ((1, 56, 56, 64), 4),  # ResNet50's stages at 224x224, batch 1
        ((1, 14, 14, 256), 4),
        ((1, 7, 7, 512), 2),  # 4 tiles of 4x4, 16 of 2x2
        ((8, 7, 7, 512), 4),  # batch 8: 32 tiles of 4x4
        ((1, 5, 5, 64), None),
    ],
)
def test_winograd_tile_follows_the_feature_map(shape, tile):
    from types import SimpleNamespace

    from bridge.schedules.winograd import choose

    attrs = SimpleNamespace(strides=(1, 1), dilation=(1, 1), padding=(1, 1, 1, 1))
    variant = choose(np.zeros((3, 3, shape[3], 64), "float32"), attrs, shape)
    assert (variant.tile if variant else None) == tile


def test_vector_rows_are_whole_vectors_of_trailing_axes():
    from bridge.schedules.common import vector_row

    assert vector_row([8, 224, 224, 3], 16) == 2  # rows of 224 x 3 = 42 vectors
    assert vector_row([8, 114, 114, 64], 16) == 1
    assert vector_row([16, 1000], 8) == 1
    assert vector_row([1, 1, 1, 1280], 16) is None  # one row: no parallel loop
    assert vector_row([2, 3, 1000], 16) is None  # no trailing axes make whole vectors


@pytest.mark.parametrize("kind", ["quantize", "pad"])
def test_injective_kernels_index_vectors_without_divisions(kind):
    """An image's QUANTIZE (3 channels) and a padding copy are vectorized along rows of whole
    vectors, in parallel by row (rows of 32 x 3 and 64 elements): the QUANTIZE's x86 code has
    no per-lane division left (a multiply by a magic number), the copy computes its indices
    once per row instead of once per vector; the values are numpy's."""
    from tvm import te, tirx

    from bridge.schedules.common import vectorize_block

    if kind == "quantize":
        shape, out_shape = (8, 20, 32, 3), (8, 20, 32, 3)  # above SERIAL_ELEMENTS
        x = te.placeholder(shape, "float32", name="x")
        y = te.compute(
            shape, lambda *i: tirx.Cast("int8", tirx.round(x(*i) * tirx.const(50.0))), name="y"
        )
    else:
        shape, out_shape = (2, 20, 20, 64), (2, 22, 22, 64)
        x = te.placeholder(shape, "int8", name="x")
        inside = lambda n, h, w, c: tirx.all(h >= 1, h < 21, w >= 1, w < 21)  # noqa: E731
        y = te.compute(
            out_shape,
            lambda n, h, w, c: tirx.if_then_else(
                inside(n, h, w, c), x[n, h - 1, w - 1, c], tirx.const(-128, "int8")
            ),
            name="y",
        )
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    vectorize_block(sch, sch.get_sblock("y"), 16)
    rows = int(np.prod(out_shape[:-2])) if kind == "quantize" else int(np.prod(out_shape[:-1]))
    assert f"T.parallel({rows})" in sch.mod.script() and "T.vectorized(16)" in sch.mod.script()
    lib = tvm.compile(sch.mod, target=TARGET).mod
    asm = (lib.imports[0] if lib.imports else lib).inspect_source("asm")
    assert "vpmuldq" not in asm and "vpmuludq" not in asm
    rng = np.random.default_rng(0)
    if kind == "quantize":
        data = rng.uniform(-2, 2, shape).astype("float32")
        expected = np.round(data * 50).astype("int8")
    else:
        data = rng.integers(-128, 128, shape).astype("int8")
        expected = np.pad(data, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-128)
    run = tvm.compile(sch.mod, target="llvm")
    out = tvm.runtime.tensor(np.zeros(out_shape, expected.dtype))
    run(tvm.runtime.tensor(data), out)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_find_block_looks_names_up_without_a_failed_lookup(monkeypatch):
    """A missing block is None without a failed ``get_sblock`` (whose error renders the whole
    function: printer warnings on stderr for a tensorized kernel)."""
    from tvm import te

    from bridge.schedules.common import block_names, find_block

    x = te.placeholder((4, 8), "float32", name="x")
    y = te.compute((4, 8), lambda i, j: x[i, j] * 2, name="y")
    z = te.compute((4, 8), lambda i, j: y[i, j] + 1, name="z")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, z]))
    assert block_names(sch) == {"root", "y", "z"}
    sch.compute_inline(sch.get_sblock("y"))
    lookup, asked = tvm.s_tir.Schedule.get_sblock, []

    def recorded(self, name, *args, **kwargs):
        asked.append(name)
        return lookup(self, name, *args, **kwargs)

    monkeypatch.setattr(tvm.s_tir.Schedule, "get_sblock", recorded)
    assert find_block(sch, "y") is None
    assert sch.get(find_block(sch, "z")).name_hint == "z"
    assert "y" not in asked and "z" in asked


def _reduction_order(func: tvm.tirx.PrimFunc, pixel_axes: int):
    """:func:`weights_first` on the one reduction block of an unscheduled float kernel (with
    the float threshold, as :mod:`bridge.schedules.cpu` asks)."""
    from bridge.schedules.common import SWEPT_FLOAT_WEIGHTS, is_reduction, weights_first

    sch = tvm.s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    (block,) = [b for b in blocks if is_reduction(sch, b)]
    return weights_first(sch, block, pixel_axes, SWEPT_FLOAT_WEIGHTS)


@pytest.mark.parametrize(
    "shape, kernel, channels_out, order",
    [
        ((1, 7, 7, 1024), 1, 320, []),  # 1.25 MiB of weights over a 7x7 map: channels first
        ((1, 6, 6, 256), 3, 128, []),  # 1.1 MiB, 3x3 stride 2 (no Winograd)
        ((1, 7, 7, 160), 1, 960, []),  # 0.6 MiB: float weights from SWEPT_FLOAT_WEIGHTS
        ((1, 7, 7, 48), 1, 960, None),  # 0.18 MiB: below SWEPT_FLOAT_WEIGHTS, pixels first
        ((1, 56, 56, 512), 1, 512, None),  # 1 MiB of weights, a 6 MiB input: pixels first
    ],
)
def test_large_weights_sweep_each_channel_block_over_all_pixels(shape, kernel, channels_out, order):
    """A float product whose weights reach SWEPT_FLOAT_WEIGHTS and outweigh its input runs
    channel blocks outside the pixel tiles (ResNet50 fp32 25-30% faster); results equal TVM's
    lowering."""
    from tvm import relax
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module
    from bridge.schedules.pipeline import fuse

    rng = np.random.default_rng(3)
    w = rng.standard_normal((kernel, kernel, shape[3], channels_out)).astype("float32") / 30
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), "float32"))
    with builder.function("main", [x], attrs={"num_input": 1}):
        with builder.dataflow():
            y = builder.emit(
                relax.op.nn.conv2d(
                    x,
                    relax.const(w),
                    2 if kernel == 3 else 1,
                    kernel // 2,
                    data_layout="NHWC",
                    kernel_layout="HWIO",
                )
            )
            out = builder.emit_output(relax.op.nn.relu(y))
        builder.emit_func_output(out)
    mod = builder.get()
    target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})  # runs on any x86-64 CI
    fused = fuse(mod, target)
    (conv,) = [f for gv, f in fused.functions.items() if "conv2d" in gv.name_hint]
    assert _reduction_order(conv, 3) == order
    if shape[1] > 7:
        return  # the order's only effect is speed: its results are the small maps' check
    a = tvm.runtime.tensor(rng.standard_normal(shape).astype("float32"))
    got = VirtualMachine(compile_module(mod, target), tvm.cpu())["main"](a).numpy()
    with target:
        want = VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())["main"](a).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_winograd_product_keeps_each_tile_position_outside_its_channel_blocks():
    """Winograd's product indexes its weights by tile position: with 9 MiB of transformed
    weights over 16 tiles the position stays outermost, channel blocks inside it."""
    rng = np.random.default_rng(4)
    mod = _conv_epilogue_module((1, 14, 14, 256), 256, (1, 1, 1, 1), rng)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
    product = fuse_kernels_named(mod, target, "winograd_product")
    assert _reduction_order(product, 2) == [0]


def fuse_kernels_named(mod: tvm.IRModule, target, name: str) -> tvm.tirx.PrimFunc:
    from bridge.schedules.pipeline import fuse

    (func,) = [f for gv, f in fuse(mod, target).functions.items() if gv.name_hint == name]
    return func


def _conv_module(groups: int):
    """MobileNetV2's convolutions at 14x14 with fewer channels, each with its batch-norm scale
    and ReLU6: a 1x1 expansion (``groups`` 1) or a 3x3 depthwise one (``groups`` = 64)."""
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 14, 14, 64], "float32"))
    shape, layout = ((3, 3, 64, 1), "HWOI") if groups > 1 else ((1, 1, 64, 128), "HWIO")
    w = relax.const(np.random.default_rng(0).standard_normal(shape).astype("float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(
                relax.op.nn.conv2d(
                    x,
                    w,
                    padding=1 if groups > 1 else 0,
                    groups=groups,
                    data_layout="NHWC",
                    kernel_layout=layout,
                )
            )
            y = builder.emit(relax.op.clip(relax.op.multiply(y, relax.const(0.5)), 0.0, 6.0))
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    return builder.get()


@pytest.mark.parametrize("groups", [1, 64], ids=["conv", "depthwise"])
def test_tile_accumulators_are_on_the_stack(groups, monkeypatch):
    """A register tile's accumulators are a stack slot, not a workspace-pool allocation per
    tile; with bridge.schedules.stack switched off, every tile allocates (the control)."""
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module
    from bridge.schedules import stack
    from tests.conftest import parallel_bodies

    def build():
        executable = compile_module(_conv_module(groups), TARGET)
        asm = "\n".join(m.inspect_source("asm") for m in executable.mod.imports)
        return executable, "AllocWorkspace" in parallel_bodies(asm)

    executable, allocates = build()
    assert not allocates
    with monkeypatch.context() as patch:
        patch.setattr(stack, "stack_buffers", lambda func: func)
        control, control_allocates = build()
    assert control_allocates, "the control build should allocate its tiles from the pool"
    x = np.random.default_rng(1).standard_normal((1, 14, 14, 64)).astype("float32")
    if runs_here("x86-64-v4"):
        got, want = (
            VirtualMachine(e, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
            for e in (executable, control)
        )
        np.testing.assert_array_equal(got, want)


def test_padded_image_copies_each_pixel_as_a_short_vector():
    """A 3-channel image's padding copy (225 x 225 x 3: no row of whole 8-lane vectors) runs
    in parallel by row, pixel by pixel, each pixel's 3 channels one short vector, its indices
    without any division (a loop over all elements in vectors of 5 divided every lane's
    index by 675 and by 3); the values are numpy's."""
    from tvm import te, tirx

    from bridge.schedules.common import vectorize_block

    shape, out_shape = (1, 224, 224, 3), (1, 225, 225, 3)
    x = te.placeholder(shape, "float32", name="x")
    y = te.compute(
        out_shape,
        lambda n, h, w, c: tirx.if_then_else(
            tirx.all(h < 224, w < 224), x[n, h, w, c], tirx.const(0.0, "float32")
        ),
        name="y",
    )
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    vectorize_block(sch, sch.get_sblock("y"), 8)
    script = sch.mod.script()
    assert "T.parallel(225)" in script and "T.vectorized(3)" in script, script
    asm = tvm.compile(sch.mod, target=_x86("znver3")).mod.inspect_source("asm")
    assert "vpmuldq" not in asm and "vpmuludq" not in asm
    data = np.random.default_rng(0).standard_normal(shape).astype("float32")
    out = tvm.runtime.tensor(np.zeros(out_shape, "float32"))
    tvm.compile(sch.mod, target="llvm")(tvm.runtime.tensor(data), out)
    np.testing.assert_array_equal(out.numpy(), np.pad(data, ((0, 0), (0, 1), (0, 1), (0, 0))))


def test_per_channel_operand_of_an_rgb_row_is_read_as_constant_vectors():
    """An RGB input's normalization, ``(x - mean[c]) / std[c]`` over (1, 224, 224, 3): a row
    of 16-lane vectors would index mean and std by each lane's channel (a modulo and a gather
    per vector); the row runs 3 vectors unrolled per step instead (48 elements: the channels'
    period), whose channels are constants. No index division (``vpmuldq``) nor vectors built
    lane by lane (``vinsertps``) in the code, which the old schedule had; the values are
    numpy's."""
    import re

    from tvm import te

    from bridge.schedules.common import channel_period, vectorize_block

    shape = (1, 224, 224, 3)
    x = te.placeholder(shape, "float32", name="x")
    mean = te.placeholder((3,), "float32", name="mean")
    std = te.placeholder((3,), "float32", name="std")
    y = te.compute(shape, lambda n, h, w, c: (x[n, h, w, c] - mean[c]) / std[c], name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, mean, std, y]))
    block = sch.get_sblock("y")
    assert channel_period(sch, block, list(shape), 16) == 3
    assert channel_period(sch, block, list(shape), 4) == 3
    vectorize_block(sch, block, 16)
    assert "* 48 +" in sch.mod.script()
    built = tvm.compile(sch.mod, target=TARGET)
    assert not re.search(r"vpmuldq|vinsertps|gather", built.mod.inspect_source("asm"))

    rng = np.random.default_rng(0)
    data = [rng.standard_normal(s).astype("float32") for s in (shape, (3,), (3,))]
    data[2] = np.abs(data[2]) + 0.5
    out = tvm.runtime.tensor(np.zeros(shape, "float32"))
    if runs_here("x86-64-v4"):
        built(*map(tvm.runtime.tensor, data), out)
        np.testing.assert_allclose(out.numpy(), (data[0] - data[1]) / data[2], rtol=1e-6)


def _global_reduction(shape, dtype: str, reduce, name: str, values: np.ndarray):
    """``reduce(x)`` of an NHWC input as one kernel: its schedule's TIR (AVX-512) and its
    output on ``values`` (built for this CPU)."""
    from tvm import relax
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), dtype))
    with builder.function("main", [x], attrs={"num_input": 1}):
        with builder.dataflow():
            out = builder.emit_output(reduce(x))
        builder.emit_func_output(out)
    mod = builder.get()
    target = _x86("skylake-avx512")
    kernels = fused_kernels_of(mod)
    (kernel,) = [n for n in kernels if name in n]
    with target:
        text = ChannelsLastKernels().apply(kernels[kernel], target, False).mod["main"].script()
    vm = VirtualMachine(compile_module(mod, tvm.target.Target("llvm")), tvm.cpu())
    return text, vm["main"](tvm.runtime.tensor(values)).numpy()


@pytest.mark.parametrize(
    ("shape", "split"),
    [
        ((1, 56, 56, 144), True),
        ((1, 14, 14, 32), True),
        ((1, 7, 7, 64), False),
        ((2, 28, 28, 16), False),
    ],
)
def test_integer_global_sum_runs_over_pixels_in_parallel(shape, split):
    """A sum of an 8-bit map over all its pixels into one int32 per channel (the mean of
    global pooling and squeeze-and-excite, batch 1) is split into runs of rows added in
    parallel (an ``rfactor``), not run channel vector by channel vector; under 64 pixels, or
    with more than one output position per channel, the register-tile rule keeps it. Equal
    to numpy either way."""
    from tvm import relax

    values = np.random.default_rng(1).integers(-128, 128, shape).astype("int8")

    def reduce(x):
        return relax.op.sum(relax.op.astype(x, "int32"), axis=[1, 2], keepdims=True)

    text, got = _global_reduction(shape, "int8", reduce, "sum", values)
    assert ("_rf" in text) == split, text
    assert "T.parallel" in text
    np.testing.assert_array_equal(got, values.astype(np.int64).sum((1, 2), keepdims=True))


def test_float_global_mean_runs_over_pixels_in_parallel():
    """A float global average pooling (sum, then the divide after it) at batch 1 takes the
    same runs of rows, the divide per vector of channels; equal to numpy within float
    rounding (the sum adds in another order)."""
    from tvm import relax

    shape = (1, 28, 28, 96)
    values = np.random.default_rng(2).standard_normal(shape).astype("float32")
    text, got = _global_reduction(
        shape, "float32", lambda x: relax.op.mean(x, axis=[1, 2]), "mean", values
    )
    assert "_rf" in text and "T.parallel" in text
    np.testing.assert_allclose(got, values.astype(np.float64).mean((1, 2)), rtol=1e-5, atol=1e-6)


def _gated_projection(shape, outputs: int, extra_reader: bool = False) -> tvm.IRModule:
    """A squeeze-and-excite block's end: ``conv2d(x * sigmoid(mean(x)), W)``."""
    from tvm import relax

    rng = np.random.default_rng(5)
    w = relax.const(rng.standard_normal((1, 1, shape[3], outputs)).astype("float32"))
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), "float32"))
    with builder.function("main", [x], attrs={"num_input": 1}):
        with builder.dataflow():
            gate = builder.emit(relax.op.sigmoid(relax.op.mean(x, axis=[1, 2], keepdims=True)))
            gated = builder.emit(relax.op.multiply(x, gate))
            y = builder.emit(relax.op.nn.conv2d(gated, w, data_layout="NHWC", kernel_layout="HWIO"))
            if extra_reader:
                y = builder.emit(relax.op.add(y, relax.op.sum(gated, axis=[3], keepdims=True)))
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    return builder.get()


@pytest.mark.parametrize(
    ("shape", "outputs", "extra_reader", "folded"),
    [
        ((1, 16, 16, 32), 8, False, True),
        ((1, 2, 2, 32), 8, False, False),  # 4 pixels, 8 outputs: the map is the cheaper
        ((2, 16, 16, 32), 8, False, False),  # a gate per sample
        ((1, 16, 16, 32), 8, True, False),  # the gated map is read again
    ],
)
def test_channel_gate_is_folded_into_the_projection_weights(shape, outputs, extra_reader, folded):
    """``conv2d(x * g, W)`` with a per-channel gate at batch 1 becomes ``conv2d(x, W * g)``
    where the map has more pixels than the convolution has outputs and nothing else reads
    the gated map; results equal TVM's own lowering within float rounding either way."""
    from tvm import relax
    from tvm.runtime.vm import VirtualMachine

    from bridge.compile import compile_module
    from bridge.schedules.gate_fold import fold_gates

    mod = _gated_projection(shape, outputs, extra_reader)
    text = relax.transform.DeadCodeElimination()(fold_gates(mod))["main"].script()
    assert ("R.nn.conv2d(x," in text) == folded, text  # the convolution reads the map itself
    assert ("R.multiply(x, lv" not in text) == folded, text  # and nothing scales it
    target = tvm.target.Target("llvm")
    values = np.random.default_rng(6).standard_normal(shape).astype("float32")
    a = tvm.runtime.tensor(values)
    got = VirtualMachine(compile_module(mod, target), tvm.cpu())["main"](a).numpy()
    with target:
        reference = tvm.compile(mod, target=target)
    want = VirtualMachine(reference, tvm.cpu())["main"](a).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

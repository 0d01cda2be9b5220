"""Intel AMX tiles for the int8 products (bridge.schedules.int8_amx): the code a Sapphire
Rapids target gets (any x86 machine can compile it) and, where the CPU has AMX, bit-exact
results against the numpy references and LiteRT's fixtures."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from conftest import FIXTURES, runs_here
from test_int8 import MAX_STEPS, ref_conv2d, ref_dense
from test_int8_schedules import (
    assembly,
    compile_relax,
    dot_kernel,
    output_block,
    residual_block,
    residual_case,
    residual_expected,
    run,
)

import bridge
from bridge.quant import kernels
from bridge.schedules import int8, int8_amx

SPR_DICT = {"kind": "llvm", "mcpu": "sapphirerapids", "mtriple": "x86_64-linux-gnu"}
SPR = tvm.target.Target(SPR_DICT)
ZEN4 = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu"})
RNG = np.random.default_rng(29)
AMX = pytest.mark.skipif(not runs_here("sapphirerapids"), reason="this CPU has no AMX")

CONVS = [
    # (shape NHWC, out channels, kernel, strides, padding, activation dtype): each on AMX
    ((1, 9, 10, 32), 48, 3, (1, 1), (1, 1, 1, 1), "int8"),  # 10-pixel tiles, 3 x 16 outputs
    ((1, 6, 6, 256), 32, 1, (1, 1), (0, 0, 0, 0), "uint8"),
    ((2, 14, 14, 256), 64, 1, (1, 1), (0, 0, 0, 0), "int8"),  # per-strip copy, 4 sums tiles
    ((1, 8, 28, 40), 24, 3, (1, 1), (0, 1, 2, 1), "int8"),  # 40-byte steps, 14-pixel tiles
    ((1, 12, 12, 128), 32, 3, (2, 1), (1, 1, 1, 1), "int8"),  # vertical stride, 2 steps
    ((1, 6, 8, 272), 80, 1, (1, 1), (0, 0, 0, 0), "int8"),  # 5 x 16 outputs: one tile a time
    ((2, 7, 7, 512), 256, 3, (1, 1), (1, 1, 1, 1), "int8"),  # 1.1 MiB weights: channels first
    ((2, 14, 13, 256), 64, 1, (2, 2), (0, 0, 0, 0), "int8"),  # strided 1x1: a dense copy
    ((1, 14, 14, 96), 64, 1, (1, 1), (0, 0, 0, 0), "int8"),  # 96 products per output
]
VNNI_ONLY = [
    ((1, 9, 10, 32), 48, 3, (2, 2), (1, 1, 1, 1), "int8"),  # horizontal stride
    ((1, 16, 16, 3), 16, 3, (1, 1), (1, 1, 1, 1), "int8"),  # 3 channels (4 padded)
    ((1, 14, 14, 48), 64, 1, (1, 1), (0, 0, 0, 0), "int8"),  # 48 products per output
]


def conv_build(case):
    shape, out_c, k, strides, padding, dtype = case
    w = RNG.integers(-127, 128, (out_c, k, k, shape[3])).astype(np.int8)
    bias = RNG.integers(-5000, 5000, out_c).astype(np.int32)
    zx = -7 if dtype == "int8" else 131
    window = kernels.Window(strides, padding)
    lo, hi = (-128, 128) if dtype == "int8" else (0, 256)
    x = RNG.integers(lo, hi, shape).astype(dtype)
    want = ref_conv2d(x, w, bias, zx, strides, padding, (1, 1))
    return (lambda v: kernels.conv2d(v, w, bias, zx, window)), x, want


def test_tile_config_bytes() -> None:
    """ldtilecfg's 64 bytes: palette 1; bytes per row (u16 at 16 + 2t) and rows (u8 at 48 +
    t) for the sums tiles 0..n-1, the activations (4) and the weights (5-7); others unset."""
    raw = np.array(int8_amx.tile_config(14, 40, 2), "<i4").tobytes()
    assert raw[0] == 1 and not any(raw[1:16])
    colsb = np.frombuffer(raw[16:48], "<u2")
    rows = np.frombuffer(raw[48:64], np.uint8)
    assert list(colsb[:8]) == [64, 64, 0, 0, 40, 64, 64, 64] and not colsb[8:].any()
    assert list(rows[:8]) == [14, 14, 0, 0, 14, 10, 10, 10] and not rows[8:].any()


def test_amx_only_where_the_target_has_it() -> None:
    assert int8_amx.has_amx(SPR)
    assert not int8_amx.has_amx(ZEN4)
    assert not int8_amx.has_amx(tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server"}))


@pytest.mark.parametrize("case", CONVS + VNNI_ONLY)
def test_which_convolutions_take_tiles(case) -> None:
    """Stride-1 rows of 4+ pixels over 16+ channels, 64+ products per output: AMX tiles,
    the tiles configured per thread, Linux asked for them once per call; others: VNNI."""
    build, x, _ = conv_build(case)
    asm = assembly(compile_relax(build, [x], SPR))
    if case in CONVS:
        assert "tdpbusd" in asm and "ldtilecfg" in asm and "tileloadd" in asm, case
        assert "syscall" in asm
        assert int8_amx.AmxKernels().apply(dot_kernel(build, [x], SPR), SPR, False) is not None
    else:
        assert "tdpbusd" not in asm and "vpdpbusd" in asm, case


@pytest.mark.parametrize(("case", "stride"), [(CONVS[0], 1), (CONVS[4], 1), (VNNI_ONLY[0], 2)])
def test_horizontal_stride_is_read_before_tiling(case, stride: int, capfd) -> None:
    """The dot's horizontal stride comes from its activation index (a vertical stride does
    not count); a stride-2 row is refused by it rather than by a failed tensorize, whose
    mismatch report logs TVMScript printer warnings to stderr during the build."""
    build, x, _ = conv_build(case)
    kernel = dot_kernel(build, [x], SPR)
    sch = tvm.s_tir.Schedule(kernel)
    root = sch.get_sblock("root")
    dot = next(b for b in sch.get_child_blocks(root) if sch.get(b).name_hint.startswith("int8_dot"))
    assert int8_amx.horizontal_stride(sch, dot) == stride
    capfd.readouterr()
    assert (int8_amx.AmxKernels().apply(kernel, SPR, False) is None) == (stride != 1)
    assert "Warning" not in capfd.readouterr().err


@AMX
@pytest.mark.parametrize("case", CONVS + VNNI_ONLY)
def test_conv_bit_exact(case) -> None:
    build, x, want = conv_build(case)
    np.testing.assert_array_equal(run(compile_relax(build, [x], SPR), [x]), want)


@AMX
@pytest.mark.parametrize("rows", [6, 64])
def test_dense_rows_bit_exact(rows: int) -> None:
    """A dense layer's rows are the tile's pixels (K = 270: 272 padded, 16-byte steps)."""
    x = RNG.integers(-128, 128, (rows, 270)).astype(np.int8)
    w = RNG.integers(-127, 128, (40, 270)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, 40).astype(np.int32)
    build = lambda v: kernels.dense(v, w, bias, 4)  # noqa: E731
    executable = compile_relax(build, [x], SPR)
    assert "tdpbusd" in assembly(executable)
    np.testing.assert_array_equal(run(executable, [x]), ref_dense(x, w, bias, 4))


@AMX
def test_residual_epilogue_bit_exact() -> None:
    """Requantization, the residual's rescale, the add and its requantization over a strip
    of AMX sums."""
    _, r, w, bias, real = residual_case()
    x = RNG.integers(-128, 128, (*r.shape[:3], 256)).astype(np.int8)
    w = RNG.integers(-127, 128, (w.shape[0], 1, 1, 256)).astype(np.int8)
    build = lambda a, b: residual_block(a, b, w, bias, real)  # noqa: E731
    executable = compile_relax(build, [x, r], SPR)
    assert "tdpbusd" in assembly(executable)
    np.testing.assert_array_equal(run(executable, [x, r]), residual_expected(x, r, w, bias, real))


@AMX
@pytest.mark.parametrize("name", sorted(MAX_STEPS))
def test_model_against_litert_with_amx(name: str) -> None:
    """The int8 fixtures on AMX tiles: as close to LiteRT as on the generic target."""
    tflite = FIXTURES / "tflite"
    data = np.load(tflite / f"{name}.npz")
    inputs = [data[k] for k in sorted(data.files) if k.startswith("input_")]
    got = bridge.build(tflite / f"{name}.tflite", target=SPR_DICT)(*inputs)
    for i, g in enumerate(got if isinstance(got, list) else [got]):
        steps = int(np.abs(g.astype(np.int64) - data[f"output_{i}"].astype(np.int64)).max())
        assert steps <= MAX_STEPS[name], f"{name} output {i}: {steps} steps from LiteRT"


@AMX
@pytest.mark.parametrize("name", ["u8_conv", "u8_dense", "u8_more"])
def test_uint8_model_bit_exact_with_amx(name: str) -> None:
    """uint8 weights (stored as w - 128) on AMX tiles: bit-exact with LiteRT."""
    folder = FIXTURES / "tflite" / "uint8"
    data = np.load(folder / f"{name}.npz")
    inputs = [data[k] for k in sorted(data.files) if k.startswith("input_")]
    got = bridge.build(folder / f"{name}.tflite", target=SPR_DICT)(*inputs)
    for i, g in enumerate(got if isinstance(got, list) else [got]):
        np.testing.assert_array_equal(g, data[f"output_{i}"])


@pytest.mark.parametrize("case", [CONVS[0], CONVS[3], CONVS[4]])
def test_window_runs_in_one_update(case) -> None:
    """A 3x3 window's positions run inside one update: its loop is gone from the schedule and
    the sums are stored once per tile."""
    build, x, _ = conv_build(case)
    sch = tvm.s_tir.Schedule(dot_kernel(build, [x], SPR))
    int8_amx.schedule_amx(sch)
    script = sch.mod.script()
    assert "for rh" not in script and "tdpbusd" in script


def test_dilated_window_runs_in_one_update() -> None:
    """A dilated window too: its positions' activations at the dilation's stride, exact."""
    x = RNG.integers(-128, 128, (1, 12, 14, 64)).astype(np.int8)
    w = RNG.integers(-127, 128, (32, 3, 3, 64)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, 32).astype(np.int32)
    window = kernels.Window((1, 1), (2, 2, 2, 2), (2, 2))
    build = lambda v: kernels.conv2d(v, w, bias, -7, window)  # noqa: E731
    sch = int8_amx.AmxKernels().apply(dot_kernel(build, [x], SPR), SPR, False)
    assert sch is not None and "for rh" not in sch.mod.script()
    if runs_here("sapphirerapids"):
        want = ref_conv2d(x, w, bias, -7, (1, 1), (2, 2, 2, 2), (2, 2))
        np.testing.assert_array_equal(run(compile_relax(build, [x], SPR), [x]), want)


@pytest.mark.parametrize(("case", "rows"), [(CONVS[0], 1), (CONVS[4], 2), (CONVS[5], 2)])
def test_even_rows_share_the_weights_tile(case, rows: int) -> None:
    """An output with an even number of rows takes two rows of pixels per register tile, the
    second row's activations in tile 5, each weights tile (6, 7) multiplied by both rows'
    activations; an odd one, one row (weights in 5-7)."""
    build, x, _ = conv_build(case)
    asm = assembly(compile_relax(build, [x], SPR))
    second_row = re.search(r"tdpbusd\s+%tmm[67], %tmm5, %tmm[0-3]", asm)
    assert (second_row is not None) == (rows == 2), case


@pytest.mark.parametrize("case", [CONVS[0], CONVS[2]])
def test_tiles_configured_once_per_parallel_iteration(case) -> None:
    """``ldtilecfg`` runs at the top of the parallel loop's body, outside the register tiles
    (which only zero their sums), and the kernel asks Linux for the tiles before the loop."""
    build, x, _ = conv_build(case)
    sch = int8_amx.AmxKernels().apply(dot_kernel(build, [x], SPR), SPR, False)
    mod = int8_amx.request_amx(sch.mod)
    script = mod.script()
    assert script.count("ldtilecfg") == 1 and script.count("sttilecfg") == 1
    assert script.index("syscall") < script.index("T.parallel") < script.index("sttilecfg")
    assert script.index("sttilecfg") < script.index("ldtilecfg") < script.index("tilezero")
    # loaded only where the thread's tiles are configured otherwise
    assert re.search(
        r"if .*amx_current\[0\] != .*\n\s*T\.call_llvm_intrin\([^\n]*ldtilecfg", script
    )


@AMX
def test_kernels_of_other_tile_shapes_in_turn_bit_exact() -> None:
    """Kernels of different tile configurations called in turn on the same threads: each
    finds the other's configuration in place and loads its own (an unchanged one is kept)."""
    cases = [CONVS[0], CONVS[2], CONVS[6]]  # 10-pixel tiles; 14 pixels, 4 sums; flat
    builds = [conv_build(case) for case in cases]
    configs = set()
    for build, x, _ in builds:
        sch = int8_amx.AmxKernels().apply(dot_kernel(build, [x], SPR), SPR, False)
        root = sch.get(sch.get_sblock("root"))
        configs.add(tuple(int(w) for w in root.annotations[int8_amx.ANNOTATION]))
    assert len(configs) == len(cases)
    executables = [compile_relax(build, [x], SPR) for build, x, _ in builds]
    for _ in range(3):
        for executable, (_, x, want) in zip(executables, builds, strict=True):
            np.testing.assert_array_equal(run(executable, [x]), want)


@pytest.mark.parametrize(
    ("out_h", "out_w", "cols", "flat"),
    [
        (7, 7, 9, True),  # 49 of 64 tile rows against 7 of 16
        (7, 7, 7, True),
        (6, 6, 6, True),
        (14, 14, 16, False),  # 14 of 16 either way
        (56, 56, 56, False),
        (28, 28, 30, False),
        (3, 3, 5, False),  # 3-pixel rows stay on VNNI
    ],
)
def test_flat_form_where_it_fills_tiles_better(out_h, out_w, cols, flat: bool) -> None:
    assert int8.flat_fills_better(out_h, out_w, cols) is flat


FLAT = [  # each small map read as one flat row of pixels (int8.FLAT)
    CONVS[1],  # 6x6, 1x1, uint8
    CONVS[5],  # 6x8, 5 x 16 outputs
    CONVS[6],  # 7x7, 3x3, batch 2, weights first
    ((1, 7, 7, 2048), 64, 1, (1, 1), (0, 0, 0, 0), "int8"),  # ResNet50's 7x7 1x1
    ((1, 14, 14, 512), 48, 1, (2, 2), (0, 0, 0, 0), "int8"),  # strided 1x1: its subsample
    ((2, 6, 6, 64), 32, 3, (1, 1), (2, 2, 2, 2), "int8"),  # dilation 2, pixels first
]


def _blocks(func) -> list[str]:
    sch = tvm.s_tir.Schedule(func)
    return [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _dilated(case):
    """conv_build, with dilation 2 for the dilated case of FLAT."""
    if case is not FLAT[5]:
        return conv_build(case)
    shape, out_c, k, strides, padding, _ = case
    w = RNG.integers(-127, 128, (out_c, k, k, shape[3])).astype(np.int8)
    bias = RNG.integers(-5000, 5000, out_c).astype(np.int32)
    x = RNG.integers(-128, 128, shape).astype(np.int8)
    want = ref_conv2d(x, w, bias, -7, strides, padding, (2, 2))
    window = kernels.Window(strides, padding, (2, 2))
    return (lambda v: kernels.conv2d(v, w, bias, -7, window)), x, want


@pytest.mark.parametrize("case", FLAT)
def test_small_maps_take_the_flat_form(case) -> None:
    """A map whose rows fill AMX tiles poorly is one flat row of pixels: two tiles of 16 per
    register tile, each image's sums and epilogue in one parallel iteration, exact."""
    build, x, want = _dilated(case)
    kernel = dot_kernel(build, [x], SPR)
    assert int8.FLAT in _blocks(kernel)
    sch = int8_amx.AmxKernels().apply(kernel, SPR, False)
    assert sch is not None
    assert sch.mod.script().count("T.parallel") == 2  # the activation copy's, the product's
    dot = sch.get_sblock(f"{int8.FLAT}_update_o")
    out_loop, dot_loop = sch.get_loops(output_block(sch))[0], sch.get_loops(dot)[0]
    assert sch.get(out_loop).same_as(sch.get(dot_loop))
    if runs_here("sapphirerapids"):
        np.testing.assert_array_equal(run(compile_relax(build, [x], SPR), [x]), want)


@pytest.mark.parametrize("case", [CONVS[0], CONVS[2], CONVS[4], VNNI_ONLY[2]])
def test_row_form_elsewhere(case) -> None:
    build, x, _ = conv_build(case)
    assert int8.FLAT not in _blocks(dot_kernel(build, [x], SPR))


def test_flat_form_only_with_amx() -> None:
    build, x, _ = conv_build(CONVS[6])
    assert int8.FLAT not in _blocks(dot_kernel(build, [x], ZEN4))


@AMX
def test_flat_product_on_vnni_if_amx_refuses(monkeypatch) -> None:
    """Should the AMX schedule refuse a flat product, the VNNI rule's schedule (its epilogue
    as a pass of its own) computes it exactly."""
    build, x, want = conv_build(CONVS[6])

    def refuse(_sch) -> None:
        raise ValueError("refused")

    monkeypatch.setattr(int8_amx, "schedule_amx", refuse)
    executable = compile_relax(build, [x], SPR)
    assert "tdpbusd" not in assembly(executable) and "vpdpbusd" in assembly(executable)
    np.testing.assert_array_equal(run(executable, [x]), want)


@AMX
def test_flat_residual_epilogue_bit_exact() -> None:
    """Requantization, the residual's rescale and add over a flat 7x7 map's sums."""
    _, _, _, bias, real = residual_case()
    x = RNG.integers(-128, 128, (1, 7, 7, 256)).astype(np.int8)
    r = RNG.integers(-128, 128, (1, 7, 7, 24)).astype(np.int8)
    w = RNG.integers(-127, 128, (24, 1, 1, 256)).astype(np.int8)
    build = lambda a, b: residual_block(a, b, w, bias, real)  # noqa: E731
    assert int8.FLAT in _blocks(dot_kernel(build, [x, r], SPR))
    executable = compile_relax(build, [x, r], SPR)
    np.testing.assert_array_equal(run(executable, [x, r]), residual_expected(x, r, w, bias, real))


@pytest.mark.slow
@AMX
def test_tuned_flat_product_matches_the_default(tmp_path) -> None:
    """A flat product tuned in bridge's int8 search space (a few MetaSchedule trials): the
    best candidate computes what the default AMX schedule does, bit for bit."""
    from tvm.s_tir import meta_schedule as ms

    from bridge.tuning.kernels import build_schedule
    from bridge.tuning.session import _with_cores
    from bridge.tuning.space import space

    target = _with_cores(SPR)
    build, x, _ = conv_build(CONVS[6])
    kernel = dot_kernel(build, [x], SPR).with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": kernel})
    database = ms.tir_integration.tune_tir(
        mod, target, str(tmp_path), max_trials_global=6, num_trials_per_iter=3, space=space(mod)
    )
    tuned = ms.tir_integration.compile_tir(database, mod, target)
    default = int8_amx.AmxKernels().apply(kernel, SPR, False)
    assert tuned is not None and default is not None
    arrays = [
        RNG.integers(-100, 100, [int(d) for d in p.shape]).astype(str(p.dtype))
        for p in kernel.params
    ]
    outputs = []
    for scheduled in (tuned.mod, int8_amx.request_amx(default.mod)):
        tensors = [tvm.runtime.tensor(a) for a in arrays]
        build_schedule(scheduled, target)["main"](*tensors)
        outputs.append(tensors[-1].numpy())
    np.testing.assert_array_equal(*outputs)

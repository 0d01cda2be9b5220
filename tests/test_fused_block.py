"""An inverted residual's expansion and depthwise convolution become one kernel
(bridge.schedules.fused_block) that computes what the two layers compute."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir
from tvm.runtime.vm import VirtualMachine

from bridge.compile import compile_module
from bridge.schedules import fused_block
from bridge.schedules.pipeline import fuse

TARGET = tvm.target.Target("llvm")
RNG = np.random.default_rng(0)


def _const(*shape: int) -> relax.Expr:
    return relax.const(RNG.uniform(-1, 1, shape).astype("float32"))


def block_module(
    shape=(2, 56, 56, 16), expand=96, kernel=3, stride=2, explicit_pad=True, swish=False, tap=False
) -> tvm.IRModule:
    """1x1 expand -> batch norm -> relu6 (or swish) -> [pad] -> depthwise -> batch norm -> relu6;
    ``tap`` also returns the expanded activations (then nothing may be fused)."""
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), "float32"))
    conv = {"data_layout": "NHWC", "kernel_layout": "HWIO"}
    half = kernel // 2
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(relax.op.nn.conv2d(x, _const(1, 1, shape[3], expand), **conv))
            y = builder.emit(relax.op.multiply(y, _const(expand)))
            y = builder.emit(relax.op.add(y, _const(expand)))
            if swish:
                y = builder.emit(relax.op.multiply(y, builder.emit(relax.op.sigmoid(y))))
            else:
                y = builder.emit(relax.op.clip(builder.emit(relax.op.nn.relu(y)), 0.0, 6.0))
            expanded = y
            padding = [half] * 4
            if explicit_pad:
                y = builder.emit(relax.op.nn.pad(y, [0, 0, 0, 1, 0, 1, 0, 0]))
                padding = [0, 0, half - 1, half - 1]
            weights = _const(kernel, kernel, 1, expand)
            y = builder.emit(
                relax.op.nn.conv2d(
                    y, weights, strides=stride, padding=padding, groups=expand, **conv
                )
            )
            y = builder.emit(relax.op.add(relax.op.multiply(y, _const(expand)), _const(expand)))
            y = builder.emit(relax.op.clip(y, 0.0, 6.0))
            out = builder.emit_output(relax.Tuple([y, expanded]) if tap else y)
        builder.emit_func_output(out)
    return builder.get()


def _run(mod: tvm.IRModule, x: np.ndarray, fused: bool, monkeypatch) -> np.ndarray:
    if not fused:
        monkeypatch.setattr(fused_block, "MIN_EXPANDED_BYTES", 1 << 62)
    vm = VirtualMachine(compile_module(mod, TARGET), tvm.cpu())
    monkeypatch.undo()
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _kernel_names(mod: tvm.IRModule) -> list[str]:
    fused = fuse(mod, TARGET)
    return [gv.name_hint for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


@pytest.mark.parametrize(
    "options",
    [
        {},  # MobileNetV2's block_1: explicit pad, stride 2
        {"shape": (1, 48, 48, 24), "expand": 144, "stride": 1, "explicit_pad": False},
        {"shape": (1, 30, 30, 16), "expand": 304, "stride": 1},
    ],
)
def test_fused_block_matches_separate_kernels(options, monkeypatch):
    mod = block_module(**options)
    names = _kernel_names(mod)
    assert any("fused_expand_depthwise" in n for n in names), names
    assert not any("conv2d" in n for n in names), names  # both convolutions inside
    x = RNG.uniform(-1, 1, options.get("shape", (2, 56, 56, 16))).astype("float32")
    got = _run(mod, x, True, monkeypatch)
    want = _run(mod, x, False, monkeypatch)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fused_kernel_is_scheduled_in_bands():
    fused = fuse(block_module(), TARGET)
    (func,) = [f for gv, f in fused.functions.items() if "expand_depthwise" in gv.name_hint]
    sch = fused_block.schedule(s_tir.Schedule(func), 16)
    text = sch.mod["main"].script()
    assert "T.parallel" in text and "T.vectorized" in text


def test_expanded_tensor_read_elsewhere_is_not_fused():
    names = _kernel_names(block_module(tap=True))
    assert not any("fused_expand_depthwise" in n for n in names), names


def test_fused_kernel_with_a_5x5_window_and_swish(monkeypatch):
    """Not fused by default (measured slower), but computed right when allowed."""
    mod = block_module(shape=(1, 30, 30, 16), expand=304, kernel=5, swish=True, stride=1)
    assert not any("fused_expand_depthwise" in n for n in _kernel_names(mod))
    allow = ("relax.sigmoid", *fused_block.ELEMENTWISE)
    monkeypatch.setattr(fused_block, "WINDOWS", ((3, 3), (5, 5)))
    monkeypatch.setattr(fused_block, "ELEMENTWISE", allow)
    assert any("fused_expand_depthwise" in n for n in _kernel_names(mod))
    x = RNG.uniform(-1, 1, (1, 30, 30, 16)).astype("float32")
    got = _run(mod, x, True, monkeypatch)
    want = _run(mod, x, False, monkeypatch)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_swish_blocks_are_not_fused():
    names = _kernel_names(block_module(swish=True))
    assert not any("fused_expand_depthwise" in n for n in names), names


def test_small_blocks_are_not_fused():
    names = _kernel_names(block_module(shape=(1, 14, 14, 16), expand=96))
    assert not any("fused_expand_depthwise" in n for n in names), names


def test_band_rows_fit_the_budget_and_leave_parallel_work():
    # MobileNetV2's block_1 at batch 1: 56 output rows, stride 2, expanded rows of 112 x 96
    rows = fused_block.band_rows(56, 2, 3, 112 * 96 * 4, 1)
    assert 56 % rows == 0 and 56 // rows >= fused_block.MIN_BANDS
    assert ((rows - 1) * 2 + 3) * 112 * 96 * 4 <= fused_block.BAND_BYTES
    assert fused_block.band_rows(7, 1, 3, 7 * 960 * 4, 8) == 7  # a whole image per band


def test_default_rules_schedule_the_fused_kernel():
    """bridge's schedule rules hand the fused kernel to FusedBlockKernels: bands in parallel."""
    from bridge.schedules.pipeline import default_schedule

    with TARGET:
        scheduled = default_schedule(TARGET)(fuse(block_module(), TARGET))
    (func,) = [f for gv, f in scheduled.functions.items() if "expand_depthwise" in gv.name_hint]
    text = func.script()
    assert "T.parallel" in text and "T.vectorized" in text

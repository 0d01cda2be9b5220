"""bridge's default CPU schedules apply to the kernels that dominate real models.

Numeric correctness of every scheduled kernel is covered by the layer/model/application tests
(they all build with these schedules); this checks that the rules actually fire.
"""

from __future__ import annotations

import pytest
import tvm
from tvm.relax.backend.cpu_generic.pipeline import legalize_passes, library_dispatch_passes

import bridge
from bridge.compile import bind_weights
from bridge.schedules.cpu import ChannelsLastKernels, simd_lanes
from tests.conftest import EXAMPLES, KERAS3

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


def test_simd_width_follows_target():
    assert simd_lanes(TARGET) == 16
    assert simd_lanes(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})) == 8
    neon = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
    assert simd_lanes(neon) == 4

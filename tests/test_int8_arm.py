"""SIMD integer kernels on AArch64 (bridge.schedules.int8_arm): each aarch64 preset's integer
products use its instructions (``sdot`` with the dot-product extension, ``smull``/``smlal`` +
``sadalp`` on plain NEON), read from the generated assembly; and the aarch64 bundles, run under
qemu, give bit-for-bit the x86 build's results (int8 .tflite fixtures with CONV_2D, DEPTHWISE and
FULLY_CONNECTED; raw int32 products of int8 and uint8 activations against numpy)."""

from __future__ import annotations

import re
import shutil
from collections import Counter

import numpy as np
import pytest
import tvm
from conftest import FIXTURES, needs_tools, reference, run_bundle
from tvm import relax
from tvm.target.codegen import target_has_features

import bridge
from bridge.compile import compile_module
from bridge.export import BuiltModel
from bridge.quant import kernels
from bridge.schedules import int8_arm
from bridge.signature import TensorInfo
from bridge.targets import resolve

RNG = np.random.default_rng(11)
# preset -> (its host CPU has the dot-product extension, its kernels' dot instruction kind)
PRESETS = {
    "aarch64": False,
    "rpi4": False,
    "rpi5": True,
    "graviton3": True,
    "jetson-orin-nano": True,
    "jetson-agx-orin": True,
}
QEMU = ("-cpu", "max", "-L", "/usr/aarch64-linux-gnu")


def cpu_target(preset: str) -> tvm.target.Target:
    """The preset's CPU target (a Jetson's aarch64 host)."""
    target = resolve(preset).tvm_target()
    return target.host if target.kind.name == "cuda" else target


def relax_main(build, inputs: list[np.ndarray]) -> tvm.IRModule:
    builder = relax.BlockBuilder()
    params = [
        relax.Var(f"x{i}", relax.TensorType(x.shape, str(x.dtype))) for i, x in enumerate(inputs)
    ]
    with builder.function("main", params):
        with builder.dataflow():
            out = builder.emit_output(build(*params))
        builder.emit_func_output(out)
    return builder.get()


def assembly(executable) -> str:
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports)


def mnemonics(asm: str) -> Counter:
    return Counter(re.findall(r"^\s+([a-z][a-z0-9.]*)\s", asm, re.MULTILINE))


# the products checked: two convolutions (int8 and uint8 activations, channels and outputs off
# the tile, padding, stride) and a dense layer on a 3-D input with K and N off the tile
W_CONV = RNG.integers(-127, 128, (20, 3, 3, 6)).astype(np.int8)  # OHWI
W_CONV_U8 = RNG.integers(-127, 128, (16, 1, 1, 16)).astype(np.int8)
W_DENSE = RNG.integers(-127, 128, (25, 70)).astype(np.int8)  # N x K
W_DENSE_MIN = W_DENSE.copy()
W_DENSE_MIN[3, 5] = -128  # outside TFLite's symmetric range: NEON keeps the generic path
BIAS = RNG.integers(-5000, 5000, 25).astype(np.int32)
X_CONV = RNG.integers(-128, 128, (1, 9, 10, 6)).astype(np.int8)
X_CONV_U8 = RNG.integers(0, 256, (1, 5, 6, 16)).astype(np.uint8)
X_DENSE = RNG.integers(-128, 128, (3, 2, 70)).astype(np.int8)
INPUTS = [X_CONV, X_CONV_U8, X_DENSE]
WINDOW = kernels.Window((2, 1), (1, 1, 1, 1))


def products(x, xu, xd):
    return relax.Tuple([
        kernels.conv2d(x, W_CONV, None, -7, WINDOW),
        kernels.conv2d(xu, W_CONV_U8, None, 131, kernels.Window()),
        kernels.dense(xd, W_DENSE, BIAS, 4),
        kernels.dense(xd, W_DENSE_MIN, None, 0),
    ])  # fmt: skip


def numpy_products() -> list[np.ndarray]:
    """The same sums in int64 numpy: sum((x - zx) * w) + bias."""
    x = np.pad(X_CONV.astype(np.int64) + 7, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = np.zeros((1, 5, 10, 20), np.int64)
    for i in range(3):
        for j in range(3):
            patch = x[:, i : i + 9 : 2, j : j + 10]
            conv += np.einsum("nhwc,oc->nhwo", patch, W_CONV[:, i, j].astype(np.int64))
    conv_u8 = np.einsum("nhwc,oc->nhwo", X_CONV_U8.astype(np.int64) - 131, W_CONV_U8[:, 0, 0])
    xd = X_DENSE.astype(np.int64)
    dense = np.einsum("abk,nk->abn", xd - 4, W_DENSE.astype(np.int64)) + BIAS
    dense_min = np.einsum("abk,nk->abn", xd, W_DENSE_MIN.astype(np.int64))
    return [a.astype(np.int32) for a in (conv, conv_u8, dense, dense_min)]


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_say_what_they_have(preset: str) -> None:
    target = cpu_target(preset)
    with target:
        assert target_has_features("neon", target)
        assert target_has_features("dotprod", target) == PRESETS[preset]
    expected = int8_arm.SDOT if PRESETS[preset] else int8_arm.NEON
    assert int8_arm.arm_dot_kind(target) is expected
    description = resolve(preset).description  # what `bridge targets` lists
    assert ("dotprod" in description.replace("no dotprod", "")) == PRESETS[preset]


def test_off_aarch64_there_is_no_arm_kind() -> None:
    x86 = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu"})
    assert int8_arm.arm_dot_kind(x86) is None
    assert int8_arm.arm_dot_kind(tvm.target.Target("cuda")) is None


def test_pack_layouts() -> None:
    """sdot: [O/4, KH, KW, C/4, lane, channel]; NEON: [O/4, KH, KW, C/4, pair, lane, channel]."""
    w = RNG.integers(-127, 128, (3, 3, 5, 10)).astype(np.int8)  # HWIO
    sdot = int8_arm.pack_arm_weights(w, int8_arm.SDOT)
    neon = int8_arm.pack_arm_weights(w, int8_arm.NEON)
    assert sdot.shape == (3, 3, 3, 2, 4, 4) and neon.shape == (3, 3, 3, 2, 2, 4, 2)
    assert sdot[2, 1, 2, 1, 1, 0] == w[1, 2, 4, 9] == neon[2, 1, 2, 1, 0, 1, 0]
    assert neon[0, 0, 0, 0, 1, 3, 1] == w[0, 0, 3, 3]
    assert not sdot[2, :, :, :, 2:].any() and not neon[:, :, :, 1, :, :, 1].any()


@pytest.mark.parametrize("preset", PRESETS)
def test_assembly_uses_the_dot_instruction(preset: str) -> None:
    """Every product (int8 and uint8 activations) on the preset's instructions: sdot where the
    CPU has it, smull/smlal/sadalp and no sdot where it does not."""
    asm = assembly(compile_module(relax_main(products, INPUTS), cpu_target(preset)))
    counts = mnemonics(asm)
    if PRESETS[preset]:
        # 4 pixels' tiles of the conv, the uint8 conv, two dense layers: each at least one
        assert counts["sdot"] >= 16, counts
    else:
        assert counts["sdot"] == 0
        assert counts["smlal"] >= 8 and counts["sadalp"] >= 8 and counts["smull"] >= 8, counts


def built(preset: str) -> BuiltModel:
    """The products as a bridge model (what bridge.build returns) for ``preset``."""
    spec = resolve(preset)
    executable = compile_module(relax_main(products, INPUTS), spec.tvm_target())
    infos = lambda arrays, stem: [  # noqa: E731
        TensorInfo(f"{stem}{i}", a.shape, str(a.dtype)) for i, a in enumerate(arrays)
    ]
    metadata = {"target_name": spec.name, "arch": spec.arch, "device": spec.device, "params": []}
    return BuiltModel(
        executable, infos(INPUTS, "x"), infos(numpy_products(), "y"), metadata, spec=spec
    )


def test_products_on_x86_match_numpy() -> None:
    """The reference the qemu runs compare with."""
    got = built("native")(*INPUTS)
    for a, b in zip(got, numpy_products(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("preset", ["rpi4", "rpi5", "graviton3"])
def test_aarch64_products_under_qemu(preset: str, tmp_path) -> None:
    needs_tools(resolve(preset), "qemu-aarch64")
    folder = tmp_path / preset
    built(preset).export(folder, bundle=True)
    got = run_bundle(folder, INPUTS, shutil.which("qemu-aarch64"), *QEMU)
    for a, b in zip(got, numpy_products(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("preset", ["rpi4", "rpi5"])
@pytest.mark.parametrize(
    ("model", "dots"),
    [("cnn_int8", 3), ("mobile_int8", 4)],  # + 1 CONV_2D, 2 FULLY_CONNECTED; MobileNet's blocks
)
def test_int8_tflite_under_qemu_matches_x86(preset: str, model: str, dots: int, tmp_path) -> None:
    needs_tools(resolve(preset), "qemu-aarch64")
    path = FIXTURES / "tflite" / f"{model}.tflite"
    inputs, _ = reference(path.with_suffix(".npz"))
    expected = bridge.build(path, target="native")(*inputs)
    built_arm = bridge.build(path, target=preset)
    rewritten = [name for name in built_arm.metadata["kernels"] if "int8_dot" in name]
    assert len(rewritten) == dots, list(built_arm.metadata["kernels"])
    built_arm.export(tmp_path / preset, bundle=True)
    got = run_bundle(tmp_path / preset, inputs, shutil.which("qemu-aarch64"), *QEMU)
    expected = expected if isinstance(expected, list) else [expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", [int8_arm.SDOT, int8_arm.NEON], ids=["sdot", "neon"])
def test_register_tile_divides_and_fits(kind) -> None:
    """The tile divides the row and the channel vectors and fits the registers; with sdot a
    14-pixel row (ResNet's and MobileNet's 14x14 stage) holds 14 or more accumulators (a
    pixel count chosen before the vectors gave 2 x 4)."""
    weights = 1 if kind is int8_arm.SDOT else 2
    for width in (112, 56, 28, 14, 7, 1):
        for vectors in (64, 24, 250, 1):
            pixels, count = int8_arm.register_tile(width, vectors, kind)
            assert width % pixels == 0 and vectors % count == 0
            assert pixels * count + weights * count <= kind.registers
    pixels, count = int8_arm.register_tile(14, 64, kind)
    assert pixels * count >= (14 if kind is int8_arm.SDOT else 8)


@pytest.mark.parametrize("preset", ["rpi4", "rpi5"])
def test_no_workspace_per_tile(preset: str) -> None:
    """The register tile's accumulators live on the stack: a kernel with no activation copy
    (int8, no padding, channels a multiple of 4) allocates nothing through the runtime (a
    "local" buffer, or a name bound in an intrinsic, cost an allocation and a free per tile)."""
    x = RNG.integers(-128, 128, (1, 6, 8, 16)).astype(np.int8)
    w = RNG.integers(-127, 128, (32, 1, 1, 16)).astype(np.int8)
    build = lambda v: kernels.conv2d(v, w, None, 0, kernels.Window())  # noqa: E731
    asm = assembly(compile_module(relax_main(build, [x]), cpu_target(preset)))
    assert counts_of(asm, "sdot", "sadalp") > 0
    assert ":got:__TVMBackendAllocWorkspace" not in asm


def counts_of(asm: str, *names: str) -> int:
    counts = mnemonics(asm)
    return sum(counts[name] for name in names)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_activation_copy_moves_vectors(dtype: str) -> None:
    """The padded (and, for uint8, shifted) copy of 24-channel activations stores whole
    vectors per pixel: one vector over fused pixels and channels stored byte by byte."""
    x = RNG.integers(0, 100, (1, 8, 8, 24)).astype(dtype)
    w = RNG.integers(-127, 128, (16, 3, 3, 24)).astype(np.int8)
    build = lambda v: kernels.conv2d(v, w, None, 3, kernels.Window((1, 1), (1, 1, 1, 1)))  # noqa: E731
    counts = mnemonics(assembly(compile_module(relax_main(build, [x]), cpu_target("rpi5"))))
    assert counts["sdot"] > 0 and counts["strb"] == 0, counts

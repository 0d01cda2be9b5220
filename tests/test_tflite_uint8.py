"""uint8 .tflite files bit-exact with LiteRT (tests/fixtures/make_tflite_uint8.py; LiteRT 2.3
builtin kernels, x86, one thread, batch 4) through bridge's integer kernels.

- ``tf2_uint8io``: TensorFlow 2's full-integer conversion with uint8 inputs and outputs
  (QUANTIZE uint8 -> int8 and int8 -> uint8 around int8 conv, depthwise, add, average pool,
  dense, softmax): bit-exact, and was before this file.
- ``u8_*``: TensorFlow 1's uint8 models (fake-quant graph, ``from_session`` with
  ``inference_type=tf.uint8``): uint8 activations AND uint8 per-tensor weights with
  asymmetric zero points. bridge's integer products took only int8 weights with zero point 0,
  so these convolutions and dense layers ran TVM's dequantize -> float -> quantize: 1 step off
  on u8_conv (2 of 3888 values) and u8_net's logits (3/40), 2 steps on u8_depthwise (43 of
  3564; its 1x1 CONV_2D's errors through the depthwise layers); u8_dense happened to match.
  Now the weights are ``w - 128`` (int8) plus ``(128 - zw) * sum x``
  (:mod:`bridge.quant.kernels`) and every output is bit-exact. LiteRT's uint8 CONV_2D and
  FULLY_CONNECTED round halves up (like its int8 ones), its uint8 DEPTHWISE_CONV_2D away from
  zero in every channel (the int8 kernel's 8-channel SIMD blocks are 1 step off on
  u8_depthwise): ``bridge.quant.tflite.UINT8_ROUNDING``.
- ``u8_more`` (MAX_POOL_2D, LOGISTIC, TANH, MUL, SUB, QUANTIZE, MEAN) was bit-exact at once;
  its RESIZE_BILINEAR, and ``u8_resize`` (half-pixel, aligned corners, 2x-like upscale,
  downscale), were 1 step off (9 of 2592 values): LiteRT has the integer interpolation for
  int8 only, uint8 runs its float32 ``ResizeBilinearGenericSmallChannel``. bridge now computes
  that in float32 (products exact in float64, rounded to float32, so that LLVM cannot fuse
  them into an FMA: with FMA, 1 of 288 values was off): bit-exact, the only float in these
  modules.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import FIXTURES, assert_bit_exact, needs_tools, run_bundle
from test_int8 import ref_conv2d, ref_dense, ref_depthwise, run_relax
from tvm import relax

import bridge
from bridge.quant import kernels

UINT8 = FIXTURES / "tflite" / "uint8"
TARGET = "llvm"
INTEGER_ONLY = ["tf2_uint8io", "u8_conv", "u8_depthwise", "u8_dense", "u8_net"]
NAMES = [*INTEGER_ONLY, "u8_more", "u8_resize"]
RNG = np.random.default_rng(8)


def load(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    data = np.load(UINT8 / f"{name}.npz")
    inputs = [data[k] for k in sorted(data.files) if k.startswith("input_")]
    outputs = [data[k] for k in sorted(data.files) if k.startswith("output_")]
    return inputs, outputs


@pytest.mark.parametrize("name", NAMES)
def test_bit_exact_with_litert(name: str) -> None:
    inputs, expected = load(name)
    assert all(x.dtype == np.uint8 for x in inputs + expected)
    assert_bit_exact(bridge.build(UINT8 / f"{name}.tflite", target=TARGET)(*inputs), expected, name)


@pytest.mark.parametrize(
    ("preset", "name"), [("aarch64", "u8_depthwise"), ("rpi5", "u8_net"), ("rpi5", "u8_resize")]
)
def test_aarch64_bundle_bit_exact_under_qemu(preset: str, name: str, tmp_path) -> None:
    """The uint8-weight products (and their one-channel unit-weight sums) on 64-bit ARM's
    integer schedules (NEON; rpi5 adds the dot product), run as a bundle under qemu."""
    import shutil

    from bridge.targets import resolve

    needs_tools(resolve(preset), "qemu-aarch64")
    inputs, expected = load(name)
    bridge.build(UINT8 / f"{name}.tflite", target=preset).export(tmp_path / "b", bundle=True)
    qemu = shutil.which("qemu-aarch64")
    got = run_bundle(tmp_path / "b", inputs, qemu, "-L", "/usr/aarch64-linux-gnu")
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_array_equal(g, e, err_msg=f"{preset} {name} {i}")


def _translated(name: str):
    from bridge.tflite.reader import read_tflite
    from bridge.tflite.translate import translate

    return translate(read_tflite(UINT8 / f"{name}.tflite"))


def _calls(name: str) -> list[relax.Call]:
    found = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            found.append(expr)

    relax.analysis.post_order_visit(_translated(name).mod["main"].body, visit)
    return found


def _float_calls(name: str) -> list[str]:
    return [
        c.op.name
        for c in _calls(name)
        if c.op.name in ("relax.dequantize", "relax.quantize")
        or (isinstance(c.ty, relax.TensorType) and str(c.ty.dtype).startswith("float"))
    ]


@pytest.mark.parametrize("name", INTEGER_ONLY)
def test_integer_path_only(name: str) -> None:
    """No dequantize, quantize or float-valued operator in the translated module, and no float
    in any fused kernel bridge's pipeline makes of it (TVM's converter's float path fails this:
    tests/test_int8.py's guard)."""
    from bridge.compile import bind_weights
    from bridge.schedules.pipeline import fuse

    assert _float_calls(name) == []
    translation = _translated(name)
    fused = fuse(bind_weights(translation.mod, translation.params), tvm.target.Target(TARGET))
    funcs = [f for f in fused.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs
    assert [f.attrs["global_symbol"] for f in funcs if "float" in f.script()] == []


@pytest.mark.parametrize(("name", "resizes"), [("u8_more", 1), ("u8_resize", 4)])
def test_only_resize_is_float(name: str, resizes: int) -> None:
    """The float32 in u8_more and u8_resize is LiteRT's uint8 RESIZE_BILINEAR's: per resize
    the input cast, 4 x 2 gathers, 4 products and their casts, 3 + 1 adds, the clip."""
    floats = _float_calls(name)
    assert "relax.dequantize" not in floats and "relax.quantize" not in floats
    expected = {"relax.astype": 1 + 4, "relax.take": 8, "relax.multiply": 4}
    expected |= {"relax.add": 4, "relax.clip": 1}
    assert {op: floats.count(op) for op in set(floats)} == {
        op: n * resizes for op, n in expected.items()
    }


def _litert_resize_model(x: np.ndarray, size, align: bool, half: bool) -> np.ndarray:
    """numpy float32 (no FMA) of LiteRT's ResizeBilinearGenericSmallChannel."""
    from bridge.quant.tflite_tensors import _float32_taps

    f32 = np.float32
    y0, y1, dy = _float32_taps(size[0], x.shape[1], align, half)
    x0, x1, dx = _float32_taps(size[1], x.shape[2], align, half)
    pairs = ((1 - dy, 1 - dx), (1 - dy, dx), (dy, 1 - dx), (dy, dx))
    weights = [np.outer(a, b).astype(f32)[None, :, :, None] for a, b in pairs]
    total = None
    for (rows, cols), weight in zip(((y0, x0), (y0, x1), (y1, x0), (y1, x1)), weights):
        term = x.astype(f32)[:, rows][:, :, cols] * weight
        total = term if total is None else total + term
    return np.clip(total + f32(0.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("in_size", "size", "align", "half"),
    [
        ((7, 5), (4, 3), False, False),
        ((9, 13), (5, 4), False, True),
        ((6, 6), (17, 11), True, False),
    ],
)
def test_resize_uint8_float32_without_fma(in_size, size, align: bool, half: bool) -> None:
    """On the host's own CPU (FMA where it has one), bridge's uint8 resize equals the float32
    model exactly: a float32 multiply-add there was 1 step off on 32 of 24448 values."""
    from bridge.compile import compile_module
    from bridge.quant.tflite_tensors import resize_bilinear_uint8
    from bridge.targets import resolve

    x = RNG.integers(0, 256, (3, *in_size, 8)).astype(np.uint8)
    bb = relax.BlockBuilder()
    var = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [var]):
        with bb.dataflow():
            out = bb.emit_output(resize_bilinear_uint8(var, list(in_size), list(size), align, half))
        bb.emit_func_output(out)
    executable = compile_module(bb.get(), resolve("native").tvm_target())
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, _litert_resize_model(x, size, align, half))


def test_uint8_products_are_uint8_by_int8() -> None:
    """u8_net's convolutions and dense layer: uint8 activations x int8 weights (``w - 128``)
    -> int32, one product each except DEPTHWISE_CONV_2D (its unit-weight twin gives each
    window's ``sum x``; a convolution's comes from channel sums, dense's from row sums)."""
    products = [
        (c.op.name, str(c.args[0].ty.dtype), str(c.args[1].ty.dtype), str(c.ty.dtype))
        for c in _calls("u8_net")
        if c.op.name in ("relax.nn.conv2d", "relax.matmul")
    ]
    # three CONV_2D, DEPTHWISE_CONV_2D and its twin, AVERAGE_POOL_2D's window sum (a
    # depthwise product with unit weights)
    assert products.count(("relax.nn.conv2d", "uint8", "int8", "int32")) == 6, products
    assert products.count(("relax.matmul", "uint8", "int8", "int32")) == 1, products
    assert len(products) == 7, products


# --- the weight offset against numpy (every zero point's extreme) ----------------------------


WINDOWS = [
    kernels.Window((2, 1), (1, 0, 1, 2)),
    kernels.Window((1, 2), (2, 2, 2, 1), (2, 1)),
    kernels.Window(),
]


@pytest.mark.parametrize("window", WINDOWS, ids=["strided", "dilated", "plain"])
@pytest.mark.parametrize("zw", [0, 77, 128, 255])
def test_conv2d_uint8_weights(zw: int, window: kernels.Window) -> None:
    x = RNG.integers(0, 256, (2, 7, 8, 5)).astype(np.uint8)
    w = RNG.integers(0, 256, (6, 3, 3, 5)).astype(np.uint8)
    bias = RNG.integers(-3000, 3000, 6).astype(np.int32)
    zx = 131
    expected = ref_conv2d(
        x, w.astype(np.int64) - zw, bias, zx, window.strides, window.padding, window.dilation
    )
    w8 = (w.astype(np.int16) - 128).astype(np.int8)
    got = run_relax(lambda d: kernels.conv2d(d, w8, bias, zx, window, 1, 128 - zw), [x])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("zw", [0, 200, 255])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_uint8_weights(zw: int, multiplier: int) -> None:
    x = RNG.integers(0, 256, (2, 8, 7, 3)).astype(np.uint8)
    w = RNG.integers(0, 256, (1, 3, 3, 3 * multiplier)).astype(np.uint8)
    bias = RNG.integers(-3000, 3000, 3 * multiplier).astype(np.int32)
    zx, padding, strides = 9, (1, 1, 1, 1), (1, 1)
    expected = ref_depthwise(x, w.astype(np.int64) - zw, bias, zx, strides, padding, (1, 1))
    w8 = (w.astype(np.int16) - 128).astype(np.int8)
    window = kernels.Window(strides, padding)
    got = run_relax(lambda d: kernels.depthwise_conv2d(d, w8, bias, zx, window, 3, 128 - zw), [x])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("zw", [0, 255])
def test_dense_uint8_weights(zw: int) -> None:
    x = RNG.integers(0, 256, (3, 40)).astype(np.uint8)
    w = RNG.integers(0, 256, (10, 40)).astype(np.uint8)
    bias = RNG.integers(-9000, 9000, 10).astype(np.int32)
    expected = ref_dense(x, w.astype(np.int64) - zw, bias, 200)
    w8 = (w.astype(np.int16) - 128).astype(np.int8)
    got = run_relax(lambda d: kernels.dense(d, w8, bias, 200, 128 - zw), [x])
    np.testing.assert_array_equal(got, expected)


def test_grouped_offset_is_refused() -> None:
    x = relax.Var("x", relax.TensorType((1, 4, 4, 4), "uint8"))
    w = np.zeros((4, 1, 1, 2), np.int8)
    with pytest.raises(ValueError, match="ungrouped"):
        kernels.conv2d(x, w, None, 0, kernels.Window(), groups=2, weight_offset=3)

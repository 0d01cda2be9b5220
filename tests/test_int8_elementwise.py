"""Fast forms of TFLite's elementwise integer operators (bridge.quant.elementwise): swish
(``x * LOGISTIC(x)``) as one table, and the kernels' schedules; results stay bit-exact."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tvm
from conftest import FIXTURES, runs_here
from tvm import relax

import bridge
from bridge.compile import compile_module
from bridge.quant import elementwise, fixed_point
from bridge.schedules.pipeline import default_schedule, fuse

TARGET = "llvm"
BLOCK = FIXTURES / "tflite" / "int8ops" / "efficient_block"  # make_int8_swish.py


def build_main(build, inputs: list[np.ndarray], emit_args: bool = False) -> tvm.IRModule:
    """``build(vars) -> expr`` as a Relax module; with ``emit_args`` each input first passes
    through a bound variable (as the TFLite converter's normalized inputs do)."""
    bb = relax.BlockBuilder()
    params = [
        relax.Var(f"x{i}", relax.TensorType(x.shape, str(x.dtype))) for i, x in enumerate(inputs)
    ]
    with bb.function("main", params):
        with bb.dataflow():
            args = [bb.emit(relax.op.astype(p, str(x.dtype))) for p, x in zip(params, inputs)]
            out = bb.emit_output(build(*(args if emit_args else params)))
        bb.emit_func_output(out)
    return bb.get()


def run(mod: tvm.IRModule, inputs: list[np.ndarray]) -> np.ndarray:
    vm = relax.VirtualMachine(compile_module(mod, tvm.target.Target(TARGET)), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()


def operators(mod: tvm.IRModule) -> collections.Counter:
    found: collections.Counter = collections.Counter()

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            found[expr.op.name] += 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return found


def sigmoid_table(dtype: str, zero_in: int) -> tuple[np.ndarray, tuple[float, int]]:
    """LOGISTIC's table for ``dtype`` and its output quantization (scale 1/256)."""
    zero_out = -128 if dtype == "int8" else 0
    table = fixed_point.float_table(
        lambda v: 1 / (1 + np.exp(-v)), 0.047, zero_in, 1 / 256, zero_out, dtype
    )
    return table, (1 / 256, zero_out)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("emit_args", [False, True])
@pytest.mark.parametrize("order", ["x_first", "table_first"])
def test_swish_is_one_table(dtype: str, emit_args: bool, order: str) -> None:
    """MUL(x, LOGISTIC(x)) becomes one lookup of x (no multiply left) and gives, on every
    8-bit value, what the MUL of the two separate tensors gives."""
    low, high = fixed_point.INT_RANGE[dtype]
    zero_in = -7 if dtype == "int8" else 121
    x = np.arange(low, high + 1).astype(dtype).reshape(4, 64)
    table, q_sig = sigmoid_table(dtype, zero_in)
    q_x, out = (0.047, zero_in), (0.021, zero_in - 3)
    clamp = fixed_point.INT_RANGE[dtype]

    def swish(a, b):
        operands = [(a, q_x), (elementwise.lookup(b, table, low), q_sig)]
        if order == "table_first":
            operands.reverse()
        return elementwise.multiply(*operands, out, clamp, dtype)

    fused = build_main(lambda v: swish(v, v), [x], emit_args)
    assert operators(fused)["relax.multiply"] == 0
    assert operators(fused)["relax.call_tir"] == 1  # the lookup kernel
    separate = build_main(swish, [x, x.copy()])  # two tensors: no common source
    assert operators(separate)["relax.multiply"] >= 1
    expected = run(separate, [x, x.copy()])
    np.testing.assert_array_equal(run(fused, [x]), expected)


def test_lookup_source_round_trip() -> None:
    """A constant table lookup is recognized with its table in ``x - low`` order."""
    table = np.arange(256).astype("int8")[::-1].copy()
    x = relax.Var("x", relax.TensorType((3,), "int8"))
    source, values, low = elementwise.lookup_source(elementwise.lookup(x, table, -128))
    assert source.same_as(x) and low == -128
    np.testing.assert_array_equal(values, table)
    assert elementwise.lookup_source(relax.op.astype(x, "int32")) is None


def _activation_products(mod: tvm.IRModule) -> int:
    """Multiplies of two non-constant int32 tensors (integer MUL of two activations)."""
    count = 0

    def visit(expr) -> None:
        nonlocal count
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.multiply":
            args = expr.args
            if all(not isinstance(a, tvm.ir.expr.Constant) for a in args):
                count += str(expr.ty.dtype) == "int32"

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return count


def test_efficient_block_against_litert() -> None:
    """EfficientNet-like block (swish = LOGISTIC then MUL, squeeze-excite with a sigmoid gate):
    LiteRT's output exactly, with the three swishes as tables (only the squeeze-excite MUL
    multiplies two activations: the map by the gate's two per-channel factors)."""
    from bridge.tflite.reader import read_tflite
    from bridge.tflite.translate import translate

    data = np.load(f"{BLOCK}.npz")
    got = bridge.build(f"{BLOCK}.tflite", target=TARGET)(data["input_0"])
    np.testing.assert_array_equal(got, data["output_0"].reshape(got.shape))
    translation = translate(read_tflite(f"{BLOCK}.tflite"))
    assert _activation_products(translation.mod) == 2


# --- lookup kernels (bridge.schedules.int8_elementwise) ----------------------------------------


def _lookup_module(shape, dtype: str, table: np.ndarray) -> tvm.IRModule:
    low = fixed_point.INT_RANGE[dtype][0]
    return build_main(lambda v: elementwise.lookup(v, table, low), [np.zeros(shape, dtype)])


def assembly(executable) -> str:
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("shape", [(1, 20, 20, 64), (2, 7, 7, 13), (3, 5)])
def test_vbmi_lookup_bit_exact(dtype: str, shape: tuple[int, ...]) -> None:
    """With AVX-512 VBMI the lookup kernel is ``vpermi2b`` permutations (whole 64-byte blocks;
    sizes not a multiple of 64 end with single lookups) and returns ``table[x - low]`` for
    every 8-bit value."""
    from bridge.schedules.int8_elementwise import has_vbmi

    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu"})
    assert has_vbmi(target)
    low, high = fixed_point.INT_RANGE[dtype]
    table = np.random.default_rng(5).integers(-128, 128, 256).astype("int8")
    x = np.random.default_rng(6).integers(low, high + 1, int(np.prod(shape)))
    x[: min(x.size, 256)] = np.arange(low, high + 1)[: x.size]
    x = x.astype(dtype).reshape(shape)
    executable = compile_module(_lookup_module(shape, dtype, table), target)
    if x.size >= 64:
        assert "vpermt2b" in assembly(executable) or "vpermi2b" in assembly(executable)
    if not runs_here("znver4"):
        pytest.skip("this CPU cannot run znver4 code")
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, table[x.astype(np.int64) - low])


def test_lookup_without_vbmi_is_generic() -> None:
    """Without VBMI (AVX2 only) the rule leaves the lookup to the generic schedule: no
    byte permutation, same result."""
    from bridge.schedules.int8_elementwise import has_vbmi

    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "mtriple": "x86_64-linux-gnu"})
    assert not has_vbmi(target)
    table = np.arange(256)[::-1].astype("int8")
    x = np.arange(-128, 128).astype("int8").reshape(4, 64)
    executable = compile_module(_lookup_module(x.shape, "int8", table), target)
    assert "vpermt2b" not in assembly(executable) and "vpermi2b" not in assembly(executable)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, table[x.astype(np.int64) + 128])


def test_lookup_rule_ignores_other_kernels() -> None:
    """Only the lookup kernel is recognized (an elementwise cast is not)."""
    from tvm import te

    from bridge.schedules.int8_elementwise import lookup_buffers

    x = te.placeholder((4, 64), "int8")
    cast = te.compute(x.shape, lambda i, j: (x[i, j] + 1).astype("int8"), name="bridge_lookup")
    assert lookup_buffers(te.create_prim_func([x, cast])) is None
    table = te.placeholder((256,), "int8")
    looked = elementwise.lookup_compute(x, table)
    assert lookup_buffers(te.create_prim_func([x, table, looked])) is not None
    rows = tvm.tirx.Var("rows", "int64")  # a symbolic batch: a scalar parameter, no lookup
    dynamic = te.placeholder((rows, 64), "int8")
    copy = te.compute(dynamic.shape, lambda i, j: dynamic[i, j], name="bridge_lookup")
    assert lookup_buffers(te.create_prim_func([dynamic, copy, rows])) is None
    looked = elementwise.lookup_compute(dynamic, table)
    assert lookup_buffers(te.create_prim_func([dynamic, table, looked])) is None


def test_efficient_block_aarch64_under_qemu(tmp_path) -> None:
    """On 64-bit ARM (no VBMI: the generic lookup schedule) the block still gives LiteRT's
    output exactly, run as a bundle under qemu."""
    import shutil

    from conftest import needs_tools, run_bundle

    from bridge.targets import resolve

    needs_tools(resolve("aarch64"), "qemu-aarch64")
    data = np.load(f"{BLOCK}.npz")
    bridge.build(f"{BLOCK}.tflite", target="aarch64").export(tmp_path / "b", bundle=True)
    qemu = shutil.which("qemu-aarch64")
    got = run_bundle(tmp_path / "b", [data["input_0"]], qemu, "-L", "/usr/aarch64-linux-gnu")
    np.testing.assert_array_equal(got[0], data["output_0"])


# --- MUL's requantization in int32 lanes --------------------------------------------------------


@pytest.mark.parametrize("real", [0.7071, 0.5, 0.0123456, 3.1e-5, 1.1e-9, 0.99999994])
def test_int32_requantize_matches_int64(real: float) -> None:
    """MUL's requantization of every product of two centred 8-bit values in int32 lanes gives
    what the int64 reference rounding (fixed_point.requantize) gives, including clamps."""
    multiplier = fixed_point.quantize_multiplier(real)
    assert elementwise.narrow_multiplier(multiplier)
    bound = elementwise.PRODUCT_BOUND
    product = np.arange(-bound, bound + 1, dtype=np.int32)
    clamp = (-128, 127)

    def narrow(p):
        return elementwise.requantize_product(p, multiplier, 5, clamp, "int8")

    def wide(p):
        return fixed_point.requantize(p, multiplier, 5, clamp, "int8", "double")

    expected = run(build_main(wide, [product]), [product])
    np.testing.assert_array_equal(run(build_main(narrow, [product]), [product]), expected)
    unclamped = (-(2**31), 2**31 - 1)  # every rounding visible, not only the clamped range
    got = run(
        build_main(
            lambda p: elementwise.requantize_product(p, multiplier, 0, unclamped, "int32"),
            [product],
        ),
        [product],
    )
    reference = run(
        build_main(
            lambda p: fixed_point.requantize(p, multiplier, 0, unclamped, "int32", "double"),
            [product],
        ),
        [product],
    )
    np.testing.assert_array_equal(got, reference)


CHANNEL_CASES = [  # (real multiplier, full dtype and zero point, gate dtype and zero point)
    (0.7071, ("int8", -3), ("int8", -128)),
    (0.5, ("int8", 127), ("int8", -128)),  # |a - zp| reaches 255
    (0.0123456, ("uint8", 0), ("uint8", 255)),
    (0.00390625, ("int8", -128), ("int8", 127)),  # both reach 255
    (3.1e-5, ("int8", 10), ("uint8", 0)),
    (1.1e-9, ("int8", 0), ("int8", 0)),  # too small a multiplier: the int32 product form
]


@pytest.mark.parametrize(("real", "full", "gate"), CHANNEL_CASES)
def test_channel_gate_multiply_on_every_pair(real: float, full, gate) -> None:
    """A map times a per-channel gate (squeeze-and-excite) with the gate folded into the
    significand per channel (``elementwise._channel_scaled``) gives the reference rounding
    (``multiply_table``, the numpy form of TFLite's) for all 65536 value pairs: clamped to
    int8, and unclamped in int32 so that every rounding shows. Its factors are one kernel
    stage computed per channel (:data:`CHANNEL_FACTOR`), also at batch 2 and with the gate
    as the first operand."""
    multiplier = fixed_point.quantize_multiplier(real)
    (dtype_a, zp_a), (dtype_b, zp_b) = full, gate
    a_values = np.arange(fixed_point.INT_RANGE[dtype_a][0], fixed_point.INT_RANGE[dtype_a][1] + 1)
    b_values = np.arange(fixed_point.INT_RANGE[dtype_b][0], fixed_point.INT_RANGE[dtype_b][1] + 1)
    for batch in (1, 2):
        a = np.broadcast_to(a_values[None, :, None, None], (batch, 256, 3, 256)).astype(dtype_a)
        b = np.stack([np.roll(b_values, 7 * n) for n in range(batch)])[:, None, None, :]
        b = b.astype(dtype_b)
        product = (a.astype(np.int64) - zp_a) * (b.astype(np.int64) - zp_b)
        for zero, clamp, out in ((4, (-128, 127), "int8"), (0, (-(2**31), 2**31 - 1), "int32")):

            def build(x, g, zero=zero, clamp=clamp, out=out):
                return elementwise.multiply(
                    (x, (1.0, zp_a)), (g, (real, zp_b)), (1.0, zero), clamp, out
                )

            def gate_first(x, g, zero=zero, clamp=clamp, out=out):
                return elementwise.multiply(
                    (g, (real, zp_b)), (x, (1.0, zp_a)), (1.0, zero), clamp, out
                )

            want = elementwise.multiply_table(product, multiplier, zero, clamp, out)
            for form in (build, gate_first):
                mod = build_main(form, [a, b], emit_args=True)
                folded = elementwise.CHANNEL_FACTOR in {gv.name_hint for gv in mod.functions}
                assert folded == (real > 1e-6)
                np.testing.assert_array_equal(run(mod, [a, b]), want)


def test_channel_factors_are_computed_once_per_channel() -> None:
    """The CPU schedule keeps the gate's factors a stage of their own (over the gate's
    shape, outside the parallel loop over the map), not inlined into every element."""
    a = np.zeros((1, 8, 8, 144), "int8")
    g = np.zeros((1, 1, 1, 144), "int8")

    def build(x, y):
        return elementwise.multiply(
            (x, (0.05, -3)), (y, (1 / 256, -128)), (0.04, 2), (-128, 127), "int8"
        )

    mod = relax.transform.LegalizeOps()(build_main(build, [a, g], emit_args=True))
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    fused = fuse(mod, target)
    kernels = [f for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    with target:
        scheduled = default_schedule(target)(
            tvm.IRModule({"main": next(f for f in kernels if elementwise.CHANNEL_FACTOR in str(f))})
        )
    sch = tvm.s_tir.Schedule(scheduled["main"])
    roots = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    assert sum(name.startswith(elementwise.CHANNEL_FACTOR) for name in roots) == 2
    assert len(roots) == 3


def test_multiply_uses_int32_lanes() -> None:
    """The squeeze-excite MUL (a map times a per-channel gate) has no int64 arithmetic."""
    a = relax.Var("a", relax.TensorType((1, 4, 4, 32), "int8"))
    g = relax.Var("g", relax.TensorType((1, 1, 1, 32), "int8"))
    expr = elementwise.multiply(
        (a, (0.05, -3)), (g, (1 / 256, -128)), (0.04, 2), (-128, 127), "int8"
    )
    assert "int64" not in str(expr)


def test_vbmi_lookup_loops() -> None:
    """A feature map's lookup runs its 64-byte steps in parallel; a squeeze-excite gate's
    (1152 bytes) on one thread, without a thread launch."""
    from bridge.schedules.int8_elementwise import vbmi_lookup

    assert "T.parallel" in vbmi_lookup((1, 56, 56, 144), "int8", "int8").script()
    small = vbmi_lookup((1, 1, 1, 1152), "int8", "int8").script()
    assert "T.parallel" not in small and "call_llvm_pure_intrin" in small


# --- ADD's input scaling in int32 lanes ----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("ratio", [0.5, 0.49999997, 0.3712, 0.0123456, 3.1e-5, 7.7e-10])
def test_int32_add_scaling_matches_int64(dtype: str, ratio: float) -> None:
    """ADD's per-input rescale of every 8-bit value in int32 lanes equals the int64 reference
    (fixed_point.scale_input with 20 bits of headroom), for zero points across the range."""
    low, high = fixed_point.INT_RANGE[dtype]
    values = np.arange(low, high + 1).astype(dtype)
    multiplier = fixed_point.quantize_multiplier(ratio)
    for zero_point in (low, low + 1, 0, 3, high - 1, high):

        def narrow(x, zp=zero_point):
            return relax.op.astype(elementwise.scale_operand(x, zp, multiplier), "int64")

        def wide(x, zp=zero_point):
            return fixed_point.scale_input(x, zp, elementwise.ADD_HEADROOM, multiplier)

        expected = run(build_main(wide, [values]), [values])
        assert np.abs(expected).max() < 2**28
        np.testing.assert_array_equal(run(build_main(narrow, [values]), [values]), expected)


def _products(expr: relax.Expr) -> tuple[list[relax.Call], list[relax.Call]]:
    """The distinct multiplies of ``expr``, and those by an int64 constant."""
    distinct = {str(call): call for call in _calls(expr)}  # shared operands visit twice
    products = [call for call in distinct.values() if call.op.name == "relax.multiply"]
    return products, [call for call in products if str(call.args[1].value.dtype) == "int64"]


def test_add_scales_inputs_in_int32_lanes() -> None:
    """An ADD without a linear form (these round scales put a pair on an exact tie) has one
    int64 multiply (the output's rescale), not three."""
    a = relax.Var("a", relax.TensorType((1, 4, 4, 32), "int8"))
    b = relax.Var("b", relax.TensorType((1, 4, 4, 32), "int8"))
    quant = (0.05, -3), (0.02, 7), (0.06, 2), (-128, 127), "int8"
    assert elementwise.linear_add_form(*quant) is None
    expr = elementwise.add((a, quant[0]), (b, quant[1]), *quant[2:])
    products, wide = _products(expr)
    assert len(products) == 5 and len(wide) == 1


# --- ADD as one int32 linear form ----------------------------------------------------------------

# (input a, input b, output, fused activation, dtype, has a linear form): calibrated scales
# have forms; short decimal ones put pairs on exact ties that the roundings break unevenly
ADD_CASES = [
    ((0.0313291, -9), (0.00771834, 21), (0.0402617, 3), "RELU", "int8", True),
    ((0.0462, 4), (0.1183, -31), (0.1304, -12), "NONE", "int8", True),  # b's scale the larger
    ((0.0213377, 117), (0.0391052, 140), (0.0471938, 125), "RELU6", "uint8", True),
    ((0.031, -9), (0.0077, 21), (0.04, 3), "RELU", "int8", False),
]


def all_pairs(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of 8-bit values, as two (256, 256) arrays."""
    low, high = fixed_point.INT_RANGE[dtype]
    a, b = np.meshgrid(np.arange(low, high + 1), np.arange(low, high + 1), indexing="ij")
    return a.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("case", ADD_CASES, ids=lambda c: f"{c[4]}-{c[3]}-{c[0][0]}")
def test_add_forms_match_the_table_on_every_pair(case, linear: bool) -> None:
    """Both compiled forms of ADD give :func:`add_table` for all 65536 input pairs: the
    reference arithmetic (``linear=False``, bit-exact with LiteRT's fixtures in
    test_int8_exact) and the linear form (where one exists)."""
    qa, qb, out, activation, dtype, has_form = case
    clamp = fixed_point.activation_range(activation, out[0], out[1], dtype)
    assert (elementwise.linear_add_form(qa, qb, out, clamp, dtype) is not None) == has_form
    a, b = all_pairs(dtype)

    def build(x, y):
        return elementwise.add((x, qa), (y, qb), out, clamp, dtype, linear=linear)

    table = elementwise.add_table(qa, qb, out, clamp, dtype)
    np.testing.assert_array_equal(run(build_main(build, [a, b]), [a, b]), table.astype(dtype))


@pytest.mark.parametrize(
    ("shape_a", "shape_b"), [((2, 3, 4, 8), (1, 1, 1, 8)), ((3, 1, 8), (2, 3, 5, 8)), ((6,), ())]
)
def test_linear_add_is_one_broadcasting_kernel(shape_a, shape_b) -> None:
    """In a block builder the linear ADD is one kernel (``bridge_add``) taking both 8-bit
    tensors, broadcasting either way as numpy does."""
    qa, qb, out, activation, dtype, _ = ADD_CASES[0]
    clamp = fixed_point.activation_range(activation, out[0], out[1], dtype)
    rng = np.random.default_rng(3)
    a, b = (rng.integers(-128, 128, size=shape).astype(dtype) for shape in (shape_a, shape_b))

    def build(x, y):
        return elementwise.add((x, qa), (y, qb), out, clamp, dtype)

    mod = build_main(build, [a, b])
    assert sorted(gv.name_hint for gv in mod.functions) == [elementwise.ADD, "main"]
    table = elementwise.add_table(qa, qb, out, clamp, dtype)
    low = fixed_point.INT_RANGE[dtype][0]
    expected = table[a.astype(np.int64) - low, b.astype(np.int64) - low].astype(dtype)
    np.testing.assert_array_equal(run(mod, [a, b]), expected)


def test_linear_add_is_two_int32_products() -> None:
    """Where a form exists the ADD is ``clamp((a * m + b * n + k) >> s)``: two int32
    multiplies, nothing 64-bit."""
    qa, qb, out, activation, dtype, _ = ADD_CASES[0]
    clamp = fixed_point.activation_range(activation, out[0], out[1], dtype)
    a = relax.Var("a", relax.TensorType((1, 4, 4, 32), dtype))
    b = relax.Var("b", relax.TensorType((1, 4, 4, 32), dtype))
    products, wide = _products(elementwise.add((a, qa), (b, qb), out, clamp, dtype))
    assert len(products) == 2 and not wide
    assert all(str(call.args[1].value.dtype) == "int32" for call in products)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_linear_add_forms_are_exact_and_common(dtype: str) -> None:
    """Over random quantizations (activation scales spanning 40x, any zero points, with and
    without a clamp) a form is found for at least 90%; each reproduces the table on every
    pair with every intermediate in int32 (checked here independently of the search)."""
    rng = np.random.default_rng(7)
    low, high = fixed_point.INT_RANGE[dtype]
    x = np.arange(low, high + 1, dtype=np.int64)
    found = 0
    for trial in range(60):
        qa, qb, out = [
            (float(rng.uniform(0.005, 0.2)), int(rng.integers(low, high + 1))) for _ in range(3)
        ]
        activation = ("NONE", "RELU", "RELU6")[trial % 3]
        clamp = fixed_point.activation_range(activation, out[0], out[1], dtype)
        form = elementwise.linear_add_form(qa, qb, out, clamp, dtype)
        if form is None:
            continue
        found += 1
        total = x[:, None] * form.first + x[None, :] * form.second + form.addend
        assert np.abs(total).max() < 2**31
        table = elementwise.add_table(qa, qb, out, clamp, dtype)
        np.testing.assert_array_equal(np.clip(total >> form.shift, *clamp), table)
    assert found >= 54


def _calls(expr: relax.Expr) -> list[relax.Call]:
    found: list[relax.Call] = []
    relax.analysis.post_order_visit(
        expr, lambda e: found.append(e) if isinstance(e, relax.Call) else None
    )
    return found


def test_linear_add_kernel_takes_a_symbolic_batch() -> None:
    """A dynamic-batch model's ADD (TFLiteConverter.from_keras_model): the kernel's batch is
    symbolic, and one build runs at any batch, broadcasting the constant-shaped input."""
    from tvm import tirx

    qa, qb, out, activation, dtype, _ = ADD_CASES[0]
    clamp = fixed_point.activation_range(activation, out[0], out[1], dtype)
    batch = tirx.Var("n", "int64")
    builder = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((batch, 4, 8), dtype))
    b = relax.Var("b", relax.TensorType((1, 1, 8), dtype))
    with builder.function("main", [a, b]):
        with builder.dataflow():
            y = builder.emit_output(elementwise.add((a, qa), (b, qb), out, clamp, dtype))
        builder.emit_func_output(y)
    mod = builder.get()
    assert elementwise.ADD in [gv.name_hint for gv in mod.functions]
    vm = relax.VirtualMachine(compile_module(mod, tvm.target.Target(TARGET)), tvm.cpu())
    table = elementwise.add_table(qa, qb, out, clamp, dtype)
    rng = np.random.default_rng(5)
    z = rng.integers(-128, 128, (1, 1, 8)).astype(dtype)
    for n in (1, 5):
        x = rng.integers(-128, 128, (n, 4, 8)).astype(dtype)
        got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(z)).numpy()
        expected = table[x.astype(np.int64) + 128, z.astype(np.int64) + 128].astype(dtype)
        np.testing.assert_array_equal(got, expected)

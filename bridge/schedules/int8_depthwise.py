"""SIMD integer depthwise convolutions on x86: channels in vector lanes, int16 products.

:mod:`bridge.quant.kernels` emits an int8 depthwise convolution as a Relax ``conv2d`` with
``groups`` equal to the channels, 8-bit activations (after a ``pad`` with the input zero point),
a constant int8 weight and int32 accumulators. On an x86 target with AVX2 or AVX-512,
:func:`prepack_int8_depthwise` rewrites it, when the model is compiled, into a kernel reading
its weights prepacked ``[C/L, KH, KW, L]`` as int32 words whose low half is the int16 weight and
whose high half is zero, and :class:`Int8DepthwiseKernels` schedules it:

* ``L`` channels in the lanes of one vector (16 with AVX-512, 8 with AVX2), a register tile of
  output pixels x ``L`` channels, every tap of the window and every pixel of the tile unrolled
  (neighbouring pixels share the loaded activations);
* each tap one ``vpmaddwd`` of the sign-extended activations (``vpmovsxbd``: an int32 word whose
  high half is sign bits) by the packed weight words (high half zero): ``x * w + sign * 0`` is
  the exact product, summed into int32 (LLVM folds the add into ``vpdpwssd`` with VNNI; on
  Intel CPUs only when told the instruction is fast, see :func:`codegen_target`);
* the padded input (filled with the input zero point) is copied inside the same kernel,
  channels vectorized: by each band of output rows, in the band's parallel iteration, the
  input rows it reads (one parallel loop, the rows still in cache when the products read
  them); or, where a table lookup runs in the copy, once per call by rows before the
  products; the fused epilogue (bias, requantization, clamp, cast) runs in the tile's
  write-back on vectors.

Integer sums are exact, so the results equal the generic path's bit for bit. Other targets,
channel counts that are not a multiple of 8, depthwise multipliers above 1 and non-constant
weights keep the generic path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.script import tirx as T
from tvm.target.codegen import target_has_features

from bridge.quant.elementwise import EIGHT_BIT, LOOKUP, TABLE
from bridge.schedules.common import largest_divisor, use_counts
from bridge.schedules.cpu import _inline_epilogue
from bridge.schedules.int8 import packed_const, static_8bit, unpad
from bridge.schedules.int8_elementwise import LANES as LOOKUP_LANES
from bridge.schedules.int8_elementwise import has_vbmi

CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
PRODUCT = "int8_dw"  # the product block's name in the kernels built here
COPY = "int8_dw_pad"  # the padded activation copy
LOOKED_UP = "int8_dw_lookup"  # a table lookup before the depthwise convolution, row by row
CALL_TIR = tvm.ir.Op.get("relax.call_tir")
OUT_EWISE_FUSABLE = 4  # TVM's OpPatternKind: an elementwise epilogue fuses into the kernel
# output pixels per register tile, by lanes: 14 zmm accumulators (32 registers), 8 ymm (16)
MAX_PIXELS = {16: 14, 8: 8}
MAX_BAND, MIN_BANDS = 8, 8  # output rows per band; bands per call at least (threads' shares)
_LLVM_WD = {16: "llvm.x86.avx512.pmaddw.d.512", 8: "llvm.x86.avx2.pmadd.wd"}


@dataclass(frozen=True)
class Lanes:
    """One vector width: ``lanes`` int32 channels per ``vpmaddwd``."""

    lanes: int

    def intrin(self, act_dtype: str) -> str:
        return f"bridge_dw_pmaddwd{self.lanes}_{act_dtype}"


def widths(target: tvm.target.Target) -> tuple[int, ...]:
    """The vector widths (int32 lanes) the target's ``vpmaddwd`` has, widest first; empty off
    x86 or without AVX2."""
    if target.kind.name != "llvm" or not str(target.attrs.get("mtriple", "x86_64")).startswith(
        "x86_64"
    ):
        return ()
    try:
        if target_has_features("avx512bw", target):
            return (16, 8)
        if target_has_features("avx2", target):
            return (8,)
    except Exception:  # a target LLVM cannot describe
        return ()
    return ()


def channel_lanes(channels: int, target: tvm.target.Target) -> int | None:
    """The widest vector whose lanes divide ``channels``; None when none does."""
    return next((lanes for lanes in widths(target) if channels % lanes == 0), None)


def _desc(lanes: int, act_dtype: str):
    """``C[i] += int(A[i]) * int(int16(B[i]))``: one tap of ``lanes`` channels."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((lanes,), act_dtype, offset_factor=1),
        B: T.Buffer((lanes,), "int32", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes], B[0:lanes])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                with T.sblock("update"):
                    vi = T.axis.remap("S", [i])
                    C[vi] = C[vi] + T.cast(A[vi], "int32") * T.cast(T.cast(B[vi], "int16"), "int32")

    return desc


def _impl(lanes: int, act_dtype: str):
    """Activations widened to int32 words, weights' words as they are, one ``vpmaddwd``."""
    wide = 2 * lanes
    llvm = _LLVM_WD[lanes]

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((lanes,), act_dtype, offset_factor=1),
        B: T.Buffer((lanes,), "int32", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes], B[0:lanes])
            T.writes(C[0:lanes])
            # one expression: a named intermediate would become a local buffer, allocated
            # from the workspace pool on every parallel iteration
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=f"int32x{lanes}") + (
                T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm),
                    T.reinterpret(
                        T.cast(A.vload([0], f"{act_dtype}x{lanes}"), f"int32x{lanes}"),
                        dtype=f"int16x{wide}",
                    ),
                    T.reinterpret(B.vload([0], f"int32x{lanes}"), dtype=f"int16x{wide}"),
                    dtype=f"int32x{lanes}",
                )
            )

    return impl


def _register() -> None:
    for lanes in _LLVM_WD:
        for dtype in ("int8", "uint8"):
            name = Lanes(lanes).intrin(dtype)
            s_tir.TensorIntrin.register(name, _desc(lanes, dtype), _impl(lanes, dtype))


_register()


def codegen_target(target: tvm.target.Target) -> tvm.target.Target:
    """``target`` as LLVM's code generator should see it: on an x86 CPU with VNNI whose LLVM
    tuning lacks ``fast-dpwssd`` (Intel's), that flag added. Without it LLVM's machine combiner
    splits every ``vpdpwssd`` back into ``vpmaddwd`` + ``vpaddd``, two uops where one does;
    the register tiles here are throughput-bound (14 independent accumulators), not latency-
    bound. A tuning flag, not an instruction set: the code runs wherever it ran (MobileNetV2
    int8 -2.5% on an Emerald Rapids Xeon, bit-exact)."""
    if not widths(target) or target_has_features("fast-dpwssd", target):
        return target
    if not any(target_has_features(f, target) for f in ("avx512vnni", "avxvnni")):
        return target
    attrs = {str(k): v for k, v in target.export().items()}
    attrs["mattr"] = [*(str(m) for m in attrs.get("mattr", ())), "+fast-dpwssd"]
    return tvm.target.Target(attrs, host=target.host) if target.host else tvm.target.Target(attrs)


# --- the kernel (TE) ---------------------------------------------------------------------------


def pack_weights(weight_hwc: np.ndarray, lanes: int) -> np.ndarray:
    """[KH, KW, C] int8 -> ``[C/lanes, KH, KW, lanes]`` int32 words ``w & 0xFFFF`` (the int16
    weight in the low half, zero in the high half)."""
    kh, kw, c = weight_hwc.shape
    words = weight_hwc.astype(np.int32) & 0xFFFF
    return np.ascontiguousarray(words.reshape(kh, kw, c // lanes, lanes).transpose(2, 0, 1, 3))


def _padded(shape, dtype: str, read, padding, pad_value: int) -> te.Tensor:
    """The NHWC tensor of ``shape`` that ``read(b, y, x, c)`` reads, with its spatial padding
    filled with ``pad_value``."""
    n, h, w, c = shape
    top, left, bottom, right = padding

    def value(b, y, xx, ch):
        inside = tirx.all(y >= top, y < top + h, xx >= left, xx < left + w)
        row = tirx.min(tirx.max(y - top, 0), h - 1)
        column = tirx.min(tirx.max(xx - left, 0), w - 1)
        v = read(b, row, column, ch)
        return tirx.if_then_else(inside, v, tirx.const(pad_value, dtype))

    return te.compute((n, h + top + bottom, w + left + right, c), value, name=COPY)


def _source(x: te.Tensor, table: te.Tensor | None, channels: int | None):
    """(shape, dtype, read) of the depthwise input: ``x`` itself, or, with a ``table``, the
    lookup ``table[uint8(x)]`` of ``x`` given as rows ``[N, H, W * channels]`` (a stage of
    its own: :func:`schedule_depthwise` computes it row by row, each row whole)."""
    if table is None:
        return tuple(int(d) for d in x.shape), str(x.dtype), lambda *i: x[i]
    n, h, row = (int(d) for d in x.shape)
    looked = te.compute(
        (n, h, row),
        lambda b, y, i: table[tirx.Cast("int32", tirx.Cast("uint8", x[b, y, i]))],
        name=LOOKED_UP,
    )
    read = lambda b, y, xx, ch: looked[b, y, xx * channels + ch]  # noqa: E731
    return (n, h, row // channels, channels), str(table.dtype), read


def depthwise(
    x: te.Tensor,
    w: te.Tensor,
    strides,
    padding,
    dilation,
    pad_value: int,
    table: te.Tensor | None = None,
    channels: int | None = None,
) -> te.Tensor:
    """NHWC depthwise convolution (multiplier 1) with weights packed by :func:`pack_weights`:
    int32. With a ``table`` (and padding), the input is ``table[uint8(x)]`` of ``x`` given as
    rows ``[N, H, W * channels]``, looked up as it is copied into the padded buffer."""
    (sh, sw), (dh, dw) = strides, dilation
    _, kh, kw, lanes = (int(d) for d in w.shape)
    shape, dtype, read = _source(x, table, channels)
    xs = _padded(shape, dtype, read, padding, pad_value) if any(padding) else x
    n, h, width, c = (int(d) for d in xs.shape)
    out_h = (h - (kh - 1) * dh - 1) // sh + 1
    out_w = (width - (kw - 1) * dw - 1) // sw + 1
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    return te.compute(
        (n, out_h, out_w, c),
        lambda b, y, xx, ch: te.sum(
            xs[b, y * sh + rh * dh, xx * sw + rw * dw, ch].astype("int32")
            * w[ch // lanes, rh, rw, ch % lanes].astype("int16").astype("int32"),
            axis=[rh, rw],
        ),
        name=PRODUCT,
    )


# --- the rewrite (Relax) -----------------------------------------------------------------------


def prepack_int8_depthwise(
    target: tvm.target.Target, derived: dict | None = None
) -> tvm.transform.Pass:
    """The module pass sending integer depthwise convolutions with constant int8 weights to
    :func:`depthwise` (a no-op where the target has no ``vpmaddwd``). ``derived``: as in
    :func:`bridge.schedules.prepack.prepack_weights`."""

    @tvm.transform.module_pass(opt_level=0, name="bridge.PrepackInt8Depthwise")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if not widths(target):
            return mod
        rewriter = _Rewrite(mod, target, derived)
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter.uses = use_counts(func)
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return _pass


def depthwise_weights(call: relax.Call) -> np.ndarray | None:
    """The [KH, KW, C] int8 weights of an integer depthwise ``conv2d`` this module takes
    (NHWC, HWOI, groups == channels == output channels, 8-bit static input, int32 out)."""
    attrs = call.attrs
    weight = call.args[1]
    if not (isinstance(weight, tvm.ir.expr.Constant) and static_8bit(call.args[0])):
        return None
    value = weight.value.numpy()
    channels = int(call.args[0].ty.shape.values[3])
    if (
        value.dtype != np.int8
        or value.ndim != 4
        or (attrs.data_layout, attrs.kernel_layout) != ("NHWC", "HWOI")
        or str(attrs.out_layout) not in ("NHWC", "")
        or str(attrs.out_dtype) != "int32"
        or int(attrs.groups) != channels
        or value.shape[2:] != (channels, 1)
    ):
        return None
    return value[:, :, :, 0]


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target, derived: dict | None):
        super().__init__(mod)
        self.target, self.derived = target, derived
        self.uses: dict = {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not call.op.same_as(CONV2D):
            return call
        weight = depthwise_weights(call)
        lanes = None if weight is None else channel_lanes(weight.shape[2], self.target)
        if lanes is None:
            return call
        attrs = call.attrs
        data, padding, value = unpad(self, call.args[0])
        padding = tuple(a + int(b) for a, b in zip(padding, attrs.padding, strict=True))
        arguments = [data, packed_const(pack_weights(weight, lanes), call.args[1], self.derived)]
        looked_up = self._lookup(call.args[0], data) if any(padding) else None
        channels = weight.shape[2]
        if looked_up is not None:
            x, table = looked_up
            n, h, w, _ = (int(d) for d in x.ty.shape.values)
            rows = self.builder_.emit(relax.op.reshape(x, (n, h, w * channels)))
            arguments = [rows, arguments[1], table]
        return self.builder_.call_te(
            lambda x, w, *table: depthwise(
                x,
                w,
                [int(s) for s in attrs.strides],
                padding,
                [int(d) for d in attrs.dilation],
                value,
                *table,
                channels=channels,
            ),
            *arguments,
            primfunc_name_hint="depthwise_int8",
            # the requantization after it fuses in, as without a lookup (whose gather would
            # make TVM's pattern analysis call the kernel opaque)
            primfunc_attrs={"op_pattern": OUT_EWISE_FUSABLE},
        )

    def _lookup(self, padded: relax.Expr, data: relax.Expr) -> tuple[relax.Expr, relax.Expr] | None:
        """``(x, table)`` when ``data`` is a constant-table lookup of ``x`` read only by this
        depthwise convolution (through its pad, ``padded``) on a CPU with AVX-512 VBMI, and
        each row of ``x`` is whole 64-byte vectors: the kernel then looks the rows up as it
        copies them into its padded buffer, instead of the lookup writing a tensor of its own
        that the copy reads back."""
        if not has_vbmi(self.target) or not isinstance(data, relax.Var):
            return None
        if self.uses.get(data, 0) != 1 or self.uses.get(padded, 0) != 1:
            return None
        bound = self.lookup_binding(data)
        if not (
            isinstance(bound, relax.Call)
            and bound.op.same_as(CALL_TIR)
            and str(bound.args[0].name_hint).startswith(LOOKUP)
        ):
            return None
        x, table = bound.args[1].fields
        if not (
            isinstance(table, tvm.ir.expr.Constant)
            and str(table.ty.dtype) in EIGHT_BIT
            and [int(d) for d in table.ty.shape.values] == [TABLE]
            and static_8bit(x)
        ):
            return None
        _, _, w, c = (int(d) for d in x.ty.shape.values)
        return (x, table) if (w * c) % LOOKUP_LANES == 0 else None


# --- the schedule ------------------------------------------------------------------------------


class Int8DepthwiseKernels(CPUScheduleRule):
    """Register-tiled, tensorized schedules for the kernels :func:`prepack_int8_depthwise`
    builds."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if not widths(target) or PRODUCT not in str(func):
            return None
        sch = s_tir.Schedule(func)
        try:
            schedule_depthwise(sch)
        except Exception:  # a fused shape this rule does not expect: the generic rules
            return None
        return sch


def _block(sch: s_tir.Schedule, name: str):
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint == name:
            return block
    return None


def schedule_depthwise(sch: s_tir.Schedule) -> None:
    """Tile ``pixels x lanes`` outputs in registers, every tap and pixel unrolled, one
    ``vpmaddwd`` per tap and pixel; the padded copy by rows, channels vectorized."""
    block = _block(sch, PRODUCT)
    if block is None:
        raise ValueError("no depthwise product block")
    stmt = sch.get(block)
    act_dtype = str(stmt.reads[0].source.dtype)
    lanes = int(
        next(
            r.source.shape[-1]
            for r in stmt.reads
            if r.source.dtype == "int32"
            and len(r.source.shape) == 4
            and r.source.scope() != "local"
        )
    )
    write_back = sch.cache_write(block, 0, "local")
    _inline_epilogue(sch, write_back)

    n, y, x, c, rh, rw = sch.get_loops(block)
    pixels = largest_divisor(int(sch.get(x).extent), MAX_PIXELS[lanes])
    c_outer, c_lane = sch.split(c, [None, lanes])
    x_outer, x_inner = sch.split(x, [None, pixels])
    copy, looked = _block(sch, COPY), _block(sch, LOOKED_UP)
    band = None
    if copy is not None and looked is None:
        band = _band_rows(int(sch.get(n).extent), int(sch.get(y).extent))
    if band:
        y_outer, y_inner = sch.split(y, [None, band])
        sch.reorder(n, y_outer, y_inner, x_outer, c_outer, rh, rw, x_inner, c_lane)
        fused = sch.fuse(n, y_outer)
        sch.parallel(fused)
        sch.reverse_compute_at(write_back, c_outer)
        sch.compute_at(copy, fused)  # before tensorize: its consumer must still be a block
    else:
        sch.reorder(n, y, x_outer, c_outer, rh, rw, x_inner, c_lane)
        fused = sch.fuse(n, y, x_outer, c_outer)
        sch.parallel(fused)
        sch.reverse_compute_at(write_back, fused)
    init = sch.decompose_reduction(block, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(c_lane, Lanes(lanes).intrin(act_dtype))
    sch.unroll(x_inner)
    sch.unroll(rw)
    sch.unroll(rh)
    inner = sch.get_loops(write_back)[-1]
    sch.vectorize(sch.split(inner, [None, lanes])[1])
    if band:
        _vectorize_copy(sch, copy, lanes)
    elif copy is not None:
        _schedule_copy(sch, copy, lanes)
        if looked is not None:
            _schedule_lookup(sch, looked, copy)


def _band_rows(batch: int, rows: int) -> int:
    """Output rows per band, where each band copies the padded input rows it reads just
    before its products (one parallel loop, the rows in cache) rather than after one copy
    pass over the whole tensor (two parallel loops). Only for a copy without a table lookup
    in it: looking up the rows bands share twice measured slower (EfficientNetB0 int8's
    depthwise kernels 1.05x-1.5x), banding the others faster (MobileNetV2's 0.88x), on Zen 4."""
    return largest_divisor(rows, max(1, min(MAX_BAND, rows * batch // MIN_BANDS)))


def _vectorize_copy(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Channels in vectors (the padding test is the same for every lane)."""
    c = sch.get_loops(block)[-1]
    channels = int(sch.get(c).extent)
    vector = largest_divisor(channels, 64)
    vector = vector if vector % lanes == 0 else lanes
    sch.vectorize(sch.split(c, [None, vector])[1])


def _schedule_copy(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Rows in parallel, each row's pixels in order, channels in vectors."""
    n, y, _, _ = sch.get_loops(block)
    sch.parallel(sch.fuse(n, y))
    _vectorize_copy(sch, block, lanes)


def _schedule_lookup(sch: s_tir.Schedule, block, copy) -> None:
    """Each padded row's source row looked up whole just before it is copied (while it is in
    L1), in vectors of 64 bytes: gathers from a 256-byte table, which the TIR pipeline's
    :func:`~bridge.schedules.int8_elementwise.permute_lookups` makes ``vpermi2b`` pairs."""
    _, vector = sch.split(sch.get_loops(block)[-1], [None, LOOKUP_LANES])
    # blockized before compute_at: a padding row reads no source row, so compute_at puts a
    # predicate on the block it moves (one per 64 bytes here, not per byte)
    sch.compute_at(sch.blockize(vector), sch.get_loops(copy)[0])
    sch.vectorize(sch.get_loops(block)[-1])

"""SIMD integer products on x86: int8 convolutions and dense layers as packed dot kernels.

:mod:`bridge.quant.kernels` emits each product as a Relax ``conv2d``/``matmul`` of 8-bit
activations by constant int8 weights with int32 accumulators. On an x86 target with the right
instructions, :func:`prepack_int8` rewrites it, when the model is compiled, into a kernel whose
innermost step is one SIMD dot instruction, and :class:`Int8Kernels` schedules that kernel:

* AVX-512 VNNI (``vpdpbusd``: 4 u8 x i8 products summed into each of 16 int32 lanes): signed
  activations are shifted by +128 to uint8 and ``128 * sum(w)`` is subtracted per output
  channel afterwards; weights are packed ``[O/16, KH, KW, C/4, 16, 4]``. The shift is a copy
  in the kernel, unless a 1x1 product's input is a requantization nothing else reads: that
  requantization then writes the shifted uint8 bytes itself (:meth:`_Rewrite._shifted_producer`);
* AVX-512BW / AVX2 without VNNI (``vpmovsxbw`` + ``vpmaddwd``: 2 i16 x i16 products summed into
  each of 16 / 8 int32 lanes, exact; ``vpmaddubsw`` would saturate int16): weights packed
  ``[O/L, KH, KW, C/2, L, 2]``, activations used as they are.

Integer sums are exact in int32 whatever the instruction, so results stay bit-exact. Output
channels and input channels are padded with zero weights to the tile (the first convolution's
3 channels, a 1000-class dense layer). Other targets, non-constant weights and grouped
convolutions keep the generic path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx, topi
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.script import tirx as T
from tvm.target.codegen import target_has_features

from bridge.schedules.common import (
    SERIAL_ELEMENTS,
    SERIAL_PRODUCTS,
    find_block,
    is_reduction,
    largest_divisor,
    loops_product,
    most_accumulators,
    parallel_unless_small,
    static_tensor,
    use_counts,
    vectorize_block,
    weights_first,
)
from bridge.schedules.cpu import _inline_epilogue
from bridge.schedules.stack import STACK_BYTES

CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
MATMUL = tvm.ir.Op.get("relax.matmul")
PAD = tvm.ir.Op.get("relax.nn.pad")
ADD = tvm.ir.Op.get("relax.add")
ASTYPE = tvm.ir.Op.get("relax.astype")
CLIP = tvm.ir.Op.get("relax.clip")
MULTIPLY = tvm.ir.Op.get("relax.multiply")
CALL_TIR = tvm.ir.Op.get("relax.call_tir")
DOT = "int8_dot"  # the product block's name in the kernels built here
ACT = "int8_act"  # the activation copy (padding, +128 shift, channel padding)
# The register tile's accumulators: a buffer allocated inside the tile's loop. TVM puts a CPU
# buffer on the stack only in "global" scope and under kMaxStackAlloca (1024 bytes); any other
# (a "local" one too) is allocated and freed through TVMBackendAllocWorkspace once per tile
ACC_SCOPE = "global"
# pixel strips a kernel needs to run by strip (:func:`_tile`), enough for the threads
PARALLEL_MIN = 32
# input channels from which a copy is made strip by strip (:func:`_copy_per_strip`)
STRIP_COPY_CHANNELS = 64
# AMX (bridge.schedules.int8_amx): an activation tile holds up to AMX_ROWS pixels; products
# over fewer than AMX_MIN_CHANNELS input channels, AMX_MIN_DEPTH terms (window x channels) or
# AMX_MIN_PIXELS pixels per tile stay on VNNI. Depth measured on whole models (Xeon with AMX,
# 2 threads), the tiles configured only where a thread's are not already: from 256 down to 64
# terms, ResNet50 int8 0.96x (b1) and 0.95x (b8), MobileNetV2 0.95x / 0.93x, EfficientNetB0
# 0.93x / 0.92x; down to 16 slower again (MobileNetV2 b1 0.97x). With a configuration per
# strip of pixels, 16-192 terms had taken 1.1-2.4x VNNI's time (per kernel, batch 8)
AMX_ROWS, AMX_MIN_CHANNELS, AMX_MIN_DEPTH, AMX_MIN_PIXELS = 16, 16, 64, 4
# A map whose rows fill AMX tiles poorly (7 pixels a row: 7 of 16 tile rows) is read as one
# flat row of pixels (:func:`_flat_dot`) where that fills them FLAT_GAIN times better
FLAT_GAIN = 1.25
FLAT = "int8_dot_flat"  # the flat product's block (a DOT block)


@dataclass(frozen=True)
class DotKind:
    """One SIMD dot instruction: ``lanes`` int32 outputs, each summing ``group`` products."""

    lanes: int
    group: int
    shift: bool  # int8 activations shifted to uint8 (vpdpbusd multiplies u8 x i8)
    name: str  # the tensor intrinsic's name prefix
    registers: int  # accumulators a register tile may hold (32 zmm, 16 ymm registers)
    widen: bool = False  # activations copied as int16 pairs (vpmaddwd's operand), once

    def intrin(self, act_dtype: str) -> str:
        return f"{self.name}_{act_dtype}"


VNNI = DotKind(16, 4, True, "bridge_vnni", 24)
AVX512_WD = DotKind(16, 2, False, "bridge_avx512_pmaddwd", 24, widen=True)
AVX2_WD = DotKind(8, 2, False, "bridge_avx2_pmaddwd", 10, widen=True)
_LLVM_WD = {16: "llvm.x86.avx512.pmaddw.d.512", 8: "llvm.x86.avx2.pmadd.wd"}


def dot_kind(target: tvm.target.Target) -> DotKind | None:
    """The dot instruction the target has, best first; None off x86 or without AVX2."""
    if target.kind.name != "llvm" or not str(target.attrs.get("mtriple", "x86_64")).startswith(
        "x86_64"
    ):
        return None
    try:
        if target_has_features("avx512vnni", target):
            return VNNI
        if target_has_features("avx512bw", target):
            return AVX512_WD
        if target_has_features("avx2", target):
            return AVX2_WD
    except Exception:  # a target LLVM cannot describe
        return None
    return None


def has_amx(target: tvm.target.Target) -> bool:
    """The target is an x86 CPU with AMX-INT8 tiles (and the VNNI kernels they replace)."""
    if dot_kind(target) is not VNNI:
        return False
    try:
        return bool(target_has_features("amx-int8", target)) and bool(
            target_has_features("amx-tile", target)
        )
    except Exception:  # a target LLVM cannot describe
        return False


def _dot_desc(lanes: int, group: int, act_dtype: str):
    """``C[i] += sum_k int(A[k]) * int(B[i, k])``, C the register tile's accumulator."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((group,), act_dtype, offset_factor=1),
        B: T.Buffer((lanes, group), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=ACC_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _vnni_impl():
    """One ``vpdpbusd``: 4 uint8 activations broadcast, 16 x 4 int8 weights."""

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope=ACC_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            # LLVM 22 declares vpdpbusd on <64 x i8> operands (older LLVMs: <16 x i32>).
            # One expression: a name bound here would become a local buffer, allocated
            # through TVMBackendAllocWorkspace once per tile
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(
                    T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                    dtype="int8x64",
                ),
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    return impl


def _pmaddwd_impl(lanes: int, act_dtype: str):
    """Weights widened to int16 (``vpmovsxbw``), the activations' int16 pair broadcast (one
    32-bit load: the copy widened them), then one ``vpmaddwd``: exact."""
    wide = 2 * lanes
    llvm = _LLVM_WD[lanes]

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), act_dtype, offset_factor=1),
        B: T.Buffer((lanes, 2), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=ACC_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            # one expression (see _vnni_impl)
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=f"int32x{lanes}") + (
                T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm),
                    T.reinterpret(
                        T.broadcast(
                            T.reinterpret(
                                T.cast(A.vload([0], act_dtype + "x2"), "int16x2"), dtype="int32"
                            ),
                            lanes,
                        ),
                        dtype=f"int16x{wide}",
                    ),
                    T.cast(B.vload([0, 0], dtype=f"int8x{wide}"), f"int16x{wide}"),
                    dtype=f"int32x{lanes}",
                )
            )

    return impl


def _register() -> None:
    s_tir.TensorIntrin.register(VNNI.intrin("uint8"), _dot_desc(16, 4, "uint8"), _vnni_impl())
    for kind in (AVX512_WD, AVX2_WD):
        for dtype in ("int8", "uint8", "int16"):
            desc = _dot_desc(kind.lanes, 2, dtype)
            s_tir.TensorIntrin.register(kind.intrin(dtype), desc, _pmaddwd_impl(kind.lanes, dtype))


_register()


# --- the packed kernels (TE) -------------------------------------------------------------------


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pack_weights(weight_hwio: np.ndarray, kind: DotKind) -> np.ndarray:
    """HWIO int8 -> ``[O'/lanes, KH, KW, C'/group, lanes, group]`` (zero-padded O', C')."""
    kh, kw, ci, co = weight_hwio.shape
    cp, op = _round_up(ci, kind.group), _round_up(co, kind.lanes)
    padded = np.zeros((kh, kw, cp, op), np.int8)
    padded[:, :, :ci, :co] = weight_hwio
    blocks = padded.reshape(kh, kw, cp // kind.group, kind.group, op // kind.lanes, kind.lanes)
    return np.ascontiguousarray(blocks.transpose(4, 0, 1, 2, 5, 3))


def _copy_size(x: te.Tensor, padding, step) -> tuple[int, int]:
    """(rows, columns) of ``x``'s activation copy (:func:`_activations`): padded, then every
    ``step``-th row and column."""
    h, w = (int(d) for d in x.shape[1:3])
    top, left, bottom, right = padding
    return (h + top + bottom - 1) // step[0] + 1, (w + left + right - 1) // step[1] + 1


def _activations(
    x: te.Tensor,
    padding,
    pad_value: int,
    channels: int,
    kind: DotKind,
    step=(1, 1),
    flat: int = 0,
):
    """The activation copy the dot reads: spatially padded with ``pad_value``, channels
    padded to ``channels`` (their weights are zero), shifted to uint8 for VNNI, widened to
    int16 for ``vpmaddwd`` (each activation widened once, not once per tile of output
    channels that reads it); ``x`` itself when nothing changes. ``step`` (a strided 1x1
    convolution's strides, no padding): only every ``step``-th row and column, so the dot
    reads a dense map with stride 1. ``flat``: the padded map's pixels as one row
    ``[n, 1, flat, channels]``, row after row, pad values past its end."""
    n, h, w, c = (int(d) for d in x.shape)
    top, left, _, _ = padding
    sh, sw = step
    shift = kind.shift and x.dtype == "int8"
    if not (any(padding) or channels != c or shift or kind.widen or step != (1, 1) or flat):
        return x

    def value(b, y, xx, ch):
        row, col = y * sh, xx * sw  # in the padded input (rows past its end: padding)
        inside = tirx.all(row >= top, row < top + h, col >= left, col < left + w, ch < c)
        v = x[
            b,
            tirx.min(tirx.max(row - top, 0), h - 1),
            tirx.min(tirx.max(col - left, 0), w - 1),
            tirx.min(ch, c - 1),
        ]
        v = tirx.if_then_else(inside, v, tirx.const(pad_value, x.dtype))
        if shift:
            return (v.astype("int32") + 128).astype("uint8")
        return v.astype("int16") if kind.widen else v

    rows, cols = _copy_size(x, padding, step)
    if flat:
        return te.compute(
            (n, 1, flat, channels),
            lambda b, _, p, ch: value(b, p // cols, p % cols, ch),
            name=ACT,
        )
    return te.compute((n, rows, cols, channels), value, name=ACT)


def flat_fills_better(out_h: int, out_w: int, cols: int) -> bool:
    """AMX tiles over the map's pixels as one flat row (:func:`_flat_dot`: ``out_h`` rows of
    ``cols`` pixels, the last ``cols - out_w`` of each computed and dropped) fill their rows
    FLAT_GAIN times better than tiles of a divisor of ``out_w`` pixels, which AMX takes."""
    pixels = largest_divisor(out_w, AMX_ROWS)
    if pixels < AMX_MIN_PIXELS:
        return False
    flat_fill = out_h * out_w / _round_up(out_h * cols, 2 * AMX_ROWS)
    return flat_fill >= FLAT_GAIN * pixels / AMX_ROWS


def dot_conv2d(
    x: te.Tensor,
    w: te.Tensor,
    corr: te.Tensor | None,
    out_channels: int,
    strides,
    padding,
    dilation,
    pad_value: int,
    kind: DotKind,
    amx: bool = False,
) -> te.Tensor:
    """NHWC convolution with packed weights (:func:`pack_weights`): int32. ``amx``: the
    target has AMX tiles, and a map they would fill poorly takes the flat form."""
    (sh, sw), (dh, dw) = strides, dilation
    tiles, kh, kw, cg, lanes, group = (int(d) for d in w.shape)
    step = (1, 1)
    if kh == kw == 1 and not any(padding) and (sh, sw) != (1, 1):  # a strided 1x1: subsample
        step, (sh, sw) = (sh, sw), (1, 1)
    n = int(x.shape[0])
    rows, cols = _copy_size(x, padding, step)
    out_h = (rows - (kh - 1) * dh - 1) // sh + 1
    out_w = (cols - (kw - 1) * dw - 1) // sw + 1
    depth = kh * kw * cg * group
    if (
        amx
        and (sh, sw) == (1, 1)
        and cg * group >= AMX_MIN_CHANNELS
        and depth >= AMX_MIN_DEPTH
        and flat_fills_better(out_h, out_w, cols)
    ):
        geometry = (out_h, out_w, cols)
        return _flat_dot(
            x, w, corr, out_channels, geometry, padding, dilation, pad_value, kind, step
        )
    xs = _activations(x, padding, pad_value, cg * group, kind, step)
    rh, rw, rc, rg = (
        te.reduce_axis((0, e), name)
        for e, name in ((kh, "rh"), (kw, "rw"), (cg, "rc"), (group, "rg"))
    )
    acc = te.compute(
        (n, out_h, out_w, tiles * lanes),
        lambda b, y, xx, o: te.sum(
            xs[b, y * sh + rh * dh, xx * sw + rw * dw, rc * group + rg].astype("int32")
            * w[o // lanes, rh, rw, rc, o % lanes, rg].astype("int32"),
            axis=[rh, rw, rc, rg],
        ),
        name=DOT,
    )
    return _finish(acc, corr, out_channels)


def _flat_dot(
    x: te.Tensor,
    w: te.Tensor,
    corr: te.Tensor | None,
    out_channels: int,
    geometry: tuple[int, int, int],
    padding,
    dilation,
    pad_value: int,
    kind: DotKind,
    step,
) -> te.Tensor:
    """A stride-1 convolution over the padded map's pixels as one flat row (``geometry``:
    ``out_h, out_w``, and ``cols`` pixels per padded row): output pixel ``q = y * cols + x``
    sums activation pixels ``q + r * dh * cols + s * dw`` (window position ``r, s``), so AMX_ROWS
    consecutive outputs read AMX_ROWS pixels at one stride whatever rows they span, and a
    7x7 map fills 49 of 64 tile rows instead of 7 of 16. The outputs past each row's end (the
    window wrapping into the next row) are computed and dropped. The sums are laid out
    ``[n, Q / AMX_ROWS, AMX_ROWS, O]`` (``Q``: the flat outputs rounded up to two tiles), so
    the AMX schedule sees rows of one tile each, two to a register tile."""
    (dh, dw), tiles, kh, kw, cg, lanes, group = dilation, *(int(d) for d in w.shape)
    out_h, out_w, cols = geometry
    span = _round_up(out_h * cols, 2 * AMX_ROWS)
    reach = (kh - 1) * dh * cols + (kw - 1) * dw
    xs = _activations(x, padding, pad_value, cg * group, kind, step, flat=span + reach)
    rh, rw, rc, rg = (
        te.reduce_axis((0, e), name)
        for e, name in ((kh, "rh"), (kw, "rw"), (cg, "rc"), (group, "rg"))
    )
    acc = te.compute(
        (int(x.shape[0]), span // AMX_ROWS, AMX_ROWS, tiles * lanes),
        lambda b, y, xx, o: te.sum(
            xs[b, 0, y * AMX_ROWS + xx + rh * dh * cols + rw * dw, rc * group + rg].astype("int32")
            * w[o // lanes, rh, rw, rc, o % lanes, rg].astype("int32"),
            axis=[rh, rw, rc, rg],
        ),
        name=FLAT,
    )

    def pixel(b, y, xx, o):
        q = y * cols + xx
        sums = acc[b, q // AMX_ROWS, q % AMX_ROWS, o]
        return sums if corr is None else sums - corr[o]

    return te.compute((int(x.shape[0]), out_h, out_w, out_channels), pixel, name="int8_out")


def dot_matmul(
    x: te.Tensor, w: te.Tensor, corr: te.Tensor | None, out_channels: int, kind: DotKind
) -> te.Tensor:
    """``x @ W`` for x [..., K] with W packed as [N'/lanes, 1, 1, K'/group, lanes, group]."""
    tiles, lanes = int(w.shape[0]), int(w.shape[4])
    lead = [int(d) for d in x.shape[:-1]]
    k = int(x.shape[-1])
    flat = topi.reshape(x, (1, 1, int(np.prod(lead)) if lead else 1, k))
    acc = dot_conv2d(flat, w, None, tiles * lanes, (1, 1), (0, 0, 0, 0), (1, 1), 0, kind)
    out = _finish(acc, corr, out_channels)
    return topi.reshape(out, (*lead, out_channels))


def _finish(acc: te.Tensor, corr: te.Tensor | None, out_channels: int) -> te.Tensor:
    """Subtract the shift's ``128 * sum(w)`` and drop padded output channels."""
    if corr is None and int(acc.shape[-1]) == out_channels:
        return acc
    shape = (*acc.shape[:-1], out_channels)
    if corr is None:
        return te.compute(shape, lambda *i: acc[i], name="int8_out")
    return te.compute(shape, lambda *i: acc[i] - corr[i[-1]], name="int8_out")


# --- the rewrite (Relax) -----------------------------------------------------------------------


def prepack_int8(target: tvm.target.Target, derived: dict | None = None) -> tvm.transform.Pass:
    """The module pass sending integer conv2d/matmul with constant int8 weights to the packed
    dot kernels of the target's instruction (a no-op where it has none). ``derived``: as in
    :func:`bridge.schedules.prepack.prepack_weights`."""
    kind = dot_kind(target)

    @tvm.transform.module_pass(opt_level=0, name="bridge.PrepackInt8")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if kind is None:
            return mod
        rewriter = _Rewrite(mod, kind, derived, has_amx(target))
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter._uses = use_counts(func)
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        mod = rewriter.builder_.get()
        # a product whose bias add was folded into its correction is left unused
        return relax.transform.DeadCodeElimination()(mod) if rewriter.folded else mod

    return _pass


def _int8_const(expr: relax.Expr, rank: int) -> np.ndarray | None:
    if not isinstance(expr, tvm.ir.expr.Constant):
        return None
    value = expr.value.numpy()
    return value if value.dtype == np.int8 and value.ndim == rank else None


def static_8bit(expr: relax.Expr) -> bool:
    """An int8/uint8 tensor of static shape."""
    return static_tensor(expr, ("int8", "uint8"))


def unpad(
    mutator: relax.PyExprMutator, data: relax.Expr
) -> tuple[relax.Expr, tuple[int, ...], int]:
    """``pad(x, spatial, value)`` bound to ``data`` -> (x, (top, left, bottom, right), value);
    ``(data, (0, 0, 0, 0), 0)`` for anything else (the packed kernels pad themselves)."""
    bound = mutator.lookup_binding(data) if isinstance(data, relax.Var) else None
    if isinstance(bound, relax.Call) and bound.op.same_as(PAD):
        width = [int(v) for v in bound.attrs.pad_width]
        value = float(bound.attrs.pad_value)
        if (
            str(bound.attrs.pad_mode) == "constant"
            and not any(width[i] for i in (0, 1, 6, 7))
            and value == int(value)
            and static_8bit(bound.args[0])
        ):
            return bound.args[0], (width[2], width[4], width[3], width[5]), int(value)
    return data, (0, 0, 0, 0), 0


def packed_const(array: np.ndarray, source: relax.Expr, derived: dict | None) -> relax.Expr:
    """``array`` (weights repacked from the constant ``source``) as a constant, recorded in
    ``derived`` so lifting names it after its source."""
    const = relax.const(array)
    if derived is not None and isinstance(source, tvm.ir.expr.Constant):
        derived[const.value.data_ptr()] = (source.value.data_ptr(), "packed")
    return const


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, kind: DotKind, derived: dict | None, amx: bool):
        super().__init__(mod)
        self.kind, self.derived, self.amx = kind, derived, amx
        self.folded = False
        self._plain: dict[str, object] = {}  # a dot's kernel name -> the same dot without corr
        self._uses: dict = {}

    def _correction(self, weight_hwio: np.ndarray, data: relax.Expr) -> relax.Expr | None:
        if not (self.kind.shift and str(data.ty.dtype) == "int8"):
            return None
        sums = weight_hwio.astype(np.int64).sum(axis=(0, 1, 2)) * 128
        return relax.const(sums.astype(np.int32))

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        source = call.args[0] if call.args else None
        call = super().visit_call_(call)
        if isinstance(call.ty, relax.TensorType) and str(call.ty.dtype) == "int64":
            moved = self._move_correction(call, self._uses.get(source, 0) == 1)
            return call if moved is None else moved
        if not isinstance(call.ty, relax.TensorType) or str(call.ty.dtype) != "int32":
            return call
        if call.op.same_as(ADD):
            folded = self._fold_bias(call)
            return call if folded is None else folded
        packed = None
        if call.op.same_as(CONV2D):
            packed = self._conv2d(call)
        elif call.op.same_as(MATMUL):
            packed = self._matmul(call)
        return call if packed is None else packed

    def _conv2d(self, call: relax.Call) -> relax.Expr | None:
        attrs = call.attrs
        weight = _int8_const(call.args[1], 4)
        if (
            weight is None
            or not static_8bit(call.args[0])
            or (attrs.data_layout, attrs.kernel_layout) != ("NHWC", "HWIO")
            or str(attrs.out_layout) not in ("NHWC", "")
            or int(attrs.groups) != 1
        ):
            return None
        data, padding, value = unpad(self, call.args[0])
        padding = tuple(a + int(b) for a, b in zip(padding, attrs.padding, strict=True))
        corr = self._correction(weight, data)
        if corr is not None and self._plain_copy_only(weight, attrs, padding, data):
            shifted = self._shifted_producer(data)
            if shifted is not None:
                data = shifted
        args = [data, packed_const(pack_weights(weight, self.kind), call.args[1], self.derived)]

        def build(x, w, *c):
            return dot_conv2d(
                x,
                w,
                c[0] if c else None,
                weight.shape[3],
                [int(s) for s in attrs.strides],
                padding,
                [int(d) for d in attrs.dilation],
                value,
                self.kind,
                self.amx,
            )

        return self._dot(build, args, corr, "conv2d_int8_dot")

    def _plain_copy_only(self, weight: np.ndarray, attrs, padding, data: relax.Expr) -> bool:
        """The kernel would copy its activations only to shift them to uint8: a 1x1
        convolution with stride 1, no padding, input channels a multiple of the dot's group,
        reading a tensor nothing else reads."""
        kh, kw, ci, _ = weight.shape
        return (
            (kh, kw) == (1, 1)
            and not any(padding)
            and all(int(s) == 1 for s in attrs.strides)
            and ci % self.kind.group == 0
            and self._uses.get(data, 0) == 1
        )

    def _shifted_producer(self, data: relax.Expr) -> relax.Expr | None:
        """``astype(clip(y), int8)`` bound to ``data`` (a requantization's end) as
        ``astype(clip(y) + 128, uint8)``: the producer writes the activations the dot reads,
        already shifted (the same bytes the kernel's copy would make), so the product reads
        them in place; its correction ``128 * sum(w)`` is unchanged."""
        bound = _bound(self, data)
        if bound is None or not bound.op.same_as(ASTYPE) or str(bound.attrs.dtype) != "int8":
            return None
        clipped = bound.args[0]
        source = _bound(self, clipped)
        dtype = str(clipped.ty.dtype) if isinstance(clipped.ty, relax.TensorType) else ""
        if source is None or not source.op.same_as(CLIP) or dtype not in ("int32", "int64"):
            return None
        self.folded = True  # the int8 cast is left unused
        shifted = self.builder_.emit(relax.op.add(clipped, relax.const(128, dtype)))
        return self.builder_.emit(relax.op.astype(shifted, "uint8"))

    def _fold_bias(self, call: relax.Call) -> relax.Expr | None:
        """``dot - corr + bias`` (the bias :mod:`bridge.quant.kernels` adds to a product) as
        ``dot - (corr - bias)``: one int32 constant and one subtraction in the epilogue, where
        the two, widened to int64 with the requantization, took four vector additions."""
        acc, bias = call.args
        dot = self.lookup_binding(acc) if isinstance(acc, relax.Var) else None
        if not (
            isinstance(dot, relax.Call)
            and dot.op.same_as(CALL_TIR)
            and dot.args[0].name_hint.startswith(("conv2d_int8_dot", "matmul_int8_dot"))
            and len(dot.args[1].fields) == 3
            and isinstance(bias, tvm.ir.expr.Constant)
        ):
            return None
        data, weight, corr = dot.args[1].fields
        values = bias.value.numpy()
        channels = int(corr.ty.shape.values[0])
        if values.dtype != np.int32 or values.size not in (1, channels) or values.ndim > 1:
            return None
        folded = corr.value.numpy().astype(np.int64) - values.astype(np.int64).reshape(-1)
        if np.abs(folded).max(initial=0) >= 2**31:
            return None
        self.folded = True
        args = relax.Tuple([data, weight, relax.const(folded.astype(np.int32))])
        return relax.Call(dot.op, [dot.args[0], args, *dot.args[2:]], dot.attrs, dot.ty_args)

    def _matmul(self, call: relax.Call) -> relax.Expr | None:
        weight = _int8_const(call.args[1], 2)
        if weight is None or not static_8bit(call.args[0]):
            return None
        hwio = weight[None, None]
        corr = self._correction(hwio, call.args[0])
        args = [
            call.args[0],
            packed_const(pack_weights(hwio, self.kind), call.args[1], self.derived),
        ]

        def build(x, w, *c):
            return dot_matmul(x, w, c[0] if c else None, weight.shape[1], self.kind)

        return self._dot(build, args, corr, "matmul_int8_dot")

    def _dot(self, build, args: list, corr: relax.Expr | None, name: str) -> relax.Expr:
        """The dot's call; with a correction, its plain twin (no ``corr``) is kept for
        :meth:`_move_correction`."""
        call = self.builder_.call_te(
            build, *args, *([corr] if corr is not None else []), primfunc_name_hint=name
        )
        if corr is not None:
            self._plain[call.args[0].name_hint] = lambda: self.builder_.call_te(
                build, *args, primfunc_name_hint=name
            )
        return call

    def _move_correction(self, call: relax.Call, single_use: bool) -> relax.Expr | None:
        """Carry the VNNI correction out of the product into the requantization's constants
        (exact in int64, as every value is far from 2**63):

        * ``astype(dot - corr, int64)`` (the dot used only there) -> ``astype(dot) + (-corr)``
          with the product computed without ``corr``;
        * ``(x + c) * m`` with ``x`` an int32 widened, ``|c| < 2**31``, ``|m| < 2**32`` ->
          ``x * m + c * m``;
        * ``(y + k) + a`` with ``y`` such a product -> ``y + (k + a)``.

        Requantization then adds one constant to the product (``addend - corr * m``) and the
        epilogue subtracts nothing."""
        if call.op.same_as(ASTYPE):
            dot = _bound(self, call.args[0])
            plain = None if dot is None else self._plain.get(_callee(dot))
            if plain is None or not single_use or len(dot.args[1].fields) != 3:
                return None
            corr = dot.args[1].fields[2].value.numpy().astype(np.int64)
            widened = self.builder_.emit(relax.op.astype(self.builder_.emit(plain()), "int64"))
            self.folded = True
            return relax.op.add(widened, relax.const(-corr, "int64"))
        if not (call.op.same_as(MULTIPLY) or call.op.same_as(ADD)):
            return None
        inner = _bound(self, call.args[0])
        constant = _int64_const(call.args[1])
        if constant is None or inner is None or not inner.op.same_as(ADD):
            return None
        base, offset = inner.args[0], _int64_const(inner.args[1])
        origin = _bound(self, base)
        if offset is None or origin is None:
            return None
        if call.op.same_as(MULTIPLY) and origin.op.same_as(ASTYPE):
            widened_from = origin.args[0].ty
            if not (
                isinstance(widened_from, relax.TensorType)
                and str(widened_from.dtype) == "int32"
                and np.abs(offset).max(initial=0) < 2**31
                and np.abs(constant).max(initial=0) < 2**32
            ):
                return None
            product = self.builder_.emit(relax.op.multiply(base, call.args[1]))
            return relax.op.add(product, relax.const(offset * constant, "int64"))
        if call.op.same_as(ADD) and origin.op.same_as(MULTIPLY):
            total = [int(a) + int(b) for a, b in np.broadcast(offset, constant)]
            if max(abs(t) for t in total) >= 2**62:
                return None
            return relax.op.add(base, relax.const(offset + constant, "int64"))
        return None


# --- the schedule ------------------------------------------------------------------------------


class Int8Kernels(CPUScheduleRule):
    """Register-tiled, tensorized schedules for the kernels :func:`prepack_int8` builds."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        kind = dot_kind(target)
        if kind is None or DOT not in str(func):
            return None
        # the epilogue in registers first; a fused shape it does not take: the epilogue as
        # its own pass; neither: the generic rules
        for schedule in (schedule_dot, schedule_dot_unfused):
            sch = s_tir.Schedule(func)
            try:
                schedule(sch, kind)
            except Exception:
                continue
            return sch
        return None


def _dot_block(sch: s_tir.Schedule):
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint.startswith(DOT):
            return block
    raise ValueError("no dot block")


def _tile(sch: s_tir.Schedule, block, kind: DotKind, by_strip: bool = False):
    """Split and order the dot's loops: ``(n, y, x/pixels, o/(vectors x lanes))`` fused and
    parallel outside, the window and channel groups, then the register tile. ``by_strip``
    and PARALLEL_MIN strips of pixels or more: ``(n, y, x/pixels)`` parallel, the output
    channels' register tiles one after the other inside, over the same strip. Returns the
    parallel loop, the loop of one register tile (the parallel one when a tile is one
    iteration), whether it runs by strip, and the tile's (pixel, vector, lane) loops."""
    n, y, x, o, rh, rw, rc, rg = sch.get_loops(block)
    pixels, per_tile = _tile_shape(int(sch.get(x).extent), int(sch.get(o).extent), kind)
    o_outer, o_vec, o_lane = sch.split(o, [None, per_tile, kind.lanes])
    x_outer, x_inner = sch.split(x, [None, pixels])
    strips = int(sch.get(n).extent) * int(sch.get(y).extent) * int(sch.get(x_outer).extent)
    first = weights_first(sch, block, 3) is not None
    if by_strip and strips >= PARALLEL_MIN and not first:
        sch.reorder(n, y, x_outer, o_outer, rh, rw, rc, x_inner, o_vec, o_lane, rg)
        fused = sch.fuse(n, y, x_outer)
        sch.parallel(fused)
        return fused, o_outer, True, x_inner, o_vec, o_lane
    outer = (o_outer, n, y, x_outer) if first else (n, y, x_outer, o_outer)
    sch.reorder(*outer, rh, rw, rc, x_inner, o_vec, o_lane, rg)
    fused = sch.fuse(*outer)
    products = loops_product(sch, sch.get_loops(block))
    parallel_unless_small(sch, fused, products, SERIAL_PRODUCTS)
    return fused, fused, False, x_inner, o_vec, o_lane


def _tile_shape(width: int, channels: int, kind: DotKind) -> tuple[int, int]:
    """``(pixels, vectors)`` of the register tile: two vectors of output channels (or one,
    for an odd count) by as many pixels as ``kind.registers`` accumulators allow (a divisor
    of the row's ``width``), or one vector by twice the pixels where that holds more
    accumulators: with AVX2's 10, a 7- or 14-pixel row gets 7 x 1 rather than 1 x 2 or
    2 x 2. The accumulators' buffer stays on the stack (ACC_SCOPE, STACK_BYTES)."""
    on_stack = (STACK_BYTES - 1) // (kind.lanes * 4)  # accumulators, over vectors
    counts = (2, 1) if (channels // kind.lanes) % 2 == 0 else (1,)
    return most_accumulators(width, {v: min(kind.registers // v, on_stack // v) for v in counts})


def _tensorize(sch: s_tir.Schedule, block, kind: DotKind, act_dtype: str, tile) -> None:
    x_inner, o_vec, o_lane = tile
    rh = sch.get_loops(block)[-7]  # rh, rw, rc, the tile's (pixel, vector, lane), group
    init = sch.decompose_reduction(block, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(o_lane, kind.intrin(act_dtype))
    sch.unroll(x_inner)
    sch.unroll(o_vec)


def _vector_inner(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Vectorize a block's innermost loop by the widest power of two up to ``lanes`` (and at
    least 4) dividing it."""
    inner = sch.get_loops(block)[-1]
    extent = int(sch.get(inner).extent)
    width = lanes
    while width >= 4 and extent % width:
        width //= 2
    if width >= 4:
        sch.vectorize(sch.split(inner, [None, width])[1] if extent > width else inner)


def _shape(sch: s_tir.Schedule, block) -> list[int]:
    return [int(d) for d in sch.get(block).writes[0].source.shape]


def _same_pixels(dot: list[int], shape: list[int]) -> bool:
    """``shape`` indexes the dot's pixels the same way: the same leading axes, or (a dense
    layer's ``[1, 1, M, N]`` reshaped back) ``[..., 1, M, N]``. Any other reshape would map a
    register tile's pixels to no box of the output, which the tile cannot write."""
    if shape[:-1] == dot[:-1]:
        return True
    return dot[:2] == [1, 1] and shape[-2:-1] == dot[2:3] and all(d == 1 for d in shape[:-2])


def _epilogue_output(
    sch: s_tir.Schedule, dot, epilogue: list[str], flat: bool = False
) -> str | None:
    """The last epilogue block that writes one value per pixel and output channel of the
    dot (the requantized int8 output, before any pad of it). ``flat``: the dot's sums are
    a flat map's (:func:`_flat_dot`), the output the map's ``[n, h, w, channels]``."""
    dot_shape = _shape(sch, dot)
    chosen = None
    for name in epilogue:
        block = sch.get_sblock(name)
        if is_reduction(sch, block):
            break
        shape = _shape(sch, block)
        if flat:
            per_pixel = len(shape) == 4 and shape[0] == dot_shape[0]
        else:
            per_pixel = _same_pixels(dot_shape, shape)
        if per_pixel and shape[-1] <= dot_shape[-1]:
            chosen = name
    return chosen


def schedule_dot(sch: s_tir.Schedule, kind: DotKind) -> None:
    """Tile ``pixels x (vectors x lanes)`` outputs in registers, reduce over the window and
    the input channel groups outside the tile, one dot instruction per pixel and vector; the
    whole elementwise epilogue (correction, requantization, a residual input's rescale and
    add, the clamp) inlined into one block that reads the tile's accumulators and writes the
    int8 output right after the tile, so no int32 or int64 tensor goes through memory. Stages
    after that output (a pad for the next layer) stay as vectorized passes."""
    root = sch.get_sblock("root")
    block = _dot_block(sch)
    act_dtype = str(sch.get(block).reads[0].source.dtype)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    dot_name = sch.get(block).name_hint
    epilogue = names[names.index(dot_name) + 1 :]
    output = _epilogue_output(sch, block, epilogue)
    if epilogue and output is None:
        raise ValueError("no epilogue output")
    for name in epilogue[: epilogue.index(output)] if output else []:
        sch.compute_inline(sch.get_sblock(name))
    write_back = sch.cache_write(block, 0, ACC_SCOPE)
    by_strip = _strip_copy(sch)
    fused, at, whole_strips, *tile = _tile(sch, block, kind, by_strip)
    if output is None:  # the dot's sums are the kernel's output
        sch.reverse_compute_at(write_back, at)
        _vector_inner(sch, write_back, kind.lanes)
    else:
        sch.compute_inline(write_back)
        out = sch.get_sblock(output)
        sch.reverse_compute_at(out, at)
        _vector_inner(sch, out, kind.lanes)
    if whole_strips:
        _copy_per_strip(sch, fused)
    _tensorize(sch, block, kind, act_dtype, tile)
    _vectorize_rest(sch, names, fused, kind.lanes)


def _strip_copy(sch: s_tir.Schedule) -> bool:
    """The kernel copies its activations without spatial padding (a 1x1 convolution's +128
    shift, or its subsample of a strided map), STRIP_COPY_CHANNELS or more of them per pixel:
    worth a copy per strip of pixels (:func:`_copy_per_strip`). Measured (ResNet50,
    MobileNetV2, batch 8, one thread): with 16..32 channels the tile loop this needs costs
    more than the copy it saves; a padded copy would copy each strip's halo again."""
    act = find_block(sch, ACT)
    if act is None:
        return False
    source = [int(d) for d in sch.get(act).reads[0].source.shape]
    copy = [int(d) for d in sch.get(act).writes[0].source.shape]
    unpadded = all(c <= s for c, s in zip(copy[1:3], source[1:3]))  # same, or subsampled
    return unpadded and copy[3] >= STRIP_COPY_CHANNELS


def _copy_per_strip(sch: s_tir.Schedule, fused) -> None:
    """The activation copy computed inside the parallel loop, one strip of pixels at a time
    for all output channels, right before that strip's register tiles read it: a strided
    convolution copies only the rows it reads, and a large input (batch 8: several MiB, past
    the L2 cache) is not written out whole and read back."""
    act = sch.get_sblock(ACT)
    sch.compute_at(act, fused)
    _vector_channels(sch, sch.get_loops(act)[-1])


def schedule_dot_unfused(sch: s_tir.Schedule, kind: DotKind) -> None:
    """:func:`schedule_dot` with the epilogue folded into the write-back only as far as it
    keeps the dot's shape (consumers of another shape run as their own passes)."""
    root = sch.get_sblock("root")
    block = _dot_block(sch)
    act_dtype = str(sch.get(block).reads[0].source.dtype)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    write_back = sch.cache_write(block, 0, ACC_SCOPE)
    _inline_epilogue(sch, write_back)
    fused, at, _, *tile = _tile(sch, block, kind)
    sch.reverse_compute_at(write_back, at)
    _tensorize(sch, block, kind, act_dtype, tile)
    wb_loops = sch.get_loops(write_back)
    inner = wb_loops[-1]
    extent = int(sch.get(inner).extent)
    if extent % kind.lanes == 0:
        sch.vectorize(sch.split(inner, [None, kind.lanes])[1])
    _vectorize_rest(
        sch, [n for n in names if n != sch.get(write_back).name_hint], fused, kind.lanes
    )


def _vectorize_rest(sch: s_tir.Schedule, names: list[str], fused, lanes: int) -> None:
    """The activation copy and any stage left outside the tile: parallel and vectorized."""
    for name in names:
        other = find_block(sch, name)
        if other is None or sch.get(other).name_hint.startswith(DOT):
            continue
        try:
            loops = sch.get_loops(other)
        except Exception:
            continue
        if len(loops) and not _under(sch, other, fused):
            if sch.get(other).name_hint == ACT and len(loops) == 4:
                _schedule_act(sch, other)
            else:
                vectorize_block(sch, other, lanes)


def _schedule_act(sch: s_tir.Schedule, block) -> None:
    """The activation copy by rows (a flat map's by pixels: parallel), pixel by pixel, the
    channels of a pixel in byte vectors (64, 32 ... 4 wide, whichever divides them; unrolled
    otherwise). One vector
    over the fused pixels and channels would straddle pixels whenever the channels are not
    a multiple of it (24, the first convolution's 3 padded to 4): LLVM then gathers and
    scatters bytes one by one."""
    b, y, x, ch = sch.get_loops(block)
    elements = loops_product(sch, (b, y, x, ch))
    rows = sch.fuse(b, y, x) if int(sch.get(y).extent) == 1 else sch.fuse(b, y)  # flat: pixels
    parallel_unless_small(sch, rows, elements, SERIAL_ELEMENTS)
    _vector_channels(sch, ch)


def _vector_channels(sch: s_tir.Schedule, ch) -> None:
    """A pixel's channels in byte vectors, 64 wide or the widest power of two (at least 4)
    dividing them; unrolled when none does."""
    channels = int(sch.get(ch).extent)
    width = 64
    while width >= 4 and channels % width:
        width //= 2
    if width < 4:
        sch.unroll(ch)
    elif channels == width:
        sch.vectorize(ch)
    else:
        sch.vectorize(sch.split(ch, [None, width])[1])


def _under(sch: s_tir.Schedule, block, loop) -> bool:
    return any(sch.get(lp).same_as(sch.get(loop)) for lp in sch.get_loops(block))


def _bound(mutator: relax.PyExprMutator, expr: relax.Expr) -> relax.Call | None:
    value = mutator.lookup_binding(expr) if isinstance(expr, relax.Var) else None
    return value if isinstance(value, relax.Call) else None


def _callee(call: relax.Call) -> str | None:
    if call.op.same_as(CALL_TIR) and isinstance(call.args[0], tvm.ir.GlobalVar):
        return call.args[0].name_hint
    return None


def _int64_const(expr: relax.Expr) -> np.ndarray | None:
    """A constant int64 scalar or per-channel vector."""
    if not isinstance(expr, tvm.ir.expr.Constant) or not hasattr(expr.value, "numpy"):
        return None
    value = expr.value.numpy()
    return value if value.dtype == np.int64 and value.ndim <= 1 else None

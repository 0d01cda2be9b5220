"""SIMD integer products on AArch64: int8 convolutions and dense layers as packed dot kernels.

The ARM counterpart of :mod:`bridge.schedules.int8` (same Relax patterns, same packed-weight
idea, its own rewrite and schedule): :func:`prepack_int8_arm` rewrites each integer
``conv2d``/``matmul`` of 8-bit activations by constant int8 weights into a kernel whose
innermost step is one dot instruction sequence, and :class:`Int8ArmKernels` schedules it:

* the dot-product extension (``+dotprod``: Cortex-A76/A78, Neoverse-V1): ``sdot`` sums 4
  int8 x int8 products into each of 4 int32 lanes; weights packed ``[O/4, KH, KW, C/4, 4, 4]``;
* plain NEON (Cortex-A72, ARMv8-A baseline): ``smull`` + ``smlal`` multiply 2 x 8 int8 pairs into
  int16 and ``sadalp`` adds neighbouring int16 pairs into 4 int32 lanes; weights packed
  ``[O/4, KH, KW, C/4, 2, 4, 2]`` (two channel pairs, each 4 lanes x 2 channels). Two products
  share an int16 lane, exact while weights stay in TFLite's symmetric [-127, 127]
  (2 x 128 x 127 < 2^15); a constant holding -128 keeps the generic path.

Both multiply signed bytes: uint8 activations are shifted to int8 (``x - 128``) in the
activation copy and ``128 * sum(w)`` is added back per output channel, the mirror of the x86
VNNI shift. Integer sums are exact, so results are bit-exact with every other path.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx, topi
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.script import tirx as T
from tvm.target.codegen import target_has_features

from bridge.schedules.common import find_block, vectorize_block
from bridge.schedules.cpu import _inline_epilogue
from bridge.schedules.int8 import (
    ACC_SCOPE,
    CONV2D,
    MATMUL,
    DotKind,
    pack_weights,
    packed_const,
    static_8bit,
    unpad,
)

DOT = "int8_arm_dot"  # the product block's name in the kernels built here
ACT = "int8_arm_act"  # the activation copy (padding, uint8 -> int8 shift, channel padding)

# registers: accumulators + weight registers a tile may hold of AArch64's 32 (the rest: the
# activations, NEON's int16 products)
SDOT = DotKind(4, 4, False, "bridge_arm_sdot", 28)
NEON = DotKind(4, 4, False, "bridge_arm_neon", 26)
_SDOT_LLVM = "llvm.aarch64.neon.sdot.v4i32.v16i8"
_SMULL_LLVM = "llvm.aarch64.neon.smull.v8i16"
_SADDLP_LLVM = "llvm.aarch64.neon.saddlp.v4i32.v8i16"


def arm_dot_kind(target: tvm.target.Target) -> DotKind | None:
    """``SDOT`` with the dot-product extension, ``NEON`` without; None off AArch64."""
    if target.kind.name != "llvm" or not str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return None
    try:
        if target_has_features("dotprod", target):
            return SDOT
        if target_has_features("neon", target):
            return NEON
    except Exception:  # a target LLVM cannot describe
        return None
    return None


def pack_arm_weights(weight_hwio: np.ndarray, kind: DotKind) -> np.ndarray:
    """HWIO int8 -> the kind's packed layout (zero-padded to 4 output and input channels)."""
    packed = pack_weights(weight_hwio, kind)  # [O/4, KH, KW, C/4, 4 lanes, 4 channels]
    if kind is SDOT:
        return packed
    pairs = packed.reshape(*packed.shape[:5], 2, 2)  # lanes, channel pair, channel in pair
    return np.ascontiguousarray(pairs.transpose(0, 1, 2, 3, 5, 4, 6))


# --- the tensor intrinsics ---------------------------------------------------------------------


@T.prim_func(s_tir=True)
def _sdot_desc(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1, scope=ACC_SCOPE),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        for i in T.serial(0, 4):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _sdot_impl(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1, scope=ACC_SCOPE),
) -> None:
    """One ``sdot``: 4 activations broadcast to every lane, 4 lanes x 4 weights."""
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        # one expression: a name bound here would become a buffer allocated through
        # TVMBackendAllocWorkspace once per tile
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(_SDOT_LLVM),
            C.vload([0], dtype="int32x4"),
            T.reinterpret(
                T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4),
                dtype="int8x16",
            ),
            B.vload([0, 0], dtype="int8x16"),
            dtype="int32x4",
        )


@T.prim_func(s_tir=True)
def _neon_desc(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((2, 4, 2), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1, scope=ACC_SCOPE),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:2, 0:4, 0:2])
        T.writes(C[0:4])
        for i in T.serial(0, 4):
            for p in T.serial(0, 2):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vp, vk = T.axis.remap("SRR", [i, p, k])
                        C[vi] = C[vi] + T.cast(A[vp * 2 + vk], "int32") * T.cast(
                            B[vp, vi, vk], "int32"
                        )


def _pair(A: tirx.Buffer, start: int):
    """Activations ``A[start:start+2]`` repeated over 4 lanes, as int8x8."""
    word = T.reinterpret(A.vload([start], "int8x2"), dtype="int16")
    return T.reinterpret(T.broadcast(word, 4), dtype="int8x8")


@T.prim_func(s_tir=True)
def _neon_impl(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((2, 4, 2), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1, scope=ACC_SCOPE),
) -> None:
    """``smull`` (channels 0, 1) + ``smlal`` (channels 2, 3) into int16, ``sadalp`` into C."""
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:2, 0:4, 0:2])
        T.writes(C[0:4])
        # one expression (see _sdot_impl); the add of the two products becomes smlal
        C[T.ramp(T.int32(0), 1, 4)] = C.vload([0], dtype="int32x4") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(_SADDLP_LLVM),
            T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(_SMULL_LLVM),
                _pair(A, 0),
                B.vload([0, 0, 0], "int8x8"),
                dtype="int16x8",
            )
            + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(_SMULL_LLVM),
                _pair(A, 2),
                B.vload([1, 0, 0], "int8x8"),
                dtype="int16x8",
            ),
            dtype="int32x4",
        )


s_tir.TensorIntrin.register(SDOT.intrin("int8"), _sdot_desc, _sdot_impl)
s_tir.TensorIntrin.register(NEON.intrin("int8"), _neon_desc, _neon_impl)


# --- the packed kernels (TE) -------------------------------------------------------------------


def _activations(x: te.Tensor, padding, pad_value: int, channels: int) -> te.Tensor:
    """The int8 activations the dot reads: spatially padded with ``pad_value``, channels
    padded to ``channels`` (their weights are zero), uint8 shifted to int8; ``x`` itself when
    nothing changes."""
    n, h, w, c = (int(d) for d in x.shape)
    top, left, bottom, right = padding
    shift = x.dtype == "uint8"
    if not (any(padding) or channels != c or shift):
        return x

    def value(b, y, xx, ch):
        inside = tirx.all(y >= top, y < top + h, xx >= left, xx < left + w, ch < c)
        v = x[
            b,
            tirx.min(tirx.max(y - top, 0), h - 1),
            tirx.min(tirx.max(xx - left, 0), w - 1),
            tirx.min(ch, c - 1),
        ]
        v = tirx.if_then_else(inside, v, tirx.const(pad_value, x.dtype))
        if shift:
            return (v.astype("int32") - 128).astype("int8")
        return v

    return te.compute((n, h + top + bottom, w + left + right, channels), value, name=ACT)


def dot_conv2d(
    x: te.Tensor,
    w: te.Tensor,
    corr: te.Tensor | None,
    out_channels: int,
    strides,
    padding,
    dilation,
    pad_value: int,
) -> te.Tensor:
    """NHWC convolution with weights packed by :func:`pack_arm_weights`: int32."""
    (sh, sw), (dh, dw) = strides, dilation
    tiles, kh, kw, cg = (int(d) for d in w.shape[:4])
    lanes = 4
    xs = _activations(x, padding, pad_value, cg * 4)
    n, h, width, _ = (int(d) for d in xs.shape)
    out_h = (h - (kh - 1) * dh - 1) // sh + 1
    out_w = (width - (kw - 1) * dw - 1) // sw + 1
    rh, rw, rc = (te.reduce_axis((0, e), name) for e, name in ((kh, "rh"), (kw, "rw"), (cg, "rc")))
    if len(w.shape) == 6:  # sdot: [.., lane, channel]
        rg = te.reduce_axis((0, 4), "rg")
        inner, channel = [rg], lambda: rc * 4 + rg
        weight = lambda o: w[o // lanes, rh, rw, rc, o % lanes, rg]  # noqa: E731
    else:  # NEON: [.., pair, lane, channel in pair]
        rp, rk = te.reduce_axis((0, 2), "rp"), te.reduce_axis((0, 2), "rk")
        inner, channel = [rp, rk], lambda: rc * 4 + rp * 2 + rk
        weight = lambda o: w[o // lanes, rh, rw, rc, rp, o % lanes, rk]  # noqa: E731
    acc = te.compute(
        (n, out_h, out_w, tiles * lanes),
        lambda b, y, xx, o: te.sum(
            xs[b, y * sh + rh * dh, xx * sw + rw * dw, channel()].astype("int32")
            * weight(o).astype("int32"),
            axis=[rh, rw, rc, *inner],
        ),
        name=DOT,
    )
    return _finish(acc, corr, out_channels)


def dot_matmul(x: te.Tensor, w: te.Tensor, corr: te.Tensor | None, out_channels: int) -> te.Tensor:
    """``x @ W`` for x [..., K], W packed as a 1x1 convolution's weights."""
    lead = [int(d) for d in x.shape[:-1]]
    flat = topi.reshape(x, (1, 1, int(np.prod(lead)) if lead else 1, int(x.shape[-1])))
    acc = dot_conv2d(flat, w, None, int(w.shape[0]) * 4, (1, 1), (0, 0, 0, 0), (1, 1), 0)
    return topi.reshape(_finish(acc, corr, out_channels), (*lead, out_channels))


def _finish(acc: te.Tensor, corr: te.Tensor | None, out_channels: int) -> te.Tensor:
    """Add the uint8 shift's ``128 * sum(w)`` back and drop padded output channels."""
    if corr is None and int(acc.shape[-1]) == out_channels:
        return acc
    shape = (*acc.shape[:-1], out_channels)
    if corr is None:
        return te.compute(shape, lambda *i: acc[i], name="int8_out")
    return te.compute(shape, lambda *i: acc[i] + corr[i[-1]], name="int8_out")


# --- the rewrite (Relax) -----------------------------------------------------------------------


def prepack_int8_arm(target: tvm.target.Target, derived: dict | None = None) -> tvm.transform.Pass:
    """The module pass sending integer conv2d/matmul with constant int8 weights to the packed
    ARM dot kernels (a no-op off AArch64). ``derived``: as in
    :func:`bridge.schedules.prepack.prepack_weights`."""
    kind = arm_dot_kind(target)

    @tvm.transform.module_pass(opt_level=0, name="bridge.PrepackInt8Arm")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if kind is None:
            return mod
        rewriter = _Rewrite(mod, kind, derived)
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return _pass


def _weights(expr: relax.Expr, rank: int, kind: DotKind) -> np.ndarray | None:
    """The constant int8 weights the kind computes exactly, else None."""
    if not isinstance(expr, tvm.ir.expr.Constant):
        return None
    value = expr.value.numpy()
    if value.dtype != np.int8 or value.ndim != rank:
        return None
    return None if kind is NEON and (value == -128).any() else value


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, kind: DotKind, derived: dict | None):
        super().__init__(mod)
        self.kind, self.derived = kind, derived

    def _packed(self, weight_hwio: np.ndarray, source: relax.Expr) -> relax.Expr:
        return packed_const(pack_arm_weights(weight_hwio, self.kind), source, self.derived)

    @staticmethod
    def _correction(weight_hwio: np.ndarray, data: relax.Expr) -> list[relax.Expr]:
        if str(data.ty.dtype) != "uint8":
            return []
        sums = weight_hwio.astype(np.int64).sum(axis=(0, 1, 2)) * 128
        return [relax.const(sums.astype(np.int32))]

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.ty, relax.TensorType) or str(call.ty.dtype) != "int32":
            return call
        packed = None
        if call.op.same_as(CONV2D):
            packed = self._conv2d(call)
        elif call.op.same_as(MATMUL):
            packed = self._matmul(call)
        return call if packed is None else packed

    def _conv2d(self, call: relax.Call) -> relax.Expr | None:
        attrs = call.attrs
        weight = _weights(call.args[1], 4, self.kind)
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
        return self.builder_.call_te(
            lambda x, w, *c: dot_conv2d(
                x,
                w,
                c[0] if c else None,
                weight.shape[3],
                [int(s) for s in attrs.strides],
                padding,
                [int(d) for d in attrs.dilation],
                value,
            ),
            data,
            self._packed(weight, call.args[1]),
            *corr,
            primfunc_name_hint="conv2d_int8_dot",
        )

    def _matmul(self, call: relax.Call) -> relax.Expr | None:
        weight = _weights(call.args[1], 2, self.kind)
        if weight is None or not static_8bit(call.args[0]):
            return None
        hwio = weight[None, None]
        corr = self._correction(hwio, call.args[0])
        return self.builder_.call_te(
            lambda x, w, *c: dot_matmul(x, w, c[0] if c else None, weight.shape[1]),
            call.args[0],
            self._packed(hwio, call.args[1]),
            *corr,
            primfunc_name_hint="matmul_int8_dot",
        )


# --- the schedule ------------------------------------------------------------------------------


class Int8ArmKernels(CPUScheduleRule):
    """Register-tiled, tensorized schedules for the kernels :func:`prepack_int8_arm` builds."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        kind = arm_dot_kind(target)
        if kind is None or DOT not in str(func):
            return None
        sch = s_tir.Schedule(func)
        try:
            schedule_arm_dot(sch, kind)
        except Exception:  # a fused shape this rule does not expect: the generic rules
            return None
        return sch


def _dot_block(sch: s_tir.Schedule):
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint.startswith(DOT):
            return block
    raise ValueError("no dot block")


def register_tile(width: int, vectors: int, kind: DotKind) -> tuple[int, int]:
    """(pixels, vectors) of the register tile: the most products per register loaded among
    the tiles that divide the row and the output channels and fit the registers. An sdot
    step loads one activation word per pixel and one weight register per vector; a NEON step
    two activation pairs per pixel and a weight register whose halves take two registers."""
    pair = 1 if kind is SDOT else 2
    best = (0.0, 0, 1, 1)
    for pixels in (p for p in range(1, min(width, 16) + 1) if width % p == 0):
        for count in (v for v in range(1, 9) if vectors % v == 0):
            if pixels * count + pair * count > kind.registers:
                continue
            products = pixels * count
            best = max(best, (products / (pair * pixels + count), products, pixels, count))
    return best[2], best[3]


def schedule_arm_dot(sch: s_tir.Schedule, kind: DotKind) -> None:
    """Tile ``pixels x (vectors x 4)`` int32 outputs in registers, reduce over the window and
    the input channel groups outside the tile, one dot step per pixel and vector."""
    root = sch.get_sblock("root")
    block = _dot_block(sch)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    write_back = sch.cache_write(block, 0, ACC_SCOPE)
    _inline_epilogue(sch, write_back)

    n, y, x, o, rh, rw, rc, *inner = sch.get_loops(block)
    pixels, per_tile = register_tile(
        int(sch.get(x).extent), int(sch.get(o).extent) // kind.lanes, kind
    )
    o_outer, o_vec, o_lane = sch.split(o, [None, per_tile, kind.lanes])
    x_outer, x_inner = sch.split(x, [None, pixels])
    sch.reorder(n, y, x_outer, o_outer, rh, rw, rc, x_inner, o_vec, o_lane, *inner)
    fused = sch.fuse(n, y, x_outer, o_outer)
    sch.parallel(fused)
    sch.reverse_compute_at(write_back, fused)
    init = sch.decompose_reduction(block, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(o_lane, kind.intrin("int8"))
    sch.unroll(x_inner)
    sch.unroll(o_vec)
    inner_wb = sch.get_loops(write_back)[-1]
    if int(sch.get(inner_wb).extent) % kind.lanes == 0:
        sch.vectorize(sch.split(inner_wb, [None, kind.lanes])[1])
    write_name = sch.get(write_back).name_hint
    for name in names:  # the activation copy and any stage left outside the tile
        other = find_block(sch, name)
        if other is None or name.startswith(DOT) or name == write_name:
            continue
        loops = sch.get_loops(other)
        if not loops or any(sch.get(lp).same_as(sch.get(fused)) for lp in loops):
            continue
        if name == ACT and len(loops) == 4:
            _schedule_act(sch, other)
        else:
            vectorize_block(sch, other, 16)


def _schedule_act(sch: s_tir.Schedule, block) -> None:
    """The activation copy by rows (parallel), pixel by pixel, a pixel's channels (a multiple
    of 4) in 16-, 8- or 4-byte vectors: one vector over fused pixels and channels straddles
    pixels when the channels are not a multiple of it, and LLVM then moves bytes one by one."""
    b, y, _x, ch = sch.get_loops(block)
    sch.parallel(sch.fuse(b, y))
    channels = int(sch.get(ch).extent)
    width = next(w for w in (16, 8, 4, 1) if channels % w == 0)
    if width == 1:
        sch.unroll(ch)
    elif channels == width:
        sch.vectorize(ch)
    else:
        sch.vectorize(sch.split(ch, [None, width])[1])

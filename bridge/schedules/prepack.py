"""Weight prepacking (and padding folding) for CPU kernels, decided at compile time.

A channels_last convolution or dense kernel computes a tile of ``block`` output channels at a
time (:mod:`bridge.schedules.cpu`). With the weights as Keras stores them (HWIO, or K x N), the
tile's weights are ``block``-float slices strided by the whole output width: once the weights
no longer sit in cache (ResNet50 reads 100 MB of them per call) every slice is a separate
memory stream. Here each constant weight is rewritten once, when the model is compiled, to
``[out / block, ..., block]`` so that a tile's weights are one contiguous run, and the operator
becomes a kernel that reads that layout. Measured on a 7x7x512 -> 512 3x3 convolution with cold
caches: 6.5 -> 2.7 ms (one core); with warm caches both run at the same speed.

Only constant weights are packed (weights kept out of the library with ``separate_params``
are not), and only where the tile width divides the output channels.

The same pass folds an explicit zero padding (Keras' ZeroPadding2D) into the convolution that
reads it, so the padded copy is never written, and sends 3x3 stride-1 convolutions with enough
tiles to :mod:`bridge.schedules.winograd` (4x or 2.25x fewer multiplications).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax, te, topi

from bridge.schedules import winograd
from bridge.schedules.common import (
    float32_constant,
    float32_out,
    static_float32,
    static_shape,
    tensor_constant,
)
from bridge.schedules.cpu import channel_block, simd_lanes

CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
MATMUL = tvm.ir.Op.get("relax.matmul")
PAD = tvm.ir.Op.get("relax.nn.pad")
MakeConst = Callable[[np.ndarray, str], relax.Expr]  # (weights, how they were made) -> constant


OPTIMIZE_FOR = ("speed", "balanced", "size")
# "balanced": Winograd's transformed weights may add at most this share of the weights' bytes
WINOGRAD_BUDGET = 0.2


def prepack_weights(
    target: tvm.target.Target,
    optimize_for: str = "speed",
    derived: dict[int, tuple[int, str]] | None = None,
) -> tvm.transform.Pass:
    """The module pass rewriting convolutions and dense products with constant weights.

    ``optimize_for`` decides which convolutions become Winograd's (whose weights grow: F(4, 3)
    4x, F(2, 3) 1.8x): "speed" every one where it pays, "size" none (packing alone keeps the
    size), "balanced" those saving the most work per added byte, within ``WINOGRAD_BUDGET``.
    ``derived``, if given, receives ``{new weight's data address: (its source's, how)}`` so
    that a transformed weight can be named after the one it came from."""
    if optimize_for not in OPTIMIZE_FOR:
        raise ValueError(f"optimize_for must be one of {OPTIMIZE_FOR}, got {optimize_for!r}")
    lanes = simd_lanes(target)

    @tvm.transform.module_pass(opt_level=0, name="bridge.PrepackWeights")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Prepack(mod, lanes, _winograd_layers(mod, optimize_for), derived)
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return _pass


def _winograd_layers(mod: tvm.IRModule, optimize_for: str) -> dict | None:
    """The Winograd variant of each weight constant whose convolution may use one (None: every
    convolution its largest tile, :func:`winograd.choose`). "balanced" spends
    ``WINOGRAD_BUDGET`` in two rounds, most work saved per added byte first: F(2, 3) (1.8x the
    weights, 2.25x fewer products) where it pays, then, with what remains, F(4, 3) (4x the
    weights, 4x fewer) in place of it, ranked by the work it saves beyond F(2, 3) per byte it
    adds beyond it. ResNet50: its 14x14 stage's six 3x3 convolutions on F(2, 3), where F(4, 3)
    on one of them took what the budget left (0.93x at batch 1, 0.92x at batch 8)."""
    if optimize_for == "speed":
        return None
    if optimize_for == "size":
        return {}
    convolutions, total = [], 0

    def visit(expr: relax.Expr) -> None:
        nonlocal total
        if tensor_constant(expr):
            total += expr.value.numpy().nbytes
        elif isinstance(expr, relax.Call) and expr.op.same_as(CONV2D):
            weights = _conv_weights(expr)
            if weights is not None:
                convolutions.append((expr, weights))

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    chosen: dict = {}  # weight constant -> (variant, work saved, bytes added)
    budget = WINOGRAD_BUDGET * total
    for variant in (winograd.F2, winograd.F4):
        candidates = []
        for call, weights in convolutions:
            data_shape = static_shape(call.args[0])
            if winograd.choose(weights, call.attrs, data_shape, (variant,)) is None:
                continue
            padding = [int(p) for p in call.attrs.padding]
            saved, extra = winograd.payoff(weights.shape, data_shape, padding, variant)
            replaces = call.args[1] in chosen  # F(4, 3) only in place of a chosen F(2, 3)
            _, saved_before, extra_before = chosen.get(call.args[1], (None, 0, 0))
            if replaces != (variant is winograd.F4) or saved <= saved_before:
                continue
            gain, cost = saved - saved_before, extra - extra_before
            candidates.append((gain / cost, cost, call.args[1], (variant, saved, extra)))
        for _, cost, const, choice in sorted(candidates, key=lambda c: -c[0]):
            if cost <= budget:
                chosen[const] = choice
                budget -= cost
    return {const: variant for const, (variant, _, _) in chosen.items()}


@relax.expr_functor.mutator
class _Prepack(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, lanes: int, winograd_layers: dict | None, derived):
        super().__init__(mod)
        self.lanes = lanes
        self.winograd_layers = winograd_layers
        self.derived = derived

    def _constants_from(self, source: relax.Expr) -> MakeConst:
        """A ``relax.const`` for weights computed from ``source`` that records where from."""

        def make(array: np.ndarray, how: str) -> relax.Expr:
            const = relax.const(array)
            if self.derived is not None and tensor_constant(source):
                self.derived[const.value.data_ptr()] = (source.value.data_ptr(), how)
            return const

        return make

    def _winograd_variants(self, weights: relax.Expr) -> tuple:
        """The Winograd variants ``weights``' convolution may use (none, one, or any)."""
        if self.winograd_layers is None:
            return winograd.LARGEST_FIRST
        chosen = self.winograd_layers.get(weights)
        return () if chosen is None else (chosen,)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        packed = None
        if call.op.same_as(CONV2D):
            call = self._absorb_padding(call)
            variants = self._winograd_variants(call.args[1])
            make = self._constants_from(call.args[1])
            packed = _conv2d(self.builder_, call, self.lanes, variants, make)
        elif call.op.same_as(MATMUL):
            packed = _matmul(self.builder_, call, self.lanes, self._constants_from(call.args[1]))
        return call if packed is None else packed

    def _absorb_padding(self, call: relax.Call) -> relax.Call:
        """``conv2d(pad(x))`` with zero padding of the spatial axes (Keras' ZeroPadding2D
        before a convolution, as in MobileNetV2's and EfficientNet's strided blocks) ->
        ``conv2d(x, padding=...)``: the kernel reads its input in place instead of the kernel
        before it writing a padded copy."""
        data = call.args[0]
        bound = self.lookup_binding(data) if isinstance(data, relax.Var) else None
        if not (isinstance(bound, relax.Call) and bound.op.same_as(PAD)):
            return call
        attrs = bound.attrs
        width = [int(w) for w in attrs.pad_width]
        if (
            str(attrs.pad_mode) != "constant"
            or float(attrs.pad_value) != 0.0
            or call.attrs.data_layout != "NHWC"
            or any(width[i] for i in (0, 1, 6, 7))  # batch and channel axes
        ):
            return call
        top, left, bottom, right = (int(p) for p in call.attrs.padding)
        padding = [top + width[2], left + width[4], bottom + width[3], right + width[5]]
        attrs = call.attrs
        return relax.op.nn.conv2d(
            bound.args[0],
            call.args[1],
            strides=attrs.strides,
            padding=padding,
            dilation=attrs.dilation,
            groups=attrs.groups,
            data_layout=attrs.data_layout,
            kernel_layout=attrs.kernel_layout,
            out_layout=attrs.out_layout,
            out_dtype=attrs.out_dtype,
        )


def _conv_weights(call: relax.Call) -> np.ndarray | None:
    """The HWIO float32 weights of an NHWC, ungrouped, float32 convolution of a statically
    shaped input: what this pass packs; None for any other convolution."""
    attrs = call.attrs
    weights = float32_constant(call.args[1], 4)
    if (
        weights is None
        or not static_float32(call.args[0])
        or (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NHWC", "HWIO", "NHWC")
        or int(attrs.groups) != 1
        or not float32_out(attrs)
    ):
        return None
    return weights


def _plain_const(array: np.ndarray, how: str) -> relax.Expr:
    return relax.const(array)


def _conv2d(
    builder: relax.BlockBuilder,
    call: relax.Call,
    lanes: int,
    variants: tuple = winograd.LARGEST_FIRST,
    const: MakeConst = _plain_const,
) -> relax.Expr | None:
    attrs = call.attrs
    weights = _conv_weights(call)
    if weights is None:
        return None
    block = channel_block(weights.shape[3], lanes)
    variant = winograd.choose(weights, attrs, static_shape(call.args[0]), variants)
    if variant is not None:
        return winograd.rewrite(builder, call.args[0], weights, attrs, block, variant, const)
    if weights.shape[3] == block:
        return None  # one tile spans every output channel: already contiguous
    kh, kw, ci, co = weights.shape
    packed = weights.reshape(kh, kw, ci, co // block, block).transpose(3, 0, 1, 2, 4)
    return builder.call_te(
        packed_conv2d,
        call.args[0],
        const(np.ascontiguousarray(packed), "packed"),
        strides=[int(s) for s in attrs.strides],
        padding=[int(p) for p in attrs.padding],
        dilation=[int(d) for d in attrs.dilation],
        primfunc_name_hint="conv2d_nhwc_packed",
    )


def packed_conv2d(x: te.Tensor, w: te.Tensor, strides, padding, dilation) -> te.Tensor:
    """NHWC convolution with weights [out / block, kh, kw, in, block]."""
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    n, h, width, _ = (int(d) for d in x.shape)
    tiles, kh, kw, ci, block = (int(d) for d in w.shape)
    if any(padding):
        x = topi.nn.pad(x, [0, top, left, 0], [0, bottom, right, 0], name="pad")
    out_h = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    rh, rw, rc = (te.reduce_axis((0, e), name) for e, name in ((kh, "rh"), (kw, "rw"), (ci, "rc")))
    return te.compute(
        (n, out_h, out_w, tiles * block),
        lambda b, y, xx, o: te.sum(
            x[b, y * sh + rh * dh, xx * sw + rw * dw, rc] * w[o // block, rh, rw, rc, o % block],
            axis=[rh, rw, rc],
        ),
        name="conv2d_nhwc",
    )


def _matmul(
    builder: relax.BlockBuilder, call: relax.Call, lanes: int, const: MakeConst = _plain_const
) -> relax.Expr | None:
    weights = float32_constant(call.args[1], 2)
    if weights is None or not static_float32(call.args[0]):
        return None
    if not float32_out(call.attrs):
        return None
    k, n = weights.shape
    block = channel_block(n, lanes)
    if n == block:
        return None
    packed = np.ascontiguousarray(weights.reshape(k, n // block, block).transpose(1, 0, 2))
    return builder.call_te(
        _packed_matmul, call.args[0], const(packed, "packed"), primfunc_name_hint="matmul_packed"
    )


def _packed_matmul(x: te.Tensor, w: te.Tensor) -> te.Tensor:
    """``x @ W`` (x of any rank) with W packed as [out / block, in, block]."""
    tiles, k, block = (int(d) for d in w.shape)
    rk = te.reduce_axis((0, k), "rk")
    return te.compute(
        (*x.shape[:-1], tiles * block),
        lambda *i: te.sum(x[(*i[:-1], rk)] * w[i[-1] // block, rk, i[-1] % block], axis=rk),
        name="matmul",
    )

"""An inverted residual's 1x1 expansion and depthwise convolution as one CPU kernel.

MobileNet-style blocks expand a few channels to many with a 1x1 convolution, apply batch norm and
an activation, then run a depthwise convolution over the wide tensor. On large feature maps that
wide tensor is the model's biggest (MobileNetV2's 112x112x96: 4.8 MB per image, 38.5 MB at
batch 8): written by one kernel and read back by the next, it goes through L3 or DRAM twice.
Here the pair becomes one kernel (:func:`fuse_expand_depthwise`, a Relax pass run before weight
packing) whose schedule (:func:`schedule`) computes, for each band of ``rows`` output rows of
one image, the expanded rows that band reads (a few rows more than it writes: the window's
overlap is recomputed) into a buffer that stays in L2, then the depthwise convolution over it.
The depthwise convolution's own epilogue (batch norm, activation) fuses into the kernel as for
any convolution. Measured (two threads, interleaved with the unfused build): MobileNetV2's
block_1 (112x112x16 -> 96, stride 2) at batch 8 0.35x the time of the two separate kernels;
the whole MobileNetV2 0.72x at batch 8, 0.80x at batch 1.

Only blocks whose expanded tensor is large (``MIN_EXPANDED_BYTES``) and whose window is one of
``WINDOWS`` are fused; the elementwise steps between the two convolutions may be any of
``ELEMENTWISE`` with constant operands.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx, topi
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.sym.pattern import detect_linear_equation
from tvm.target import Target

from bridge.schedules.common import (
    attempt,
    find_block,
    float32_constant,
    float32_out,
    loop_extent,
    static_float32,
    static_shape,
    tensor_constant,
)
from bridge.schedules.cpu import (
    MAX_ACCUMULATORS,
    _inline_epilogue,
    _static,
    channel_block,
    register_tile,
    simd_lanes,
    vector_registers,
)

CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
PAD = tvm.ir.Op.get("relax.nn.pad")
SCALARS = (tvm.ir.prim.expr.FloatImm, tvm.ir.prim.expr.IntImm)
OUT_EWISE_FUSABLE = 4  # TVM's OpPatternKind: the depthwise epilogue fuses into the kernel
MIN_EXPANDED_BYTES = 1 << 19  # smaller expanded tensors (whole batch) stay in L2 anyway
# depthwise windows fused: 5x5 ones (EfficientNetB0) measured slower fused (whole model at
# batch 8: 1.18x the unfused build; its 3x3 blocks alone: 1.0x)
WINDOWS = ((3, 3),)
BAND_BYTES = 1 << 20  # expanded rows one band may hold (half of a 2 MB L2)
MIN_BANDS = 4  # parallel iterations (batch x bands): two per thread on two cores

_BINARY = {
    "relax.add": topi.add,
    "relax.subtract": topi.subtract,
    "relax.multiply": topi.multiply,
    "relax.divide": topi.divide,
    "relax.minimum": topi.minimum,
    "relax.maximum": topi.maximum,
}
_UNARY = {"relax.nn.relu": topi.nn.relu, "relax.sigmoid": topi.sigmoid}
# steps a fused group may hold; sigmoid (swish) is left out: EfficientNetB0's swish blocks
# measured slower fused (whole model 1.06x at batch 1, 1.015x at batch 8)
ELEMENTWISE = (*_BINARY, "relax.nn.relu", "relax.clip")
MakeConst = Callable[[np.ndarray, str, relax.Expr], relax.Expr]


def fuse_expand_depthwise(
    lanes: int, derived: dict[int, tuple[int, str]] | None = None
) -> tvm.transform.Pass:
    """The Relax pass: ``depthwise(pad?(elementwise*(conv2d_1x1(x))))`` -> one ``call_te``.
    ``lanes``: float32 SIMD lanes (the channel tile of the packed 1x1 weights); ``derived`` as
    for :func:`bridge.schedules.prepack.prepack_weights`."""

    @tvm.transform.module_pass(opt_level=0, name="bridge.FuseExpandDepthwise")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Rewriter(mod, {}, lanes, derived)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewriter.groups = _find_groups(func)
                if rewriter.groups:
                    rewritten = rewriter.visit_expr(func)
                    rewriter.builder_.update_func(gv, relax.analysis.remove_all_unused(rewritten))
        return rewriter.builder_.get()

    return _pass


class _Group:
    """One match: the 1x1 convolution, the elementwise steps after it, the depthwise call."""

    def __init__(self, expand: relax.Call, steps: list, depthwise: relax.Call, pad):
        self.expand, self.depthwise, self.pad = expand, depthwise, pad
        self.steps = steps  # (variable, its elementwise call), the last step first


def _bindings(func: relax.Function) -> tuple[dict, dict]:
    """var -> bound value, and var -> number of bindings (or the result) that use it."""
    values: dict = {}
    uses: dict = {}
    body = func.body
    for block in body.blocks:
        for binding in block.bindings:
            values[binding.var] = binding.value
            for var in relax.analysis.free_vars(binding.value):
                uses[var] = uses.get(var, 0) + 1
    for var in relax.analysis.free_vars(body.body):
        uses[var] = uses.get(var, 0) + 10  # an output: never internal
    return values, uses


def _find_groups(func: relax.Function) -> dict:
    if not isinstance(func.body, relax.SeqExpr):
        return {}
    values, uses = _bindings(func)
    groups = {}
    for value in values.values():
        if _is_depthwise(value):
            group = _match(value, values, uses)
            if group is not None:
                groups[value] = group
    return groups


def _is_depthwise(call) -> bool:
    if not (isinstance(call, relax.Call) and call.op.same_as(CONV2D)):
        return False
    attrs = call.attrs
    weights = float32_constant(call.args[1], 4)
    channels = int(attrs.groups)
    return (
        weights is not None
        and (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) == ("NHWC", "HWIO", "NHWC")
        and channels > 1
        and weights.shape[2] == 1
        and weights.shape[3] == channels
        and weights.shape[:2] in WINDOWS
        and all(int(d) == 1 for d in attrs.dilation)
        and float32_out(attrs)
        and static_float32(call.args[0])
    )


def _match(depthwise: relax.Call, values: dict, uses: dict) -> _Group | None:
    """The 1x1 convolution and elementwise steps feeding ``depthwise`` through single-use
    variables (a step may read another step twice, as swish reads its input), or None."""
    data, pad = depthwise.args[0], None
    bound = values.get(data)
    if isinstance(bound, relax.Call) and bound.op.same_as(PAD):
        if not _spatial_zero_pad(bound) or uses.get(data, 0) != 1:
            return None
        pad, data = bound, bound.args[0]
    expanded, steps, frontier, seen, expand = data, [], [data], set(), None
    while frontier:
        var = frontier.pop()
        if var in seen:
            continue
        seen.add(var)
        value = values.get(var)
        if not isinstance(var, relax.Var) or value is None or not isinstance(value, relax.Call):
            return None
        if _is_expand(value):
            if expand is not None and not expand.same_as(value):
                return None
            expand = value
            continue
        if value.op.name not in ELEMENTWISE or static_shape(value) != static_shape(expanded):
            return None
        steps.append((var, value))
        for arg in value.args:
            if isinstance(arg, relax.Var):
                frontier.append(arg)
            elif not (tensor_constant(arg) or isinstance(arg, SCALARS)):
                return None
    if expand is None:
        return None
    consumers: dict = {}
    for call in [*(c for _, c in steps), depthwise if pad is None else pad]:
        for var in relax.analysis.free_vars(call):
            consumers[var] = consumers.get(var, 0) + 1
    if any(uses.get(v, 0) != consumers.get(v, 0) for v in seen):
        return None  # an intermediate read outside the group
    if _expanded_bytes(depthwise, pad) < MIN_EXPANDED_BYTES:
        return None
    return _Group(expand, steps, depthwise, pad)


def _is_expand(call: relax.Call) -> bool:
    if not call.op.same_as(CONV2D):
        return False
    attrs = call.attrs
    weights = float32_constant(call.args[1], 4)
    return (
        weights is not None
        and weights.shape[:2] == (1, 1)
        and int(attrs.groups) == 1
        and (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) == ("NHWC", "HWIO", "NHWC")
        and all(int(s) == 1 for s in attrs.strides)
        and all(int(p) == 0 for p in attrs.padding)
        and float32_out(attrs)
        and static_float32(call.args[0])
    )


def _spatial_zero_pad(call: relax.Call) -> bool:
    attrs = call.attrs
    width = [int(w) for w in attrs.pad_width]
    return (
        str(attrs.pad_mode) == "constant"
        and float(attrs.pad_value) == 0.0
        and len(width) == 8
        and not any(width[i] for i in (0, 1, 6, 7))
    )


def _expanded_bytes(depthwise: relax.Call, pad) -> int:
    data = pad.args[0] if pad is not None else depthwise.args[0]
    return int(np.prod(static_shape(data))) * 4


def _padding(group: _Group) -> list[int]:
    """top, left, bottom, right of the depthwise convolution, the explicit pad folded in."""
    top, left, bottom, right = (int(p) for p in group.depthwise.attrs.padding)
    if group.pad is not None:
        w = [int(v) for v in group.pad.attrs.pad_width]
        top, bottom, left, right = top + w[2], bottom + w[3], left + w[4], right + w[5]
    return [top, left, bottom, right]


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, groups: dict, lanes: int, derived):
        super().__init__(mod)
        self.groups, self.lanes, self.derived = groups, lanes, derived

    def _const(self, array: np.ndarray, how: str, source: relax.Expr) -> relax.Expr:
        const = relax.const(array)
        if self.derived is not None and tensor_constant(source):
            self.derived[const.value.data_ptr()] = (source.value.data_ptr(), how)
        return const

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        group = next((g for d, g in self.groups.items() if d.same_as(call)), None)
        if group is None:
            return super().visit_call_(call)
        return _emit(self.builder_, group, self.lanes, self._const, self.visit_expr)


def _emit(builder, group: _Group, lanes: int, const: MakeConst, visit) -> relax.Expr:
    w1 = float32_constant(group.expand.args[1], 4)[0, 0]  # (in, out)
    block = channel_block(w1.shape[1], lanes)
    packed = w1.reshape(w1.shape[0], -1, block).transpose(1, 0, 2)
    w2 = float32_constant(group.depthwise.args[1], 4)[:, :, 0, :]
    operands: list[relax.Expr] = []  # the steps' constant tensor operands, in order
    for _, step in group.steps:
        operands += [a for a in step.args if tensor_constant(a)]
    args = [
        visit(group.expand.args[0]),
        const(np.ascontiguousarray(packed), "packed", group.expand.args[1]),
        const(np.ascontiguousarray(w2), "depthwise", group.depthwise.args[1]),
        *operands,
    ]
    plan = _Plan(group, operands)
    return builder.call_te(
        plan.compute,
        *args,
        primfunc_name_hint="fused_expand_depthwise",
        primfunc_attrs={"op_pattern": OUT_EWISE_FUSABLE},
    )


class _Plan:
    """The group as TE: expand (packed 1x1), the steps, zero padding, depthwise."""

    def __init__(self, group: _Group, operands: list[relax.Expr]):
        self.group, self.operands = group, operands
        self.strides = [int(s) for s in group.depthwise.attrs.strides]
        self.padding = _padding(group)

    def compute(self, x: te.Tensor, w1: te.Tensor, w2: te.Tensor, *consts: te.Tensor):
        tiles, ci, block = (int(d) for d in w1.shape)
        rc = te.reduce_axis((0, ci), "rc")
        expanded = te.compute(
            (*x.shape[:3], tiles * block),
            lambda n, h, w, c: te.sum(x[n, h, w, rc] * w1[c // block, rc, c % block], axis=rc),
            name="fused_expand",
        )
        self.consts = list(zip(self.operands, consts))
        memo: list = []
        steps = self.group.steps
        activated = self._value(steps[0][1], expanded, memo) if steps else expanded
        top, left, bottom, right = self.padding
        padded = topi.nn.pad(activated, [0, top, left, 0], [0, bottom, right, 0], name="fused_pad")
        kh, kw, channels = (int(d) for d in w2.shape)
        sh, sw = self.strides
        n, h, w, _ = (int(d) for d in padded.shape)
        out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
        rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
        return te.compute(
            (n, out_h, out_w, channels),
            lambda b, y, xx, c: te.sum(
                padded[b, y * sh + rh, xx * sw + rw, c] * w2[rh, rw, c], axis=[rh, rw]
            ),
            name="fused_depthwise",
        )

    def _value(self, call: relax.Call, expanded: te.Tensor, memo: list) -> te.Tensor:
        """The TE tensor of one step (each step built once, as swish reads its input twice)."""
        for seen, tensor in memo:
            if seen.same_as(call):
                return tensor
        args = []
        for arg in call.args:
            if tensor_constant(arg):
                args.append(next(t for c, t in self.consts if c.same_as(arg)))
            elif isinstance(arg, SCALARS):
                args.append(arg)
            else:
                step = next((c for v, c in self.group.steps if v.same_as(arg)), None)
                args.append(expanded if step is None else self._value(step, expanded, memo))
        name = call.op.name
        if name in _BINARY:
            result = _BINARY[name](args[0], args[1])
        elif name in _UNARY:
            result = _UNARY[name](args[0])
        else:
            result = topi.clip(args[0], args[1], args[2])
        memo.append((call, result))
        return result


class FusedBlockKernels(CPUScheduleRule):
    """The schedule rule of this module's kernels (ahead of the channels-last rule): bands of
    rows (:func:`schedule`); should it refuse (a fused epilogue it does not expect), the
    kernel's plain loops, never a failed build."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if not _static(func):
            return None
        sch = s_tir.Schedule(func)
        if find_block(sch, "root") is None or not is_fused(sch):
            return None
        if attempt(schedule, sch, simd_lanes(target), vector_registers(target)):
            return sch
        return s_tir.Schedule(func)


def is_fused(sch: s_tir.Schedule) -> bool:
    """The kernel holds this module's expansion and depthwise blocks."""
    return (
        find_block(sch, "fused_expand") is not None
        and find_block(sch, "fused_depthwise") is not None
    )


def band_rows(out_h: int, stride: int, taps: int, row_bytes: int, batch: int) -> int:
    """Output rows per band: the most whose expanded rows fit ``BAND_BYTES``, with at least
    ``MIN_BANDS`` parallel iterations (when there are enough rows)."""
    best = 1
    for rows in range(1, out_h + 1):
        if out_h % rows:
            continue
        needed = (rows - 1) * stride + taps
        if needed * row_bytes <= BAND_BYTES and batch * out_h // rows >= min(MIN_BANDS, out_h):
            best = rows
    return best


def schedule(sch: s_tir.Schedule, lanes: int, registers: int = 32) -> s_tir.Schedule:
    """Bands of output rows in parallel; in each, the expanded rows it reads (register-tiled
    1x1 products, epilogue applied) then the depthwise tiles (taps unrolled), both tiles sized
    for ``registers`` vector registers (:func:`~bridge.schedules.cpu.register_tile`)."""
    expand, dw = sch.get_sblock("fused_expand"), sch.get_sblock("fused_depthwise")
    stride = _row_stride(sch.get(dw))
    pad = find_block(sch, "fused_pad")
    if pad is not None:
        sch.compute_inline(pad)
    d_wb = sch.cache_write(dw, 0, "local")
    _inline_epilogue(sch, d_wb)
    e_wb = sch.cache_write(expand, 0, "local")
    _inline_epilogue(sch, e_wb)

    n, y, x, c, rh, rw = sch.get_loops(dw)
    batch, out_h = loop_extent(sch.get(n)), loop_extent(sch.get(y))
    taps = loop_extent(sch.get(rh))
    e_shape = [int(d) for d in sch.get(expand).writes[0].source.shape]
    rows = band_rows(out_h, stride, taps, e_shape[2] * e_shape[3] * 4, batch)
    pixels, vec = register_tile(
        loop_extent(sch.get(x)), loop_extent(sch.get(c)), lanes, registers, MAX_ACCUMULATORS
    )
    y_o, y_i = sch.split(y, [None, rows])
    x_o, x_i = sch.split(x, [None, pixels])
    c_o, c_i = sch.split(c, [None, vec])
    sch.reorder(n, y_o, y_i, x_o, c_o, rh, rw, x_i, c_i)
    band = sch.fuse(n, y_o)
    sch.parallel(band)
    sch.reverse_compute_at(d_wb, c_o)
    sch.vectorize(sch.get_loops(d_wb)[-1])
    sch.vectorize(c_i)
    sch.unroll(x_i)
    if taps <= 7:
        sch.unroll(rw)
    init = sch.decompose_reduction(dw, rh)
    sch.vectorize(sch.get_loops(init)[-1])

    sch.compute_at(e_wb, band)
    h, w, ce = sch.get_loops(e_wb)[-3:]
    pixels, vec = register_tile(
        loop_extent(sch.get(w)) or 1, e_shape[3], lanes, registers, MAX_ACCUMULATORS
    )
    w_o, w_i = sch.split(w, [None, pixels])
    ce_o, ce_i = sch.split(ce, [None, vec])
    sch.reorder(h, w_o, ce_o, w_i, ce_i)
    sch.compute_at(expand, ce_o)
    ew, ec, rc = sch.get_loops(expand)[-3:]
    sch.reorder(rc, ew, ec)
    sch.vectorize(ec)
    sch.unroll(ew)
    init = sch.decompose_reduction(expand, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(ce_i)
    return sch


def _row_stride(stmt) -> int:
    """The depthwise block's stride along rows: the coefficient of its row iterator in the
    row index of what it reads (``y * stride + rh``), before the padding is inlined."""
    y = stmt.iter_vars[1].var
    for region in stmt.reads:
        if len(region.region) == 4:
            coeff = detect_linear_equation(region.region[1].min, [y])
            if coeff:
                return max(1, int(coeff[0]))
    return 1

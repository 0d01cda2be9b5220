"""int64 constants whose values fit in int32 stored as int32 and widened inside the kernel.

The integer epilogues (:mod:`bridge.quant.fixed_point`) multiply int32 accumulators by
per-channel Q31 significands in int64. Bound as int64 constants, the significands are opaque
loads to LLVM, so each product is a full 64 x 64-bit multiply (``vpmullq``: three uops on
AVX-512, a libcall-like sequence on AVX2 and NEON). Loaded as int32 and sign-extended in the
kernel, both factors are visibly 32-bit and the product is one ``vpmuldq`` (``smull`` on
ARM). Relax's ``FoldConstant`` folds any ``astype`` of a constant back into an int64
constant, so the widening is inserted after the last fold, before fusion: every int64
constant argument of an elementwise kernel whose values fit in int32 becomes an int32
constant and a cast kernel that fusion merges into its consumer; after fusion the cast is
inlined into the loads (:func:`inline_widening`), so the schedule rules see the kernels they
know, with ``int64(c[i])`` where they read ``c[i]``. Values are unchanged; the constants also
halve in size.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx

from bridge.schedules.common import tensor_constant

CALL_TIR = tvm.ir.Op.get("relax.call_tir")
INJECTIVE = 2  # TVM's OpPatternKind: elementwise, broadcast and injective kernels
INT32 = np.iinfo(np.int32)
WIDEN = "bridge_widen"  # the cast blocks' name


def narrowable(const: relax.Expr) -> bool:
    """An int64 tensor constant whose values all fit in int32."""
    if not tensor_constant(const) or str(const.value.dtype) != "int64":
        return False
    values = const.value.numpy()
    return values.size == 0 or (values.min() >= INT32.min and values.max() <= INT32.max)


def _elementwise(mod: tvm.IRModule, callee: relax.Expr) -> bool:
    if not isinstance(callee, relax.GlobalVar) or callee not in mod.functions:
        return False
    func = mod[callee]
    if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
        return False
    pattern = func.attrs.get("op_pattern")
    return pattern is not None and int(pattern) <= INJECTIVE


@relax.expr_functor.mutator
class _Narrow(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod = mod

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not call.op.same_as(CALL_TIR) or not _elementwise(self.mod, call.args[0]):
            return call
        args = list(call.args[1].fields)
        if not any(narrowable(a) for a in args):
            return call
        args = [self._widened(a) if narrowable(a) else a for a in args]
        return relax.Call(
            call.op, [call.args[0], relax.Tuple(args), *call.args[2:]], call.attrs, call.ty_args
        )

    def _widened(self, const: tvm.ir.expr.Constant) -> relax.Expr:
        narrow = relax.const(const.value.numpy().astype(np.int32))
        return self.builder_.emit_te(
            lambda x: te.compute(x.shape, lambda *i: x(*i).astype("int64"), name=WIDEN),
            narrow,
            primfunc_name_hint="widen_int32",
        )


@tvm.transform.module_pass(opt_level=0, name="bridge.NarrowConstants")
def narrow_constants(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Every int64 constant of an elementwise kernel that fits in int32 as an int32 constant
    widened by a cast kernel (run after ``FoldConstant``, before ``FuseOps``; the cast kernels
    need ``AnnotateTIROpPattern`` again)."""
    rewriter = _Narrow(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()


@tvm.transform.module_pass(opt_level=0, name="bridge.InlineWidening")
def inline_widening(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """The cast blocks :func:`narrow_constants` added, inlined into their consumers in every
    fused kernel (run after ``FuseTIR``)."""
    updates = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and WIDEN in str(func):
            updates[gv] = _inlined(func)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def _inlined(func: tirx.PrimFunc) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint.startswith(WIDEN):
            sch.compute_inline(block)
    return sch.mod["main"]

"""MetaSchedule search spaces: TVM's LLVM rules, and for bridge's packed int8 products the
same rules plus auto-tensorization with the integer dot instruction.

A kernel built by :func:`bridge.schedules.int8.prepack_int8` has a product block (``int8_dot``)
whose innermost ``lanes x group`` step is one ``vpdpbusd`` (AVX-512 VNNI) or ``vpmaddwd``
(AVX-512BW / AVX2). Its space adds ``MultiLevelTilingWithIntrin`` with that instruction
(:func:`bridge.tuning.intrinsics.int8_dot_intrinsic`; MetaSchedule's own ``dot_16x4_vnni``
does not compile with LLVM 22) and the ``RewriteTensorize`` postprocessor, and keeps the
activation copy (``int8_act``: padding, the +128 shift) a block of its own: inlined into the
product it would hide the contiguous activation reads the instruction needs (AutoInline and
RandomComputeLocation skip it; MetaSchedule may still place it under a tile).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.schedule_rule import PyScheduleRule

from bridge.schedules.int8 import ACT, DOT
from bridge.tuning.intrinsics import int8_dot_intrinsic


def dot_shape(mod: tvm.IRModule) -> tuple[int, int, str] | None:
    """``(lanes, group, activation dtype)`` of the kernel's int8 product block, or None."""
    func = next(f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc))
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # hand-written TIR without blocks
        return None
    for block in blocks:
        stmt = sch.get(block)
        if not stmt.name_hint.startswith(DOT):
            continue
        weights = [r.source for r in stmt.reads if len(r.source.shape) == 6]
        acts = [r.source for r in stmt.reads if len(r.source.shape) != 6]
        if len(weights) != 1 or len(acts) != 1:
            return None
        lanes, group = (int(d) for d in weights[0].shape[-2:])
        return lanes, group, str(acts[0].dtype)
    return None


def space(mod: tvm.IRModule) -> str | ms.space_generator.SpaceGenerator:
    """The search space for one kernel: MetaSchedule's default for the target, or for an
    int8 product the tensorizing space described in the module docstring."""
    shape = dot_shape(mod)
    intrin = int8_dot_intrinsic(*shape) if shape else None
    if intrin is None:
        return "post-order-apply"
    rules = []
    for rule in ms.schedule_rule.ScheduleRule.create("llvm"):
        if isinstance(rule, (ms.schedule_rule.AutoInline, ms.schedule_rule.RandomComputeLocation)):
            rule = KeepBlock(rule, ACT)
        if type(rule) is ms.schedule_rule.MultiLevelTiling:
            rules.append(
                ms.schedule_rule.MultiLevelTilingWithIntrin(
                    intrin,
                    structure="SSRSRS",
                    max_innermost_factor=64,
                    reuse_write=ms.schedule_rule.ReuseType("may", [1, 2], "global"),
                )
            )
        rules.append(rule)
    postprocs = list(ms.postproc.Postproc.create("llvm"))
    at = next(
        (i for i, p in enumerate(postprocs) if isinstance(p, ms.postproc.RewriteLayout)),
        len(postprocs),
    )
    postprocs.insert(at, ms.postproc.RewriteTensorize(vectorize_init_loop=True))
    return ms.space_generator.PostOrderApply(
        sch_rules=rules, postprocs=postprocs, mutator_probs="llvm"
    )


@derived_object
class KeepBlock(PyScheduleRule):
    """``rule`` for every block but those whose name starts with ``prefix`` (left as they
    are)."""

    def __init__(self, rule: ms.schedule_rule.ScheduleRule, prefix: str):
        super().__init__()
        self.rule, self.prefix = rule, prefix

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.rule._initialize_with_tune_context(context)

    def apply(self, sch: s_tir.Schedule, block) -> list[s_tir.Schedule]:
        if sch.get(block).name_hint.startswith(self.prefix):
            return [sch]
        return list(self.rule.apply(sch, block))

    def clone(self) -> ms.schedule_rule.ScheduleRule:
        return KeepBlock(self.rule.clone(), self.prefix)

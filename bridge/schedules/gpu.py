"""GPU pipeline: TVM's CUDA passes, with two repairs that real models need.

* TVM 0.27 classifies a zero-padding kernel (``T.if_then_else`` over a larger output) as
  *element-wise*, so ``FuseOps`` fuses it into the preceding convolution's epilogue; dlight's
  Matmul rule then raises on that kernel (MobileNetV2's strided blocks) and tuned schedules can
  leave the padded border unwritten. :func:`fix_padding_pattern` marks such kernels injective,
  so they stay out of convolution epilogues.
* A dlight rule that raises stops the whole build; :class:`Guarded` turns that into "rule does
  not apply", so the next rule (ultimately ``Fallback``) schedules the kernel.
"""

from __future__ import annotations

import logging

import tvm
from tvm import tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base import ScheduleRule

log = logging.getLogger(__name__)

ELEMWISE, INJECTIVE = 0, 2  # TVM's OpPatternKind values


def _changes_shape(func: tirx.PrimFunc) -> bool:
    """True when the function's output buffer has another shape than one of its inputs."""
    buffers = [p for p in func.params if isinstance(p, tirx.Buffer)]
    if len(buffers) < 2:
        return False
    out = [int(d) if isinstance(d, tirx.IntImm) else d for d in buffers[-1].shape]
    for buf in buffers[:-1]:
        shape = [int(d) if isinstance(d, tirx.IntImm) else d for d in buf.shape]
        if len(shape) == len(out) and any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(shape, out)
        ):
            return True
    return False


@tvm.transform.module_pass(opt_level=0, name="BridgeFixPaddingPattern")
def fix_padding_pattern(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Re-mark "element-wise" kernels whose output shape differs from an input (padding) as
    injective. Runs between ``AnnotateTIROpPattern`` and ``FuseOps``."""
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
            continue
        pattern = func.attrs.get("op_pattern")
        if pattern is not None and int(pattern) == ELEMWISE and _changes_shape(func):
            updates[gv] = func.with_attr("op_pattern", INJECTIVE)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


class Guarded(ScheduleRule):
    """A dlight rule whose exceptions mean "does not apply" (logged), not a failed build."""

    def __init__(self, rule: ScheduleRule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception as exc:  # any failure of a rule means it does not apply
            log.debug("%s did not schedule a kernel: %s", type(self.rule).__name__, exc)
            return None


def default_schedule() -> tvm.transform.Pass:
    """dlight's GPU rules, guarded, ending in ``Fallback`` (every kernel gets a thread binding)."""
    rules = (
        dlight.gpu.Matmul(),
        dlight.gpu.GEMV(),
        dlight.gpu.Reduction(),
        dlight.gpu.GeneralReduction(),
    )
    return dlight.ApplyDefaultSchedule(*(Guarded(r) for r in rules), dlight.gpu.Fallback())

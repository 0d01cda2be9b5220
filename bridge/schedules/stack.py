"""Small scratch buffers of CPU kernels on the stack instead of TVM's workspace pool.

TVM lowers every buffer a kernel allocates to ``TVMBackendAllocWorkspace`` /
``TVMBackendFreeWorkspace`` calls unless it is in "global" scope and under ``kMaxStackAlloca``
(1024 bytes). A register tile's accumulators (a ``cache_write`` in "local" scope: 896 bytes for
14 pixels x 16 float or int32 lanes) are allocated inside the parallel loop, so every tile of
every kernel paid an allocation from a thread-local pool (a TLS lookup, a free-list search, a
free: about 3% of MobileNetV2 int8's CPU time in ``perf``). :func:`stack_small_buffers` moves
such buffers to "global" scope, where the LLVM code generator makes them stack slots hoisted
to the kernel's entry (a parallel loop's body is a function of its own). Nothing else changes:
"local" means nothing more than "global" on a CPU.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from bridge.schedules.common import all_blocks

# TVM's kMaxStackAlloca: a "global" buffer strictly smaller stays on the stack; schedules size
# their register tiles' accumulators under it
STACK_BYTES = 1024


def stack_buffers(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its "local" buffers in "global" scope (``func`` itself when it has none,
    or when a buffer cannot move, e.g. one an intrinsic matches in "local" scope). Sizes are
    not checked here: a buffer is compacted to what one loop iteration uses later, and TVM
    decides then (1024 bytes or more still come from the workspace pool)."""
    sch = s_tir.Schedule(func)
    moved = False
    for block in all_blocks(sch):
        for index, region in enumerate(sch.get(block).writes):
            if region.source.scope() != "local":
                continue
            try:
                sch.set_scope(block, index, "global")
                moved = True
            except Exception:  # matched by an intrinsic's "local" buffer: left where it is
                continue
    return sch.mod["main"] if moved else func


def _scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))


def stack_small_buffers() -> tvm.transform.Pass:
    """:func:`stack_buffers` on every scheduled kernel of a CPU module."""

    @tvm.transform.module_pass(opt_level=0, name="bridge.StackSmallBuffers")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {
            gv: stack_buffers(func)
            for gv, func in mod.functions.items()
            if isinstance(func, tirx.PrimFunc) and _scheduled(func)
        }
        if not any(not new.same_as(mod[gv]) for gv, new in updates.items()):
            return mod
        mod = mod.clone()
        for gv, new in updates.items():
            mod.update_func(gv, new)
        return mod

    return _pass

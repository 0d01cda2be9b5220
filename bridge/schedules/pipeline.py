"""The Relax compilation pipeline bridge uses: TVM's passes plus bridge's CPU schedules."""

from __future__ import annotations

import tvm
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.s_tir import dlight

from bridge.schedules.cpu import ChannelsLastKernels


def relax_pipeline(target: tvm.target.Target):
    """TVM's default pipeline for GPUs; for CPUs, TVM's CPU passes with schedules applied
    between fusion and lowering (TVM's own CPU pipeline schedules nothing)."""
    if target.kind.name != "llvm":
        return "default"

    @tvm.transform.module_pass(opt_level=0, name="BridgeCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        schedule = dlight.ApplyDefaultSchedule(ChannelsLastKernels(), dlight.cpu.Reduction())
        passes = (
            cpu.library_dispatch_passes(target)
            + cpu.legalize_passes(target)
            + [schedule]
            + cpu.dataflow_lower_passes(target)
            + cpu.finalize_passes(target)
        )
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline

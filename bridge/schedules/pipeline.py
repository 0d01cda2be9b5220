"""The Relax compilation pipelines bridge uses: TVM's passes plus bridge's schedules."""

from __future__ import annotations

import tvm
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.relax.backend.cuda import pipeline as cuda
from tvm.s_tir import dlight

from bridge.schedules import gpu
from bridge.schedules.cpu import ChannelsLastKernels


def _passes(target: tvm.target.Target) -> list:
    if target.kind.name == "cuda":
        return (
            cuda.library_dispatch_passes(target)
            + gpu.legalize_passes()
            + cuda.dataflow_lower_passes(target)
            + cuda.finalize_passes(target)
        )
    schedule = dlight.ApplyDefaultSchedule(ChannelsLastKernels(), dlight.cpu.Reduction())
    return (
        cpu.library_dispatch_passes(target)
        + cpu.legalize_passes(target)
        + [schedule]
        + cpu.dataflow_lower_passes(target)
        + cpu.finalize_passes(target)
    )


def relax_pipeline(target: tvm.target.Target):
    """For CPUs, TVM's CPU passes with bridge's schedules applied between fusion and lowering
    (TVM's own CPU pipeline schedules nothing); for CUDA, TVM's passes with the repairs in
    :mod:`bridge.schedules.gpu`; TVM's default pipeline for anything else."""
    if target.kind.name not in ("llvm", "cuda"):
        return "default"

    @tvm.transform.module_pass(opt_level=0, name="BridgePipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(_passes(target))(mod)

    return _pipeline

"""The Relax compilation pipelines bridge uses: TVM's passes plus bridge's schedules.

Every pipeline has the same three stages: *fusion* (on CPUs weight prepacking, then library
dispatch, legalization to TIR, fusion), *scheduling* (tuned kernels from a MetaSchedule database
first, then bridge's default rules for every other kernel) and *lowering*. Tuning
(:mod:`bridge.tuning`) runs the fusion stage alone to find the kernels, so its workloads are
exactly the ones this pipeline schedules.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.relax.backend.cuda import pipeline as cuda
from tvm.s_tir import dlight

from bridge.kernels_map import with_observers
from bridge.schedules import gpu
from bridge.schedules.cpu import ChannelsLastKernels
from bridge.schedules.prepack import prepack_weights

SCHEDULED_KINDS = ("llvm", "cuda")


def _is_gpu(target: tvm.target.Target) -> bool:
    return target.kind.name == "cuda"


def fusion_passes(target: tvm.target.Target) -> list:
    """Dispatch, legalization and fusion: Relax operators -> fused TIR kernels (observed around
    FuseOps by :mod:`bridge.kernels_map`, which records each kernel's layers)."""
    return with_observers(_fusion_passes(target))


def _fusion_passes(target: tvm.target.Target) -> list:
    if _is_gpu(target):
        return [
            *cuda.library_dispatch_passes(target),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            gpu.fix_padding_pattern,
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ]
    return [
        prepack_weights(target),
        *cpu.library_dispatch_passes(target),
        *cpu.legalize_passes(target),
    ]


def default_schedule(target: tvm.target.Target) -> tvm.transform.Pass:
    """bridge's schedule rules for every kernel not scheduled yet."""
    if _is_gpu(target):
        return gpu.default_schedule()
    return dlight.ApplyDefaultSchedule(ChannelsLastKernels(), dlight.cpu.Reduction())


def _lowering_passes(target: tvm.target.Target) -> list:
    backend = cuda if _is_gpu(target) else cpu
    return backend.dataflow_lower_passes(target) + backend.finalize_passes(target)


def fuse(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """``mod`` after the fusion stage (what tuning extracts its kernels from)."""
    with target:
        return tvm.transform.Sequential(fusion_passes(target))(mod)


def relax_pipeline(target: tvm.target.Target, tuned: bool = False):
    """The whole pipeline for ``target``; TVM's default pipeline for targets bridge does not
    schedule. With ``tuned``, kernels found in the MetaSchedule database in scope (``with
    database:``) are applied before the default rules."""
    if target.kind.name not in SCHEDULED_KINDS:
        return "default"

    @tvm.transform.module_pass(opt_level=0, name="BridgePipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        scheduling = [relax.transform.MetaScheduleApplyDatabase()] if tuned else []
        scheduling.append(default_schedule(target))
        passes = fusion_passes(target) + scheduling + _lowering_passes(target)
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline

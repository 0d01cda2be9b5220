"""The Relax compilation pipelines bridge uses: TVM's passes plus bridge's schedules.

Every pipeline has the same three stages: *fusion* (on CPUs weight prepacking, then library
dispatch, legalization to TIR, fusion), *scheduling* (tuned kernels from a MetaSchedule database
first, then bridge's default rules for every other kernel) and *lowering*. Tuning
(:mod:`bridge.tuning`) runs the fusion stage alone to find the kernels, so its workloads are
exactly the ones this pipeline schedules.

With a :class:`~bridge.schedules.lift.BuildRecord`, the pipeline reports back: after fusion, the
constants of ``main`` (the weights, transformed) become parameters when weights are kept out of
the library (``lift``), and after lowering the activation arena's size is read.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.relax.backend.cuda import pipeline as cuda
from tvm.s_tir import dlight

from bridge.kernels_map import with_observers
from bridge.schedules import gpu
from bridge.schedules.cpu import ChannelsLastKernels, simd_lanes
from bridge.schedules.fused_block import FusedBlockKernels, fuse_expand_depthwise
from bridge.schedules.gate_fold import fold_gates
from bridge.schedules.high_multiply import tir_pipeline
from bridge.schedules.int8 import Int8Kernels, prepack_int8
from bridge.schedules.int8_amx import AmxKernels, request_amx
from bridge.schedules.int8_arm import Int8ArmKernels, prepack_int8_arm
from bridge.schedules.int8_depthwise import (
    Int8DepthwiseKernels,
    codegen_target,
    prepack_int8_depthwise,
)
from bridge.schedules.int8_elementwise import Int8LookupKernels
from bridge.schedules.lift import BuildRecord, lift_constants, measure_arena
from bridge.schedules.narrow import inline_widening, narrow_constants
from bridge.schedules.prepack import prepack_weights
from bridge.schedules.stack import stack_small_buffers

SCHEDULED_KINDS = ("llvm", "cuda")


def _is_gpu(target: tvm.target.Target) -> bool:
    return target.kind.name == "cuda"


def fusion_passes(
    target: tvm.target.Target, optimize_for: str = "speed", derived: dict | None = None
) -> list:
    """Dispatch, legalization and fusion: Relax operators -> fused TIR kernels (observed after
    FuseOps by :mod:`bridge.kernels_map`, which records each kernel's layers).
    ``optimize_for``, ``derived``: see ``prepack_weights``."""
    return with_observers(_fusion_passes(target, optimize_for, derived))


def _fusion_passes(target: tvm.target.Target, optimize_for: str, derived: dict | None) -> list:
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
        fold_gates,  # before packing: makes a projection's weights a product of the gate
        prepack_int8(target, derived),
        prepack_int8_depthwise(target, derived),
        prepack_int8_arm(target, derived),
        fuse_expand_depthwise(simd_lanes(target), derived),  # before packing: reads 1x1 weights
        prepack_weights(target, optimize_for, derived),
        *cpu.library_dispatch_passes(target),
        *_legalize_passes(target),
    ]


def _legalize_passes(target: tvm.target.Target) -> list:
    """TVM's CPU legalization with int64 constants narrowed after the last fold
    (:mod:`bridge.schedules.narrow`)."""
    passes = cpu.legalize_passes(target)
    fuse_at = next(i for i, p in enumerate(passes) if p.info.name == "FuseOps")
    annotate = relax.transform.AnnotateTIROpPattern()
    return [*passes[:fuse_at], narrow_constants, annotate, *passes[fuse_at:], inline_widening]


def default_schedule(target: tvm.target.Target) -> tvm.transform.Pass:
    """bridge's schedule rules for every kernel not scheduled yet."""
    if _is_gpu(target):
        return gpu.default_schedule()
    # guarded: dlight's reduction rule fails on symbolic extents such as T - 2 (input_shapes
    # with a symbolic length); such a kernel keeps its plain loops. An AMX kernel asks Linux
    # for the tiles first (request_amx), wherever the schedule is used; small scratch buffers
    # (register tiles' accumulators) then move to the stack (stack_small_buffers)
    rules = dlight.ApplyDefaultSchedule(
        AmxKernels(),
        Int8Kernels(),
        Int8DepthwiseKernels(),
        Int8ArmKernels(),
        Int8LookupKernels(),
        FusedBlockKernels(),
        ChannelsLastKernels(),
        gpu.Guarded(dlight.cpu.Reduction()),
    )
    return tvm.transform.Sequential([rules, request_amx, stack_small_buffers()])


def compile_options(target: tvm.target.Target) -> dict:
    """``tvm.compile``'s code generation arguments for ``target``'s kernels: the target as
    LLVM's code generator should see it (:func:`~bridge.schedules.int8_depthwise.codegen_target`)
    and the TIR pipeline (:func:`~bridge.schedules.high_multiply.tir_pipeline`). The build, the
    tuner's candidates and its numeric check all compile with them, so the tuner measures the
    code a build ships."""
    return {"target": codegen_target(target), "tir_pipeline": tir_pipeline(target)}


def _lowering_passes(target: tvm.target.Target) -> list:
    backend = cuda if _is_gpu(target) else cpu
    return backend.dataflow_lower_passes(target) + backend.finalize_passes(target)


def fuse(mod: tvm.IRModule, target: tvm.target.Target, optimize_for: str = "speed") -> tvm.IRModule:
    """``mod`` after the fusion stage (what tuning extracts its kernels from)."""
    with target:
        return tvm.transform.Sequential(fusion_passes(target, optimize_for))(mod)


def relax_pipeline(
    target: tvm.target.Target,
    tuned: bool = False,
    *,
    optimize_for: str = "speed",
    record: BuildRecord | None = None,
    lift: bool = False,
    names: dict[int, str] | None = None,
):
    """The whole pipeline for ``target``; TVM's default pipeline for targets bridge does not
    schedule. With ``tuned``, kernels found in the MetaSchedule database in scope (``with
    database:``) are applied before the default rules. ``record`` receives the lifted weights
    (with ``lift``; ``names`` as for ``lift_constants``), the bytes of constants left in the
    library and the arena size."""
    if target.kind.name not in SCHEDULED_KINDS:
        return "default"

    @tvm.transform.module_pass(opt_level=0, name="BridgePipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        scheduling = [relax.transform.MetaScheduleApplyDatabase()] if tuned else []
        scheduling.append(default_schedule(target))
        reporting = [lift_constants(record, names, lift)] if record is not None else []
        derived = record.derived if record is not None else None
        passes = fusion_passes(target, optimize_for, derived) + reporting + scheduling
        passes += _lowering_passes(target)
        passes += [measure_arena(record)] if record is not None else []
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline

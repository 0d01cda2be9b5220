"""Relax module + weights -> a TVM executable for a target."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax

from bridge.errors import CompileError
from bridge.schedules import compile_options, relax_pipeline
from bridge.schedules.lift import BuildRecord, weight_names
from bridge.schedules.pipeline import SCHEDULED_KINDS
from bridge.schedules.prepack import OPTIMIZE_FOR


def bind_weights(mod: tvm.IRModule, params: dict[str, Any]) -> tvm.IRModule:
    """Bind weights (numpy arrays or TVM tensors) as constants and fold everything computable
    from them (BN scales, reshaped depthwise kernels, transposed kernels) so none of it runs at
    inference time."""
    tensors = {
        k: v if isinstance(v, tvm.runtime.Tensor) else tvm.runtime.tensor(v)
        for k, v in params.items()
    }
    mod = relax.transform.BindParams("main", tensors)(mod)
    mod = relax.transform.FoldConstant()(mod)
    return relax.transform.DeadCodeElimination(["main"])(mod)


def compile_module(mod: tvm.IRModule, target: tvm.target.Target, database=None):
    """Compile ``mod`` (weights bound by :func:`bind_weights`, or taken by ``main`` after the
    inputs) for ``target``; returns a relax Executable. Kernels found in ``database`` (a
    MetaSchedule database of tuned kernels) replace bridge's default schedules."""
    return _compile(mod, target, database, relax_pipeline(target, tuned=database is not None))


def _compile(mod: tvm.IRModule, target: tvm.target.Target, database, pipeline):
    try:
        with target, database if database is not None else contextlib.nullcontext():
            return tvm.compile(mod, relax_pipeline=pipeline, **compile_options(target))
    except Exception as exc:
        raise CompileError(f"TVM failed to compile the model for {target}: {exc}") from exc


@dataclass
class Compiled:
    """A compiled model: the executable, the weights its ``main`` takes after the inputs (as
    its kernels read them: folded, prepacked, Winograd-transformed; empty when they are bound
    into the library) with their names, and sizes in bytes: weights left in the library, and
    the storage the VM allocates per call (activations and outputs; None if not static)."""

    executable: Any
    params: list[np.ndarray]
    param_names: list[str]
    library_weight_bytes: int
    arena_bytes: int | None

    @property
    def params_bytes(self) -> int:
        return sum(p.nbytes for p in self.params)


def compile_model(
    mod: tvm.IRModule,
    params: dict[str, np.ndarray],
    target: tvm.target.Target,
    database=None,
    *,
    separate_params: bool = True,
    optimize_for: str = "balanced",
) -> Compiled:
    """Bind ``params`` into ``mod``, transform and compile them (the same kernels either way);
    with ``separate_params`` the transformed weights then leave the library and become
    ``main``'s parameters after the inputs, so ``main`` runs no weight transform per call.
    ``optimize_for`` ("speed", "balanced", "size") decides which convolutions use Winograd
    (larger weights): see ``bridge.schedules.prepack``."""
    if optimize_for not in OPTIMIZE_FOR:
        raise CompileError(f"optimize_for must be one of {OPTIMIZE_FOR}, got {optimize_for!r}")
    if target.kind.name not in SCHEDULED_KINDS:  # TVM's default pipeline: nothing transformed
        if separate_params:
            executable = compile_module(mod, target, database)
            return Compiled(executable, list(params.values()), list(params), 0, None)
        executable = compile_module(bind_weights(mod, params), target, database)
        return Compiled(executable, [], [], 0, None)
    tensors = {k: tvm.runtime.tensor(v) for k, v in params.items()}
    record = BuildRecord()
    pipeline = relax_pipeline(
        target,
        tuned=database is not None,
        optimize_for=optimize_for,
        record=record,
        lift=separate_params,
        names=weight_names(tensors),
    )
    executable = _compile(bind_weights(mod, tensors), target, database, pipeline)
    return Compiled(
        executable, record.params, record.names, record.constant_bytes, record.arena_bytes
    )

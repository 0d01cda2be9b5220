"""Relax module + weights -> a TVM executable for a target."""

from __future__ import annotations

import contextlib

import numpy as np
import tvm
from tvm import relax

from bridge.errors import CompileError
from bridge.schedules import relax_pipeline


def bind_weights(mod: tvm.IRModule, params: dict[str, np.ndarray]) -> tvm.IRModule:
    """Bind weights as constants and fold everything computable from them (BN scales, reshaped
    depthwise kernels, transposed kernels) so none of it runs at inference time."""
    bound = relax.transform.BindParams(
        "main", {k: tvm.runtime.tensor(v) for k, v in params.items()}
    )
    mod = bound(mod)
    mod = relax.transform.FoldConstant()(mod)
    return relax.transform.DeadCodeElimination(["main"])(mod)


def compile_module(mod: tvm.IRModule, target: tvm.target.Target, database=None):
    """Compile ``mod`` (weights bound by :func:`bind_weights`, or taken by ``main`` after the
    inputs) for ``target``; returns a relax Executable. Kernels found in ``database`` (a
    MetaSchedule database of tuned kernels) replace bridge's default schedules."""
    try:
        pipeline = relax_pipeline(target, tuned=database is not None)
        with target, database if database is not None else contextlib.nullcontext():
            return tvm.compile(mod, target=target, relax_pipeline=pipeline)
    except Exception as exc:
        raise CompileError(f"TVM failed to compile the model for {target}: {exc}") from exc

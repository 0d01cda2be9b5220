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


def compile_module(
    mod: tvm.IRModule,
    params: dict[str, np.ndarray],
    target: tvm.target.Target,
    bind: bool = True,
    database=None,
):
    """Compile ``mod`` for ``target``, with ``params`` bound as constants unless ``bind`` is
    False (then ``main`` keeps taking them after the inputs); returns a relax Executable.
    Kernels found in ``database`` (a MetaSchedule database of tuned kernels) replace bridge's
    default schedules."""
    try:
        if bind:
            mod = bind_weights(mod, params)
        pipeline = relax_pipeline(target, tuned=database is not None)
        with target, database if database is not None else contextlib.nullcontext():
            return tvm.compile(mod, target=target, relax_pipeline=pipeline)
    except Exception as exc:
        raise CompileError(f"TVM failed to compile the model for {target}: {exc}") from exc

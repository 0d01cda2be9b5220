"""Single kernels (one fused TIR workload) built, run and timed: the numeric check of tuned
candidates against bridge's default schedule of the same workload, on random inputs.

Float kernels get uniform inputs in [-1, 1] and must agree up to float reassociation. Integer
kernels (the int8 products of quantized models and their fixed-point epilogues) must agree
exactly; their constant arguments (packed weights, requantization multipliers and shifts) are
the model's own values, taken from a call site (random multipliers or shift amounts would
overflow or shift out of range, which is undefined behaviour, not a schedule's fault), and their
other integer inputs are random within int8's range.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from bridge.schedules import compile_options
from bridge.schedules.cpu import is_reduction
from bridge.schedules.pipeline import default_schedule


def _func(mod: tvm.IRModule) -> tirx.PrimFunc:
    return next(f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc))


def buffers(mod: tvm.IRModule) -> list[tirx.Buffer]:
    return [p for p in _func(mod).params if isinstance(p, tirx.Buffer)]


def static_float(mod: tvm.IRModule) -> bool:
    """All arguments float tensors of static shape (random inputs are then meaningful)."""
    func = _func(mod)
    if len(func.params) != len(buffers(mod)):
        return False
    return all(
        b.dtype.startswith("float") and all(isinstance(d, tirx.IntImm) for d in b.shape)
        for b in buffers(mod)
    )


def static_tensors(mod: tvm.IRModule) -> bool:
    """All arguments float or integer tensors of static shape (random inputs are meaningful)."""
    func = _func(mod)
    if len(func.params) != len(buffers(mod)):
        return False
    return all(
        _numeric(str(b.dtype)) and all(isinstance(d, tirx.IntImm) for d in b.shape)
        for b in buffers(mod)
    )


def _numeric(dtype: str) -> bool:
    return dtype.startswith(("float", "int", "uint"))


def is_integer(mod: tvm.IRModule) -> bool:
    """True for kernels with an integer argument (quantized kernels: checked exactly)."""
    return any(str(b.dtype).startswith(("int", "uint")) for b in buffers(mod))


def has_reduction(mod: tvm.IRModule) -> bool:
    """True for kernels with a reduction (conv, matmul, pooling...): the ones worth tuning."""
    from tvm import s_tir

    sch = s_tir.Schedule(_func(mod))
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # hand-written TIR without blocks (sort, scan)
        return False
    return any(is_reduction(sch, b) for b in blocks)


Constants = dict[int, np.ndarray]  # argument position -> the model's constant value


def random_arguments(
    mod: tvm.IRModule, seed: int = 0, constants: Constants | None = None
) -> list[np.ndarray]:
    """One array per argument: ``constants`` where given (of the same shape and dtype), else
    uniform in [-1, 1] (float) or over int8's range [-128, 127] (integers; clipped to the
    dtype's range)."""
    rng = np.random.default_rng(seed)
    constants = constants or {}
    arrays = []
    for i, b in enumerate(buffers(mod)):
        shape, dtype = [int(d) for d in b.shape], np.dtype(str(b.dtype))
        given = constants.get(i)
        if given is not None and given.shape == tuple(shape) and given.dtype == dtype:
            arrays.append(given.copy())
        elif dtype.kind == "f":
            arrays.append(rng.uniform(-1, 1, shape).astype(dtype))
        else:
            info = np.iinfo(dtype)
            low, high = max(-128, int(info.min)), min(127, int(info.max))
            arrays.append(rng.integers(low, high, shape, endpoint=True).astype(dtype))
    return arrays


def call_site_constants(fused: tvm.IRModule) -> dict[str, Constants]:
    """Per workload key, the constant arguments of one ``call_tir`` of it in ``fused``'s
    Relax functions (the model's weights and requantization parameters)."""
    from bridge.tuning.database import workload_key

    found: dict[str, Constants] = {}
    for call in _tir_calls(fused):
        callee = fused[call.args[0]]
        key = workload_key(tvm.IRModule({"main": callee.with_attr("global_symbol", "main")}))
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else [call.args[1]]
        constant = tvm.ir.expr.Constant
        values = {i: arg.value.numpy() for i, arg in enumerate(args) if isinstance(arg, constant)}
        if values and key not in found:
            found[key] = values
    return found


def _tir_calls(mod: tvm.IRModule) -> list[relax.Call]:
    call_tir = tvm.ir.Op.get("relax.call_tir")
    calls: list[relax.Call] = []

    def visit(expr) -> None:
        if (
            isinstance(expr, relax.Call)
            and expr.op.same_as(call_tir)
            and isinstance(expr.args[0], tvm.ir.GlobalVar)
        ):
            calls.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return calls


def agree(got: np.ndarray, want: np.ndarray) -> bool:
    """Integers: equal. Floats: the same values up to float reassociation (tolerance scaled by
    the output's magnitude)."""
    if got.dtype.kind in "iub" or want.dtype.kind in "iub":
        return got.dtype == want.dtype and bool(np.array_equal(got, want))
    if not np.all(np.isfinite(got)) and np.array_equal(np.isfinite(got), np.isfinite(want)):
        got, want = np.nan_to_num(got), np.nan_to_num(want)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return bool(np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale))


def build_default(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Module:
    """The workload under bridge's default schedule (what runs when nothing is tuned)."""
    copy = tvm.IRModule(dict(mod.functions.items()))  # dlight assigns into its input module
    with target:
        scheduled = default_schedule(target)(copy)
    return tvm.compile(scheduled, **compile_options(target)).mod


def build_schedule(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Module:
    return tvm.compile(mod, **compile_options(target)).mod


@dataclass
class Executor:
    """Runs kernels on this machine, or on a remote device through an RPC tracker (one short
    session per use: the device's server also serves MetaSchedule's runner)."""

    remote: Any = None  # bridge.tuning.session.Remote
    cross_compiler: str | None = None
    _dir: tempfile.TemporaryDirectory = field(default_factory=tempfile.TemporaryDirectory)

    @contextlib.contextmanager
    def _loaded(self, lib: tvm.runtime.Module):
        """The module where it runs (here, or uploaded to the remote), and its device."""
        if self.remote is None:
            yield lib, tvm.cpu()
            return
        from tvm.support import cc

        path = Path(self._dir.name) / "kernel.so"
        fcompile = cc.cross_compiler(self.cross_compiler) if self.cross_compiler else None
        lib.export_library(str(path), fcompile=fcompile)
        session = self.remote.session()
        try:
            session.upload(str(path))
            yield session.load_module(path.name), session.cpu()
        finally:
            del session

    def run(self, lib: tvm.runtime.Module, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Call the kernel on copies of ``arrays``; returns every argument afterwards."""
        with self._loaded(lib) as (module, dev):
            args = [tvm.runtime.tensor(a, dev) for a in arrays]
            module["main"](*args)
            return [a.numpy() for a in args]

    def time(self, lib: tvm.runtime.Module, arrays: list[np.ndarray]) -> float:
        """Median seconds per call, measured like MetaSchedule's runner measures candidates."""
        with self._loaded(lib) as (module, dev):
            args = [tvm.runtime.tensor(a, dev) for a in arrays]
            timer = module.time_evaluator("main", dev, number=3, repeat=3, min_repeat_ms=40)
            return float(np.median(timer(*args).results))


@dataclass
class Reference:
    """A workload's default-schedule outputs and latency, computed once per task."""

    arrays: list[np.ndarray]
    outputs: list[np.ndarray]
    seconds: float

    @classmethod
    def measure(
        cls,
        mod: tvm.IRModule,
        target: tvm.target.Target,
        executor: Executor,
        constants: Constants | None = None,
    ):
        arrays = random_arguments(mod, constants=constants)
        lib = build_default(mod, target)
        return cls(arrays, executor.run(lib, arrays), executor.time(lib, arrays))

    def matches(self, lib: tvm.runtime.Module, executor: Executor) -> bool:
        got = executor.run(lib, self.arrays)
        return all(agree(g, w) for g, w in zip(got, self.outputs))

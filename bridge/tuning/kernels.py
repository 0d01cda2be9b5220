"""Single kernels (one fused TIR workload) built, run and timed: the numeric check of tuned
candidates against bridge's default schedule of the same workload, on random inputs."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import tirx

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


def has_reduction(mod: tvm.IRModule) -> bool:
    """True for kernels with a reduction (conv, matmul, pooling...): the ones worth tuning."""
    from tvm import s_tir

    sch = s_tir.Schedule(_func(mod))
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # hand-written TIR without blocks (sort, scan)
        return False
    return any(is_reduction(sch, b) for b in blocks)


def random_arguments(mod: tvm.IRModule, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, [int(d) for d in b.shape]).astype(b.dtype) for b in buffers(mod)]


def agree(got: np.ndarray, want: np.ndarray) -> bool:
    """Same values up to float reassociation (tolerance scaled by the output's magnitude)."""
    if not np.all(np.isfinite(got)) and np.array_equal(np.isfinite(got), np.isfinite(want)):
        got, want = np.nan_to_num(got), np.nan_to_num(want)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return bool(np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale))


def build_default(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Module:
    """The workload under bridge's default schedule (what runs when nothing is tuned)."""
    copy = tvm.IRModule(dict(mod.functions.items()))  # dlight assigns into its input module
    with target:
        scheduled = default_schedule(target)(copy)
    return tvm.compile(scheduled, target=target).mod


def build_schedule(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Module:
    return tvm.compile(mod, target=target).mod


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
    def measure(cls, mod: tvm.IRModule, target: tvm.target.Target, executor: Executor):
        arrays = random_arguments(mod)
        lib = build_default(mod, target)
        return cls(arrays, executor.run(lib, arrays), executor.time(lib, arrays))

    def matches(self, lib: tvm.runtime.Module, executor: Executor) -> bool:
        got = executor.run(lib, self.arrays)
        return all(agree(g, w) for g, w in zip(got, self.outputs))

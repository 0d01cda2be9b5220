"""Per-kernel latency of an integer (.tflite int8) model under bridge's default CPU schedules.

    TVM_NUM_THREADS=2 python scripts/int8_breakdown.py MODEL.tflite [--top 25] [--batch 1]
        [--only SUBSTRING] [--dump SUBSTRING] [--check]

Each fused kernel is built alone with the default schedule and timed on random integer
inputs; prints ms x calls, share, GOP/s, whether bridge's int8 rule scheduled it, and the
name. ``--dump`` prints the scheduled TIR of the kernels whose name contains the text;
``--check`` compares every int8 kernel's outputs with the epilogue-as-its-own-pass schedule
(:func:`bridge.schedules.int8.schedule_dot_unfused`).
"""

from __future__ import annotations

import argparse

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir import meta_schedule as ms

import bridge
from bridge.compile import bind_weights
from bridge.schedules.int8 import DOT, Int8Kernels, dot_kind, schedule_dot_unfused
from bridge.schedules.pipeline import default_schedule, fuse
from bridge.targets import resolve
from bridge.tuning import kernels


def _arguments(kernel: tvm.IRModule, seed: int = 0) -> list[np.ndarray] | None:
    """Random inputs in each dtype's range (small for wide integers: shifts, multipliers)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for buf in kernels.buffers(kernel):
        if not all(isinstance(d, tirx.IntImm) for d in buf.shape):
            return None
        shape, dtype = [int(d) for d in buf.shape], str(buf.dtype)
        if dtype in ("int8", "uint8"):
            info = np.iinfo(dtype)
            arrays.append(rng.integers(info.min, info.max + 1, shape).astype(dtype))
        elif dtype.startswith(("int", "uint")):
            arrays.append(rng.integers(0, 24, shape).astype(dtype))
        elif dtype == "bool":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            arrays.append(rng.uniform(-1, 1, shape).astype(dtype))
    return arrays


def _scheduled(kernel: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    copy = tvm.IRModule(dict(kernel.functions.items()))
    with target:
        return default_schedule(target)(copy)


def _unfused(kernel: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Module:
    gv, func = next((g, f) for g, f in kernel.functions.items() if isinstance(f, tirx.PrimFunc))
    sch = s_tir.Schedule(func)
    schedule_dot_unfused(sch, dot_kind(target))
    return kernels.build_schedule(tvm.IRModule({gv: sch.mod["main"]}), target)


def _by_int8_rule(kernel: tvm.IRModule, target: tvm.target.Target) -> bool:
    func = next(f for f in kernel.functions.values() if isinstance(f, tirx.PrimFunc))
    return DOT in str(func) and Int8Kernels().apply(func, target, False) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--target", default="native")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--only", default="")
    parser.add_argument("--dump", default=None)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    mod, params = bridge.to_relax(args.model, batch_size=args.batch)
    target = resolve(args.target).tvm_target()
    executor, rows = kernels.Executor(), []
    fused = fuse(bind_weights(mod, params), target)
    for task in ms.relax_integration.extract_tasks(fused, target):
        kernel = task.dispatched[0]
        arrays = _arguments(kernel)
        if arrays is None or args.only not in task.task_name:
            continue
        scheduled = _scheduled(kernel, target)
        if args.dump is not None and args.dump in task.task_name:
            print(scheduled.script())
        lib = kernels.build_schedule(scheduled, target)  # with the build's TIR pipeline
        ms_total = executor.time(lib, arrays) * 1e3 * task.weight
        if args.check and DOT in task.task_name:
            want = executor.run(_unfused(kernel, target), arrays)
            got = executor.run(lib, arrays)
            if not all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)):
                print(f"MISMATCH {task.task_name}")
        flops = s_tir.analysis.estimate_tir_flops(kernel) * task.weight
        rule = "int8" if _by_int8_rule(kernel, target) else "    "
        rows.append((ms_total, flops / ms_total / 1e6, task.weight, rule, task.task_name))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    for ms_, gops, calls, rule, name in rows[: args.top]:
        print(f"{ms_:8.3f} ms {ms_ / total:6.1%} {gops:7.1f} GOP/s x{calls} {rule} {name[:110]}")
    print(f"total {total:.2f} ms over {len(rows)} kernels")


if __name__ == "__main__":
    main()

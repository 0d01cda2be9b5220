"""Per-kernel latency of a model under bridge's default CPU schedules, heaviest first.

    TVM_NUM_THREADS=1 python scripts/kernel_breakdown.py MODEL [WEIGHTS] [--top 25] [--batch-size 8]

Each fused kernel is built alone with the default schedule and timed on random inputs (what
tuning starts from); prints ms x calls, share, GFLOP/s, the kernel name and its first input's
and its output's shapes, then the sum. ``--batch-size 8`` translates the model at that batch
(large feature maps then no longer fit the caches: compare per image against batch 1).
"""

from __future__ import annotations

import argparse

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

import bridge
from bridge.compile import bind_weights
from bridge.schedules.pipeline import fuse
from bridge.targets import resolve
from bridge.tuning import kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("weights", nargs="?")
    parser.add_argument("--target", default="native")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    mod, params = bridge.to_relax(args.model, args.weights, batch_size=args.batch_size)
    target = resolve(args.target).tvm_target()
    executor, rows = kernels.Executor(), []
    for task in ms.relax_integration.extract_tasks(fuse(bind_weights(mod, params), target), target):
        kernel = task.dispatched[0]
        if not kernels.static_float(kernel):
            continue
        lib = kernels.build_default(kernel, target)
        ms_total = executor.time(lib, kernels.random_arguments(kernel)) * 1e3 * task.weight
        flops = s_tir.analysis.estimate_tir_flops(kernel) * task.weight
        shapes = [tuple(int(d) for d in b.shape) for b in kernels.buffers(kernel)]
        io = f"{shapes[0]} -> {shapes[-1]}"
        rows.append((ms_total, flops / ms_total / 1e6, task.weight, task.task_name, io))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    for ms_, gflops, calls, name, io in rows[: args.top]:
        print(f"{ms_:8.3f} ms {ms_ / total:6.1%} {gflops:7.1f} GFLOP/s x{calls} {name} {io}")
    print(f"total {total:.2f} ms over {len(rows)} kernels")


if __name__ == "__main__":
    main()

"""Latency of one model built by bridge, in this process: median of N calls per thread count,
back to back and after an idle pause (how the numbers in the closing notes were taken).

    python scripts/latency.py benchmarks/models/ResNet50.keras --threads 1,2 --pause 0,0.01
    TVM_NUM_THREADS=1 taskset -c 0 python scripts/latency.py MODEL --batch 8

Inputs are uniform random in [0, 1) (integer inputs: ids below --high); the default schedules
are used (BRIDGE_TUNING_DB=off unless set).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("BRIDGE_TUNING_DB", "off")

import bridge
from bridge.runtime import use_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("weights", nargs="?")
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", default="", help="comma-separated counts (default: the pool)")
    parser.add_argument("--pause", default="0", help="comma-separated idle seconds before calls")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--high", type=int, default=1000, help="upper bound of integer inputs")
    args = parser.parse_args()
    started = time.perf_counter()
    model = bridge.build(args.model, args.weights, target=args.target, batch_size=args.batch)
    print(f"build {time.perf_counter() - started:.1f} s")
    rng = np.random.default_rng(0)
    inputs = []
    for info in model.inputs:
        shape = [args.batch, *info.shape[1:]]
        if np.issubdtype(np.dtype(info.dtype), np.integer):
            inputs.append(rng.integers(0, args.high, shape).astype(info.dtype))
        else:
            inputs.append(rng.random(shape).astype(info.dtype))
    counts = [int(t) for t in args.threads.split(",")] if args.threads else [None]
    for threads in counts:
        if threads is not None:
            use_threads(threads)
        for pause in (float(p) for p in args.pause.split(",")):
            for _ in range(3):
                model(*inputs)
            times = []
            for _ in range(args.calls):
                time.sleep(pause)
                start = time.perf_counter()
                model(*inputs)
                times.append(time.perf_counter() - start)
            p10, p50, p90 = (np.percentile(times, q) * 1e3 for q in (10, 50, 90))
            used = threads or os.environ.get("TVM_NUM_THREADS")
            spread = f"[p10 {p10:.2f}, p90 {p90:.2f}]"
            print(f"threads {used} pause {pause:g} s: median {p50:.2f} ms {spread}")


if __name__ == "__main__":
    main()

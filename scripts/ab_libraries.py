"""Interleaved latency of exported libraries of one model: an A/B of two builds.

    bridge build MODEL --target native -o old      # at the commit before
    bridge build MODEL --target native -o new      # at the commit after
    TVM_NUM_THREADS=2 python scripts/ab_libraries.py old/M.so new/M.so [--calls 30]

Loads every library (bridge.load), checks that all give the first one's outputs bit for bit on
one random input, then times them in rounds (each library called once per round, in turn, each
round starting with the next one) and prints each median and its ratio to the first. Compare
ratios from one run, not times across runs; list one library twice (a copy with its sidecars)
to see the noise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bridge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("libraries", nargs="+", help="exported .so files of one model")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per library")
    args = parser.parse_args()
    models = {path: bridge.load(path) for path in args.libraries}
    first = next(iter(models.values()))
    rng = np.random.default_rng(0)
    inputs = []
    for spec in first.inputs:
        shape, dtype = [int(d) for d in spec.shape], np.dtype(str(spec.dtype))
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            inputs.append(rng.integers(info.min, info.max + 1, shape).astype(dtype))
        else:
            inputs.append(rng.uniform(-1, 1, shape).astype(dtype))
    want = [np.asarray(y) for y in _outputs(first(*inputs))]
    for path, model in models.items():
        got = [np.asarray(y) for y in _outputs(model(*inputs))]
        same = all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
        print(f"{path}: {'bit-exact with' if same else 'DIFFERS from'} the first")
    times: dict[str, list[float]] = {path: [] for path in models}
    order = list(models)
    for call in range(args.calls):
        # each round starts with the next library: the first of a round measured 1-2% slower
        # (the same file loaded twice, listed first and third)
        for path in order[call % len(order) :] + order[: call % len(order)]:
            start = time.perf_counter()
            models[path](*inputs)
            times[path].append(time.perf_counter() - start)
    base = float(np.median(times[args.libraries[0]]))
    for path, values in times.items():
        median = float(np.median(values))
        print(f"{median * 1e3:9.3f} ms  {median / base:6.3f}x  {path}")


def _outputs(result) -> list:
    return list(result) if isinstance(result, list | tuple) else [result]


if __name__ == "__main__":
    main()

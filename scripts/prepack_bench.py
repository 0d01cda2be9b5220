"""One NHWC convolution under bridge's CPU schedule with Keras' HWIO weights and with the
prepacked [out/tile, kh, kw, in, tile] weights, timed with warm caches and after evicting them
(how prepacking's gain was measured; see bridge/schedules/prepack.py).

    TVM_NUM_THREADS=1 taskset -c 0 python scripts/prepack_bench.py 7 7 512 512 3
    (arguments: height width in_channels out_channels kernel_size; stride 1, "same" padding)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tvm
from tvm import te, topi

from bridge.schedules.cpu import ChannelsLastKernels, channel_block, simd_lanes
from bridge.schedules.prepack import packed_conv2d
from bridge.targets import resolve

EVICT = np.ones(64 << 18, "float32")  # 64 MiB: more than the L3 cache


def convolution(height, width, ci, co, k, packed_tile=None):
    """TOPI's NHWC convolution (what legalization gives without prepacking), or the packed one
    bridge's prepacking pass emits."""
    x = te.placeholder((1, height, width, ci), "float32", name="x")
    pad = k // 2
    if packed_tile is None:
        w = te.placeholder((k, k, ci, co), "float32", name="w")
        y = topi.nn.conv2d_nhwc(x, w, 1, pad, 1)
    else:
        w = te.placeholder((co // packed_tile, k, k, ci, packed_tile), "float32", name="w")
        y = packed_conv2d(x, w, (1, 1), (pad,) * 4, (1, 1))
    return te.create_prim_func([x, w, y])


def median_ms(function, arrays, cold: bool) -> float:
    times = []
    for _ in range(15):
        if cold:
            EVICT.sum()
        start = time.perf_counter()
        function(*arrays)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("height", "width", "in_channels", "out_channels", "kernel_size"):
        parser.add_argument(name, type=int)
    a = parser.parse_args()
    target = resolve("native").tvm_target()
    tile = channel_block(a.out_channels, simd_lanes(target))
    rng = np.random.default_rng(0)
    x = rng.random((1, a.height, a.width, a.in_channels), dtype="float32")
    w = rng.random((a.kernel_size,) * 2 + (a.in_channels, a.out_channels), dtype="float32")
    packed = w.reshape(*w.shape[:3], -1, tile).transpose(3, 0, 1, 2, 4).copy()
    flops = 2 * a.height * a.width * a.in_channels * a.out_channels * a.kernel_size**2
    results = {}
    for label, tile_or_none, weights in (("HWIO", None, w), ("packed", tile, packed)):
        func = convolution(
            a.height, a.width, a.in_channels, a.out_channels, a.kernel_size, tile_or_none
        )
        sch = ChannelsLastKernels().apply(func, target, False)
        library = tvm.compile(sch.mod, target=target)
        out = tvm.runtime.tensor(np.zeros((1, a.height, a.width, a.out_channels), "float32"))
        arrays = [tvm.runtime.tensor(x), tvm.runtime.tensor(weights), out]
        library["main"](*arrays)
        results[label] = out.numpy()
        for cold in (False, True):
            ms = median_ms(library["main"], arrays, cold)
            state = "cold" if cold else "warm"
            print(f"{label:7s} {state}: {ms:.3f} ms ({flops / ms / 1e6:.0f} GFLOP/s)")
    print("max difference", float(np.abs(results["HWIO"] - results["packed"]).max()))


if __name__ == "__main__":
    main()

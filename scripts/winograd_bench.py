"""One 3x3 stride-1 "same" convolution (+ bias + relu) built by bridge's CPU pipeline, direct and
as Winograd F(4x4, 3x3) / F(2x2, 3x3), timed with warm caches and after evicting them; prints
each variant's error against the direct kernel (how the Winograd kernels' gains were measured;
see bridge/schedules/winograd.py).

    TVM_NUM_THREADS=1 taskset -c 0 python scripts/winograd_bench.py 1 14 14 256 256
    (arguments: batch height width in_channels out_channels)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tvm
from tvm import relax
from tvm.runtime.vm import VirtualMachine

from bridge.compile import compile_module
from bridge.schedules import winograd
from bridge.targets import resolve

EVICT = np.ones(64 << 18, "float32")  # 64 MiB: more than the L3 cache


def convolution(shape, channels_out: int, rng) -> tvm.IRModule:
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), "float32"))
    w = rng.standard_normal((3, 3, shape[3], channels_out)).astype("float32")
    w /= np.sqrt(9 * shape[3])
    bias = relax.const(rng.standard_normal(channels_out).astype("float32"))
    with builder.function("main", [x], attrs={"num_input": 1}):
        with builder.dataflow():
            y = relax.op.nn.conv2d(
                x, relax.const(w), 1, 1, data_layout="NHWC", kernel_layout="HWIO"
            )
            y = builder.emit(relax.op.nn.relu(relax.op.add(builder.emit(y), bias)))
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    return builder.get()


def build(mod: tvm.IRModule, target, variant: winograd.Variant | None) -> VirtualMachine:
    """Compile with the Winograd choice forced to ``variant`` (None: the direct kernel)."""
    chosen = winograd.choose  # the module's one convolution: force the variant
    winograd.choose = lambda *_: variant
    try:
        return VirtualMachine(compile_module(mod, target), tvm.cpu())
    finally:
        winograd.choose = chosen


def timed(vm: VirtualMachine, x, cold: bool, calls: int = 20) -> float:
    times = []
    for _ in range(calls):
        if cold:
            EVICT.sum()
        start = time.perf_counter()
        vm["main"](x)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("batch", "height", "width", "in_channels", "out_channels"):
        parser.add_argument(name, type=int)
    parser.add_argument("--target", default="native")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.batch, args.height, args.width, args.in_channels)
    mod = convolution(shape, args.out_channels, rng)
    target = resolve(args.target).tvm_target()
    x = tvm.runtime.tensor(rng.standard_normal(shape).astype("float32"))
    direct = None
    for label, variant in (("direct", None), ("F(4,3)", winograd.F4), ("F(2,3)", winograd.F2)):
        vm = build(mod, target, variant)
        out = vm["main"](x).numpy()
        direct = out if direct is None else direct
        error = np.abs(out - direct).max() / np.abs(direct).max()
        warm, cold = timed(vm, x, cold=False), timed(vm, x, cold=True)
        print(f"{label:7s} warm {warm:7.3f} ms  cold {cold:7.3f} ms  error {error:.1e}")


if __name__ == "__main__":
    main()

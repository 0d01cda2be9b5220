"""Costs of AMX instructions on this CPU, one thread: what the AMX schedule's choices rest on.

    python scripts/amx_costs.py [--n 200000]

Each figure is one small TIR loop built for ``sapphirerapids`` and timed once warm:

* ``ldtilecfg``: a register tile's work (4 ``tilezero``, 2 loads, 2 ``tdpbusd``, a store) with
  and without loading the configuration first; and with ``sttilecfg`` plus a compare instead
  (how :func:`bridge.schedules.int8_amx._configures_tiles` skips an unchanged configuration);
* ``tdpbusd`` throughput, alone and with two activation and two weight tile loads per four
  products from small (L1) buffers;
* ``arch_prctl(ARCH_REQ_XCOMP_PERM)``, which every AMX kernel calls once.

Needs a CPU with AMX-INT8 (and Linux); prints nanoseconds per iteration.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tvm
from tvm.script import tirx as T

from bridge.schedules.int8_amx import (
    ARCH_REQ_XCOMP_PERM,
    SYS_ARCH_PRCTL,
    XFEATURE_XTILEDATA,
    _intrin,
    tile_config,
)

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids"})
WORDS = tile_config(16, 64, 2, 2)  # two rows of 16 pixels, 2 sums tiles each, 64-byte steps


def _u8(value: int):
    return T.Cast("uint8", value)


def _kernel(n: int, config: str, products: int, loads: bool):
    """``n`` iterations of: the configuration (``config``: "none", "load" or "check"), then
    ``products`` ``tdpbusd`` (with ``loads``: 2 activation and 2 weight tiles loaded per 4)."""

    @T.prim_func(s_tir=True)
    def kernel(a: T.Buffer((65536,), "uint8"), out: T.Buffer((1024,), "int32")):
        T.func_attr({"global_symbol": "kernel", "tirx.noalias": True})
        cfg = T.alloc_buffer((16,), "int32")
        cur = T.alloc_buffer((16,), "int32")
        cfg[0] = WORDS[0]
        cfg[1] = WORDS[1]
        cfg[2] = WORDS[2]
        cfg[3] = WORDS[3]
        cfg[4] = WORDS[4]
        cfg[5] = WORDS[5]
        cfg[6] = WORDS[6]
        cfg[7] = WORDS[7]
        cfg[8] = WORDS[8]
        cfg[9] = WORDS[9]
        cfg[10] = WORDS[10]
        cfg[11] = WORDS[11]
        cfg[12] = WORDS[12]
        cfg[13] = WORDS[13]
        cfg[14] = WORDS[14]
        cfg[15] = WORDS[15]
        T.evaluate(
            T.call_extern(
                "int64", "syscall", SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
            )
        )
        T.evaluate(_intrin("ldtilecfg", T.address_of(cfg[0])))
        for t in T.unroll(4):
            T.evaluate(_intrin("tilezero", _u8(t)))
        for i in range(n):
            if config == "load":
                T.evaluate(_intrin("ldtilecfg", T.address_of(cfg[0])))
            if config == "check":
                T.evaluate(_intrin("sttilecfg", T.address_of(cur[0])))
                if cur[0] != cfg[0] or cur[4] != cfg[4] or cur[12] != cfg[12]:
                    T.evaluate(_intrin("ldtilecfg", T.address_of(cfg[0])))
            for p in T.unroll(products):
                if loads and p % 4 == 0:
                    for t in T.unroll(4):
                        T.evaluate(
                            _intrin(
                                "tileloadd64",
                                _u8(4 + t),
                                T.address_of(a[(i % 8) * 4096 + t * 1024]),
                                T.int64(64),
                            )
                        )
                T.evaluate(_intrin("tdpbusd", _u8(p % 4), _u8(4 + p % 2), _u8(6 + p // 2 % 2)))
        T.evaluate(_intrin("tilestored64", _u8(0), T.address_of(out[0]), T.int64(64)))

    return kernel


def _syscall_kernel(n: int):
    @T.prim_func(s_tir=True)
    def kernel(out: T.Buffer((16,), "int64")):
        T.func_attr({"global_symbol": "kernel", "tirx.noalias": True})
        for _ in range(n):
            out[0] = out[0] + T.call_extern(
                "int64", "syscall", SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
            )

    return kernel


def _time(func, arrays, n: int) -> float:
    """Nanoseconds per iteration of ``func`` (built, called once to warm up, then timed)."""
    lib = tvm.compile(func, target=TARGET)
    tensors = [tvm.runtime.tensor(a) for a in arrays]
    lib["kernel"](*tensors)
    start = time.perf_counter()
    lib["kernel"](*tensors)
    return (time.perf_counter() - start) * 1e9 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="iterations per loop")
    n = parser.parse_args().n
    buffers = [np.zeros(65536, np.uint8), np.zeros(1024, np.int32)]
    tile = {c: _time(_kernel(n, c, 2, True), buffers, n) for c in ("none", "load", "check")}
    print(f"register tile, configured once:      {tile['none']:6.1f} ns")
    print(f"  ldtilecfg before each:            +{tile['load'] - tile['none']:6.1f} ns")
    print(f"  sttilecfg + compare before each:  +{tile['check'] - tile['none']:6.1f} ns")
    alone = _time(_kernel(n, "none", 4, False), buffers, n) / 4
    loaded = _time(_kernel(n, "none", 4, True), buffers, n) / 4
    print(f"tdpbusd alone:                       {alone:6.2f} ns each")
    print(f"tdpbusd, 4 tile loads per 4 (L1):    {loaded:6.2f} ns each")
    syscall = _time(_syscall_kernel(n), [np.zeros(16, np.int64)], n)
    print(f"arch_prctl(ARCH_REQ_XCOMP_PERM):     {syscall:6.1f} ns")


if __name__ == "__main__":
    main()

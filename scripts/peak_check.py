"""This machine's arithmetic peaks and whether its cores are shared right now.

    python scripts/peak_check.py [--seconds 0.5] [--repeat 3]

Compiles two tiny C loops with the system compiler (the one that links exported libraries):
fp32 FMAs (``vfmadd``) and int8 dot products, each on independent accumulators, and runs each
on one core alone, then on every core at once (one process per core, pinned). With AVX-512
VNNI: zmm FMAs and ``vpdpbusd`` (twenty accumulators); with AVX2 and FMA only: ymm FMAs and
``vpmaddwd`` + ``vpaddd``, the int8 products of bridge's kernels there (ten accumulators: 16
ymm registers). Prints GFLOP/s and GOP/s per core: the ceilings a kernel's GFLOP/s
in ``scripts/kernel_breakdown.py`` or ``scripts/int8_breakdown.py`` can be read against, and,
when the all-cores figure per core falls well below the one-core figure, a warning that the
machine's cores are contended (on a virtual machine: its vCPUs share physical cores with each
other or with a neighbour), so any latency measured meanwhile is unreliable.

x86-64 with AVX-512 VNNI or AVX2 + FMA; elsewhere it says so and exits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CONTENDED = 0.8  # all-cores throughput per core below this share of one core's: contended

SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if KIND < 2
#define ACC 20
#define EACH(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) \
    M(14) M(15) M(16) M(17) M(18) M(19)
#else
#define ACC 10
#define EACH(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9)
#endif
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
    double seconds = atof(argv[1]);
    long steps = 1000;
    double elapsed = 0;
#if KIND == 0
    __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
#define DECLARE(i) __m512 c##i = _mm512_setzero_ps();
#define STEP(i) c##i = _mm512_fmadd_ps(c##i, a, b); __asm__ volatile("" : "+v"(c##i));
#define OPS 32.0 /* 16 lanes x (multiply + add) */
#elif KIND == 1
    __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2);
#define DECLARE(i) __m512i c##i = _mm512_setzero_si512();
#define STEP(i) c##i = _mm512_dpbusd_epi32(c##i, a, b); __asm__ volatile("" : "+v"(c##i));
#define OPS 128.0 /* 64 byte products + 64 adds */
#elif KIND == 2
    __m256 a = _mm256_set1_ps(1.0001f), b = _mm256_set1_ps(0.9999f);
#define DECLARE(i) __m256 c##i = _mm256_setzero_ps();
#define STEP(i) c##i = _mm256_fmadd_ps(c##i, a, b); __asm__ volatile("" : "+v"(c##i));
#define OPS 16.0 /* 8 lanes x (multiply + add) */
#else
    __m256i a = _mm256_set1_epi16(1), b = _mm256_set1_epi16(2);
#define DECLARE(i) __m256i c##i = _mm256_setzero_si256();
#define STEP(i) c##i = _mm256_add_epi32(c##i, _mm256_madd_epi16(a, b)); \
    __asm__ volatile("" : "+v"(c##i));
#define OPS 32.0 /* 16 int16 products + 16 adds */
#endif
    EACH(DECLARE)
    for (;;) {
        double t0 = now();
        for (long s = 0; s < steps; s++) {
            EACH(STEP)
        }
        elapsed = now() - t0;
        if (elapsed >= seconds) break;
        steps *= 2;
    }
    printf("%.1f\n", steps * ACC * OPS / elapsed / 1e9);
    return 0;
}
"""

# name: (KIND, compiler flags), by the instructions the host has
AVX512_KINDS = {
    "fp32 FMA (GFLOP/s)": ("0", ["-mavx512f"]),
    "int8 VNNI (GOP/s)": ("1", ["-mavx512f", "-mavx512vnni"]),
}
AVX2_KINDS = {
    "fp32 FMA (GFLOP/s)": ("2", ["-mavx2", "-mfma"]),
    "int8 vpmaddwd (GOP/s)": ("3", ["-mavx2"]),
}


def _compile(directory: Path, kind: str, flags: list[str]) -> Path:
    source, binary = directory / f"peak{kind}.c", directory / f"peak{kind}"
    source.write_text(SOURCE)
    compiler = shutil.which("cc") or shutil.which("gcc") or "g++"
    subprocess.run(
        [compiler, "-O2", *flags, f"-DKIND={kind}", str(source), "-o", str(binary)], check=True
    )
    return binary


def _run(binary: Path, cores: list[int], seconds: float) -> list[float]:
    """One pinned process per core, all at once; each one's rate."""
    processes = [
        subprocess.Popen(
            ["taskset", "-c", str(core), str(binary), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for core in cores
    ]
    return [float(p.communicate()[0]) for p in processes]


def host_kinds() -> dict[str, tuple[str, list[str]]]:
    """The loops this host can run (AVX-512 VNNI's, else AVX2's); empty off x86 or without
    AVX2 and FMA."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return {}
    if {"avx512f", "avx512_vnni"} <= flags:
        return AVX512_KINDS
    if {"avx2", "fma"} <= flags:
        return AVX2_KINDS
    return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each")
    args = parser.parse_args()
    kinds = host_kinds()
    if not kinds or not shutil.which("taskset"):
        print("needs an x86-64 CPU with AVX-512 VNNI or AVX2 + FMA, and taskset", file=sys.stderr)
        return 1
    cores = sorted(os.sched_getaffinity(0))
    contended = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, flags) in kinds.items():
            binary = _compile(Path(tmp), kind, flags)
            for _ in range(args.repeat):
                alone = _run(binary, cores[:1], args.seconds)[0]
                together = _run(binary, cores, args.seconds)
                share = min(together) / alone
                contended |= share < CONTENDED
                print(
                    f"{name}: one core {alone:.0f}, all {len(cores)} at once "
                    f"{' '.join(f'{v:.0f}' for v in together)} per core ({share:.2f}x)"
                )
    if contended:
        print(f"contended: with every core busy a core ran below {CONTENDED}x of its speed alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())

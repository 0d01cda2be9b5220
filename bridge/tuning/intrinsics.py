"""Load only the CPU tensor intrinsics MetaSchedule needs.

MetaSchedule imports ``tvm.s_tir.tensor_intrin`` whole before tuning, which parses ~250
TVMScript functions for CUDA, ROCm, Metal, Hexagon, RISC-V...: 15-60 s on a small machine, before
the first candidate. For CPU targets only the x86 (VNNI, AVX-512) or Arm (dot product, SVE)
intrinsics can apply; this registers the package with just those (about 1-3 s).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

PACKAGE = "tvm.s_tir.tensor_intrin"


def load_cpu_intrinsics(arch: str) -> None:
    """Register the tensor intrinsics for ``arch`` (``x86_64`` or ``aarch64``), nothing else.
    A no-op when the whole package is already imported."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(PACKAGE)
        package = types.ModuleType(PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = PACKAGE
        sys.modules[PACKAGE] = package
    importlib.import_module(f"{PACKAGE}.{'arm_cpu' if arch == 'aarch64' else 'x86'}")

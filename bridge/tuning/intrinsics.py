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


def int8_dot_intrinsic(lanes: int, group: int, act_dtype: str) -> str | None:
    """The name of a tensor intrinsic for MetaSchedule's auto-tensorization of bridge's packed
    int8 products (:mod:`bridge.schedules.int8`): ``C[i] += sum_k A[k] * B[i, k]`` over
    ``lanes x group`` with C in global scope (MetaSchedule's tiles accumulate in the output
    buffer; bridge's own intrinsics take a register-tile accumulator). Registered on first use;
    None for a shape with no instruction (``vpdpbusd``: 16 x 4 u8 x i8; ``vpmaddwd``: 16 or
    8 x 2)."""
    name = f"bridge_tuning_dot_{lanes}x{group}_{act_dtype}"
    if name in _REGISTERED:
        return name
    if (lanes, group, act_dtype) == (16, 4, "uint8"):
        impl = _vpdpbusd()
    elif group == 2 and lanes in _PMADDWD and act_dtype in ("int8", "uint8"):
        impl = _pmaddwd(lanes, act_dtype)
    else:
        return None
    from tvm import s_tir

    s_tir.TensorIntrin.register(name, _dot_desc(lanes, group, act_dtype), impl, override=True)
    _REGISTERED.add(name)
    return name


def register_int8_dot_intrinsics() -> None:
    """Register every intrinsic :func:`int8_dot_intrinsic` can name: stored records refer to
    them by name, so a database holding tuned int8 kernels loads only once they exist."""
    for lanes, group, act_dtype in _SHAPES:
        int8_dot_intrinsic(lanes, group, act_dtype)


_REGISTERED: set[str] = set()
_SHAPES = [(16, 4, "uint8"), (16, 2, "int8"), (16, 2, "uint8"), (8, 2, "int8"), (8, 2, "uint8")]
_PMADDWD = {16: "llvm.x86.avx512.pmaddw.d.512", 8: "llvm.x86.avx2.pmadd.wd"}


def _dot_desc(lanes: int, group: int, act_dtype: str):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((group,), act_dtype, offset_factor=1),
        B: T.Buffer((lanes, group), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _vpdpbusd():
    """One ``vpdpbusd`` (LLVM 22 declares it on <64 x i8> operands; TVM's own
    ``dot_16x4_vnni`` passes <16 x i32>)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            word = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a = T.reinterpret(T.broadcast(word, 16), dtype="int8x64")
            b = B.vload([0, 0], dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                a,
                b,
                dtype="int32x16",
            )

    return impl


def _pmaddwd(lanes: int, act_dtype: str):
    """Pairs widened to int16, then one ``vpmaddwd`` (exact, unlike ``vpmaddubsw``)."""
    from tvm.script import tirx as T

    wide, llvm = 2 * lanes, _PMADDWD[lanes]

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), act_dtype, offset_factor=1),
        B: T.Buffer((lanes, 2), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            pair = T.reinterpret(T.cast(A.vload([0], act_dtype + "x2"), "int16x2"), dtype="int32")
            a16 = T.reinterpret(T.broadcast(pair, lanes), dtype=f"int16x{wide}")
            b16 = T.cast(B.vload([0, 0], dtype=f"int8x{wide}"), f"int16x{wide}")
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=f"int32x{lanes}") + (
                T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm), a16, b16, dtype=f"int32x{lanes}"
                )
            )

    return impl

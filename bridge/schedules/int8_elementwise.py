"""Table lookups of 8-bit tensors (:func:`bridge.quant.elementwise.lookup`: LOGISTIC, TANH,
swish, GELU, requantizing QUANTIZE...) as byte permutations.

A generic schedule vectorizes the lookup's loop, but no x86 instruction gathers bytes, so LLVM
loads each entry on its own. With AVX-512 VBMI, ``vpermi2b`` picks 64 bytes out of a
128-byte table in one instruction; two of them cover the 256 entries, and each byte's top bit
chooses between their results. The kernel's index is the input's byte (the table of an int8
input is stored rotated by 128), so a 64-byte block of output costs one load, two
permutations, a mask move, a blend and a store. Elements past the last whole block are looked
up one by one.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.script import tirx as T
from tvm.target.codegen import target_has_features
from tvm.tirx.buffer import is_buffer_var

from bridge.quant.elementwise import EIGHT_BIT, LOOKUP, TABLE

LANES = 64  # bytes per zmm register
VPERMI2B = "llvm.x86.avx512.vpermi2var.qi.512"
PARALLEL_BYTES = 16384  # smaller lookups (squeeze-excite gates) run on one thread


def has_vbmi(target: tvm.target.Target) -> bool:
    """The target is x86-64 with AVX-512 VBMI (byte permutes across a zmm register)."""
    if target.kind.name != "llvm":
        return False
    if not str(target.attrs.get("mtriple", "x86_64")).startswith("x86_64"):
        return False
    try:
        return bool(target_has_features("avx512vbmi", target))
    except Exception:  # a target LLVM cannot describe
        return False


def lookup_buffers(func: tirx.PrimFunc) -> tuple[tirx.Buffer, tirx.Buffer, tirx.Buffer] | None:
    """``(x, table, y)`` of a lookup kernel (one block named ``LOOKUP``, static shapes,
    8-bit input and output, a 256-entry table); None for any other kernel."""
    if len(func.params) != 3 or not all(is_buffer_var(p) for p in func.params):
        return None
    x, table, y = func.params
    shapes = [[d for d in b.shape] for b in (x, table, y)]
    if not all(isinstance(d, tirx.IntImm) for shape in shapes for d in shape):
        return None
    if [int(d) for d in table.shape] != [TABLE] or [int(d) for d in x.shape] != [
        int(d) for d in y.shape
    ]:
        return None
    if str(x.dtype) not in EIGHT_BIT or str(y.dtype) != str(table.dtype):
        return None
    if str(y.dtype) not in EIGHT_BIT:
        return None
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # no root block
        return None
    if [sch.get(b).name_hint for b in blocks] != [LOOKUP]:
        return None
    return x, table, y


def vbmi_lookup(shape: tuple[int, ...], index_dtype: str, dtype: str) -> tirx.PrimFunc:
    """The lookup kernel of an input of ``shape`` with ``vpermi2b``: ``y = table[uint8(x)]``,
    64 bytes per step, parallel over the steps from ``PARALLEL_BYTES`` up."""
    size = int(np.prod(shape))
    blocks, tail = divmod(size, LANES)
    steps = T.parallel if size >= PARALLEL_BYTES else T.serial  # a thread launch costs more
    vector = f"{dtype}x{LANES}"
    # a byte's top bit: below zero for int8, from 128 up for uint8
    high = T.int8(0) if index_dtype == "int8" else T.uint8(128)

    def top_half(v):
        bound = T.broadcast(high, LANES)
        return v < bound if index_dtype == "int8" else v >= bound

    @T.prim_func(private=True, s_tir=True)
    def kernel(
        x: T.Buffer(shape, index_dtype), table: T.Buffer((TABLE,), dtype), y: T.Buffer(shape, dtype)
    ):
        T.func_attr({"tirx.noalias": True})
        xf = T.decl_buffer((size,), index_dtype, data=x.data)
        yf = T.decl_buffer((size,), dtype, data=y.data)
        for b in steps(blocks):
            # one expression: a named vector would be a workspace allocation per step
            yf[T.ramp(b * LANES, 1, LANES)] = T.Select(
                top_half(xf[T.ramp(b * LANES, 1, LANES)]),
                T.call_llvm_pure_intrin(
                    vector,
                    VPERMI2B,
                    table[T.ramp(128, 1, LANES)],
                    xf[T.ramp(b * LANES, 1, LANES)],
                    table[T.ramp(192, 1, LANES)],
                ),
                T.call_llvm_pure_intrin(
                    vector,
                    VPERMI2B,
                    table[T.ramp(0, 1, LANES)],
                    xf[T.ramp(b * LANES, 1, LANES)],
                    table[T.ramp(64, 1, LANES)],
                ),
            )
        for i in range(tail):
            yf[blocks * LANES + i] = table[T.Cast("int32", T.Cast("uint8", xf[blocks * LANES + i]))]

    return kernel


class Int8LookupKernels(CPUScheduleRule):
    """Lookup kernels as ``vpermi2b`` permutations on CPUs with AVX-512 VBMI."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not has_vbmi(target):
            return None
        buffers = lookup_buffers(func)
        if buffers is None:
            return None
        x, table, _ = buffers
        shape = tuple(int(d) for d in x.shape)
        kernel = vbmi_lookup(shape, str(x.dtype), str(table.dtype))
        symbol = func.attrs.get("global_symbol") if func.attrs is not None else None
        return s_tir.Schedule(
            kernel if symbol is None else kernel.with_attr("global_symbol", symbol)
        )

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
import tvm_ffi
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


def permuted(table, index: tirx.PrimExpr, index_dtype: str) -> tirx.PrimExpr:
    """``table[uint8(index)]`` for a vector of ``LANES`` bytes: two ``vpermi2b``, one per
    128-byte half of the table, and each byte's top bit choosing between them (below zero
    for int8 indexes, from 128 up for uint8)."""
    vector = f"{table.dtype}x{LANES}"
    if index_dtype == "int8":
        top = index < tirx.Broadcast(tirx.const(0, "int8"), LANES)
    else:
        top = index >= tirx.Broadcast(tirx.const(128, "uint8"), LANES)

    def half(start: int) -> tirx.PrimExpr:
        low, high = (
            tirx.BufferLoad(table, [tirx.Ramp(tirx.const(start + k * LANES, "int32"), 1, LANES)])
            for k in (0, 1)
        )
        return tirx.call_llvm_pure_intrin(vector, VPERMI2B, low, index, high)

    return tirx.Select(top, half(128), half(0))


def vbmi_lookup(shape: tuple[int, ...], index_dtype: str, dtype: str) -> tirx.PrimFunc:
    """The lookup kernel of an input of ``shape`` with ``vpermi2b``: ``y = table[uint8(x)]``,
    64 bytes per step, parallel over the steps from ``PARALLEL_BYTES`` up."""
    size = int(np.prod(shape))
    blocks, tail = divmod(size, LANES)
    steps = T.parallel if size >= PARALLEL_BYTES else T.serial  # a thread launch costs more

    @T.prim_func(private=True, s_tir=True)
    def kernel(
        x: T.Buffer(shape, index_dtype), table: T.Buffer((TABLE,), dtype), y: T.Buffer(shape, dtype)
    ):
        T.func_attr({"tirx.noalias": True})
        xf = T.decl_buffer((size,), index_dtype, data=x.data)
        yf = T.decl_buffer((size,), dtype, data=y.data)
        for b in steps(blocks):
            # one expression: a named vector would be a workspace allocation per step
            yf[T.ramp(b * LANES, 1, LANES)] = permuted(
                table, xf[T.ramp(b * LANES, 1, LANES)], index_dtype
            )
        for i in range(tail):
            yf[blocks * LANES + i] = table[T.Cast("int32", T.Cast("uint8", xf[blocks * LANES + i]))]

    return kernel


def _byte_vector(expr: tirx.PrimExpr) -> str | None:
    """The dtype ("int8" or "uint8") of a vector of ``LANES`` such bytes, else None."""
    dtype = expr.ty.dtype
    if dtype.lanes != LANES or dtype.bits != 8 or dtype.type_code not in (0, 1):  # int, uint
        return None
    return "int8" if dtype.type_code == 0 else "uint8"


def _gathered_index(load) -> tuple[tirx.PrimExpr, str] | None:
    """``(v, dtype)`` when ``load`` gathers ``LANES`` bytes from a 256-entry 8-bit table at
    ``uint8(v)`` (``v`` a vector of bytes), as a vectorized lookup does; else None."""
    table = load.source
    if _byte_vector(load) is None or [int(d) for d in table.shape] != [TABLE]:
        return None
    if len(load.indices) != 1 or not isinstance(load.indices[0], tirx.Cast):
        return None
    inner = load.indices[0].value
    if isinstance(inner, tirx.Cast) and _byte_vector(inner) == "uint8":
        inner = inner.value
    dtype = _byte_vector(inner)
    return None if dtype is None else (inner, dtype)


def _permuted_load(load) -> tirx.PrimExpr:
    matched = _gathered_index(load)
    return load if matched is None else permuted(load.source, *matched)


@tvm.transform.module_pass(opt_level=0, name="bridge.PermuteLookups")
def permute_lookups(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Every vector gather of ``LANES`` bytes from a 256-byte table (a lookup vectorized
    inside a larger kernel) as :func:`permuted` ``vpermi2b`` pairs, in kernels whose target
    has AVX-512 VBMI (a TIR pass after vectorization)."""
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
            continue
        target = func.attrs.get("target")
        if target is None or not has_vbmi(target):
            continue
        new = tvm_ffi.structural_map(func, (tvm.ir.expr.TensorLoad, _permuted_load))
        if not new.same_as(func):
            updates[gv] = new
    for gv, func in updates.items():
        mod[gv] = func
    return mod


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

"""Weights out of ``main`` after the weight transforms, and the activation arena's size.

A model built with ``separate_params`` is compiled exactly as one with bound weights: its
weights are bound as constants, folded (batch norm) and transformed (prepacked, Winograd) at
compile time by :mod:`bridge.schedules.prepack`. Only then, once the module is fused into TIR
kernels, does :func:`lift_constants` turn every constant ``main`` still holds into a parameter
after the inputs. The library then carries no weights and no transform kernels: the weights the
kernels read (already transformed) go to ``model.params``, in parameter order.

:func:`measure_arena` reads the sizes of the storages the VM allocates per call, after TVM's
static memory planning (``StaticPlanBlockMemory``) has made activations share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

MIN_LIFTED_BYTES = 256  # smaller constants (scalars, tiny tables) stay in the library
ALLOC_STORAGE = ("relax.vm.alloc_storage", "relax.memory.alloc_storage")


@dataclass
class BuildRecord:
    """What the pipeline reports back: the lifted weights (in parameter order), the bytes of
    constants left in the library and the per-call storage the VM allocates (None when some
    size is only known at run time)."""

    params: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    # transformed weights: data address -> (source weight's address, how; see prepack_weights)
    derived: dict[int, tuple[int, str]] = field(default_factory=dict)
    constant_bytes: int = 0
    arena_bytes: int | None = None


@relax.expr_functor.mutator
class _Lift(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, names: dict[int, str], derived: dict, lift: bool):
        super().__init__(mod)
        self.names, self.derived, self.lift = names, derived, lift
        self.lifted: list[tuple[relax.Constant, relax.Var, str]] = []
        self.kept_bytes = 0

    def visit_generic_const_(self, const: relax.Constant) -> relax.Expr:
        for seen, var, _ in self.lifted:
            if seen.same_as(const):
                return var
        nbytes = _nbytes(const.value) if _is_tensor(const) else 0
        if not self.lift or nbytes < MIN_LIFTED_BYTES:
            self.kept_bytes += nbytes
            return const
        name = self._name(_address(const)) or f"weight{len(self.lifted):05d}"
        var = relax.Var(name, const.ty)
        self.lifted.append((const, var, name))
        return var

    def _name(self, address: int) -> str | None:
        """The bound weight's name, or ``name (how)`` for a weight transformed from one."""
        if address in self.names:
            return self.names[address]
        if address in self.derived:
            source, how = self.derived[address]
            return f"{self.names[source]} ({how})" if source in self.names else None
        return None


def _is_tensor(const: relax.Constant) -> bool:
    return isinstance(const.value, tvm.runtime.Tensor)


def _nbytes(tensor: tvm.runtime.Tensor) -> int:
    return int(np.prod(tensor.shape, dtype=np.int64)) * tvm.runtime.DataType(tensor.dtype).itemsize


def _address(const: relax.Constant) -> int:
    """The data pointer of a constant: how a folded-through weight is recognized by name."""
    return const.value.data_ptr() if _is_tensor(const) else 0


def weight_names(params: dict[str, tvm.runtime.Tensor]) -> dict[int, str]:
    """The names of bound weights by data address (see :func:`lift_constants`)."""
    return {tensor.data_ptr(): name for name, tensor in params.items()}


def lift_constants(
    record: BuildRecord, names: dict[int, str] | None = None, lift: bool = True
) -> tvm.transform.Pass:
    """The module pass moving ``main``'s constants (of at least ``MIN_LIFTED_BYTES``) to
    parameters after its inputs, appending their values to ``record.params``; ``names`` (from
    :func:`weight_names`) names the ones that are still a model weight as bound. With
    ``lift=False`` it only counts the constants' bytes (``record.constant_bytes``)."""

    @tvm.transform.module_pass(opt_level=0, name="bridge.LiftConstants")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"]
        lifter = _Lift(mod, names or {}, record.derived, lift)
        body = lifter.visit_expr(func.body)
        record.constant_bytes = lifter.kept_bytes
        if not lifter.lifted:
            return mod
        record.params = [const.value.numpy() for const, _, _ in lifter.lifted]
        record.names = [name for _, _, name in lifter.lifted]
        params = list(func.params) + [var for _, var, _ in lifter.lifted]
        lifted = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs)
        mod = mod.clone()
        mod.update_func(mod.get_global_var("main"), lifted)
        return mod

    return _pass


def measure_arena(record: BuildRecord) -> tvm.transform.Pass:
    """The module pass summing the sizes of ``main``'s ``alloc_storage`` calls (activations
    and outputs, after static memory planning) into ``record.arena_bytes``."""

    @tvm.transform.module_pass(opt_level=0, name="bridge.MeasureArena")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        sizes: list[int | None] = []

        def visit(expr: relax.Expr) -> None:
            if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") in ALLOC_STORAGE:
                sizes.append(_static_size(expr.args[0]))

        if "main" in [gv.name_hint for gv in mod.get_global_vars()]:
            relax.analysis.post_order_visit(mod["main"].body, visit)
            record.arena_bytes = None if None in sizes else sum(sizes)
        return mod

    return _pass


def _static_size(shape: relax.Expr) -> int | None:
    if not isinstance(shape, relax.ShapeExpr):
        return None
    total = 1
    for dim in shape.values:
        if not isinstance(dim, tvm.tirx.IntImm):
            return None
        total *= int(dim)
    return total

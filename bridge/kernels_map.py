"""Which model layers each compiled kernel holds, recorded while compiling (for ``bridge profile``).

Translation names every Relax binding of ``main`` after the layer (Keras) or operator (TFLite)
that emitted it (:func:`label_layers`: name hint ``bridge_layer_<i>``, the layers listed in
``main``'s attribute ``bridge_layers``). The names survive legalization and fusion; right after
``FuseOps`` an observer pass (:func:`with_observers`) reads, for every kernel call of ``main`` in
call order, the layers of the bindings fused into it and the FLOPs (TVM's estimate over each
operator's TIR) and bytes (arguments plus result) of the call. Observing changes nothing in the
module, and records only inside :func:`recording`, so kernels and their speed are unchanged.

The result (:func:`kernel_table`) is the artifact metadata's ``"kernels"``: ``{kernel: {"layers":
[...], "flops": int, "bytes": int, "calls": [{"layers", "flops", "bytes"}, ...]}}`` (totals over
one call of the model; ``calls`` in the order the VM makes them) plus ``"layer_order"``: the
layers in model order with their classes, so a profile renders without the compiler.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ATTR = "bridge_layers"  # main's attribute: ["<layer>\t<class>", ...] indexed by the name hints
PREFIX = "bridge_layer_"
UNKNOWN = -1  # the layer index of a call no layer is known for (yet)
_NAME = re.compile(rf"^{PREFIX}(\d+)_\d+$")
_ACTIVE: contextvars.ContextVar[KernelRecord | None] = contextvars.ContextVar(
    "bridge_kernel_record", default=None
)


@dataclass
class Site:
    """One kernel call of ``main``: the layers it computes, with the FLOPs of each."""

    kernel: str
    flops: dict[int, int]  # layer index -> FLOPs, in the order the layers appear in the kernel
    bytes: int


@dataclass
class KernelRecord:
    """What the observer saw: kernel calls in order and the layer list they index."""

    layers: list[tuple[str, str]] = field(default_factory=list)  # (name, class) by index
    sites: list[Site] = field(default_factory=list)
    ops: dict[tuple, int] = field(default_factory=dict)  # operator call -> layer (observe_ops)


@contextlib.contextmanager
def recording() -> Iterator[KernelRecord]:
    """Record the kernels of the modules compiled inside the ``with`` block."""
    record = KernelRecord()
    token = _ACTIVE.set(record)
    try:
        yield record
    finally:
        _ACTIVE.reset(token)


# --- naming bindings after layers ---------------------------------------------------------
def label_layers(mod: Any, calls: Sequence[tuple[str, str, Sequence[Any]]]) -> Any:
    """``mod`` with ``main``'s bindings renamed after the layer that emitted them.

    ``calls``: (layer, class, output expressions) in the order the layers were emitted; a
    layer's bindings are those after the previous layer's up to its last output. An output that
    is an unbound call (TFLite's frontend leaves some) is found by the binding holding it.
    """
    from tvm import relax

    main = mod["main"]
    if not isinstance(main.body, relax.SeqExpr):
        return mod
    bindings = [b for block in main.body.blocks for b in block.bindings]
    by_var = {b.var: i for i, b in enumerate(bindings)}
    by_value = {b.value: i for i, b in enumerate(bindings)}
    names: list[str] = []
    owner: dict[Any, int] = {}
    cursor = 0
    for layer, class_name, outputs in calls:
        found = [p for out in outputs for p in _positions(out, by_var, by_value)]
        end = max(found, default=-1)
        if end < cursor:
            continue  # emitted nothing (Dropout, Identity, an input)
        index = len(names)
        names.append(f"{layer}\t{class_name}")
        for binding in bindings[cursor : end + 1]:
            owner[binding.var] = index
        cursor = end + 1
    if not names:
        return mod
    owner = {var: f"{PREFIX}{index}_{serial}" for serial, (var, index) in enumerate(owner.items())}
    renamed = _Renamer(mod, owner).visit_expr(main)
    renamed = renamed.with_attr(ATTR, names)
    mod = mod.shallow_copy() if hasattr(mod, "shallow_copy") else mod
    mod["main"] = renamed
    return mod


def keep_layers(main: Any) -> dict[str, Any]:
    """``main``'s layer list as attributes to keep when ``main`` is rebuilt (``{}`` if none)."""
    attrs = main.attrs or {}
    return {ATTR: attrs[ATTR]} if ATTR in attrs else {}


def operator_calls(
    source: Any, labels: Sequence[str], results: Sequence[tuple[int, Any]]
) -> list[tuple[str, str, list[Any]]]:
    """:func:`label_layers`' calls for a TFLite model: each translated operator's label
    (``#index tensor``), operator name and result, from ``BridgeConverter.results``."""
    calls = []
    for position, result in results:
        if result is None or position >= len(labels):
            continue
        label = labels[position]
        index = int(label.split()[0][1:])
        calls.append((label, source.ops[index].name, [result]))
    return calls


def _positions(expr: Any, by_var: dict, by_value: dict) -> list[int]:
    from tvm import relax

    if isinstance(expr, relax.Var):
        return [by_var[expr]] if expr in by_var else []
    if isinstance(expr, relax.Tuple):
        return [p for f in expr.fields for p in _positions(f, by_var, by_value)]
    if isinstance(expr, relax.TupleGetItem):
        return _positions(expr.tuple_value, by_var, by_value)
    return [by_value[expr]] if expr in by_value else []


def _renamer_class():
    from tvm import relax

    @relax.expr_functor.mutator
    class Renamer(relax.PyExprMutator):
        """Gives the bound variables in ``owner`` the name of their layer."""

        def __init__(self, mod, owner):
            super().__init__(mod)
            self.owner = owner

        def visit_dataflow_var_def_(self, var):
            name = self.owner.get(var)
            return var if name is None else relax.DataflowVar(name, var.ty)

        def visit_var_def_(self, var):
            name = self.owner.get(var)
            return var if name is None else relax.Var(name, var.ty)

    return Renamer


def _Renamer(mod, owner):  # a class made on first use (TVM is imported lazily)
    return _renamer_class()(mod, owner)


# --- observing the fused module -----------------------------------------------------------
def with_observers(passes: list) -> list:
    """``passes`` with the observers inserted around ``FuseOps`` (unchanged without one)."""
    for position, item in enumerate(passes):
        if item.info.name == "FuseOps":
            before, after = passes[:position], passes[position + 1 :]
            return [*before, _observer(observe_ops), item, _observer(observe_module), *after]
    return passes


def _observer(observe):
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="BridgeObserveKernels")
    def observe_pass(mod, _ctx):
        record = _ACTIVE.get()
        if record is not None:
            try:
                observe(mod, record)
            except Exception:  # never fail a build for its profile's metadata
                record.sites.clear()
        return mod

    return observe_pass


def observe_ops(mod: Any, record: KernelRecord) -> None:
    """Before fusion: which layer each operator call of ``main`` belongs to, keyed by the
    operator and the named variables it reads (what identifies the call inside a fused
    kernel, where its own variable is renamed when it is the kernel's result)."""
    from tvm import relax

    main = mod["main"]
    if not isinstance(main.body, relax.SeqExpr):
        return
    for block in main.body.blocks:
        for binding in block.bindings:
            layer, key = _layer_of(binding.var), _op_key(binding.value)
            if layer is not None and key is not None:
                record.ops[key] = layer


def _op_key(value: Any) -> tuple | None:
    """(operator PrimFunc, the names of the labelled variables it reads) of a call_tir."""
    import tvm
    from tvm import relax

    if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir")):
        return None
    args = value.args[1].fields if isinstance(value.args[1], relax.Tuple) else [value.args[1]]
    named = frozenset(
        str(a.name) for a in args if isinstance(a, relax.Var) and _layer_of(a) is not None
    )
    return (value.args[0].name_hint, named)


def observe_module(mod: Any, record: KernelRecord) -> None:
    """Append to ``record`` every kernel call of ``mod``'s ``main`` (after FuseOps)."""
    from tvm import relax

    main = mod["main"]
    names = [str(n) for n in (main.attrs or {}).get(ATTR, [])] if main.attrs else []
    record.layers = [tuple(n.split("\t", 1)) for n in names]  # type: ignore[misc]
    if not isinstance(main.body, relax.SeqExpr):
        return
    bindings = [b for block in main.body.blocks for b in block.bindings]
    sites = [site for site in (_site(mod, b, record.ops) for b in bindings) if site is not None]
    known = [next(iter(s.flops)) for s in sites if UNKNOWN not in s.flops]
    # a call of no layer (a winograd transform a pass added) belongs to the next call's first
    # layer, or the last one's at the end
    following = known[-1] if known else None
    for site in reversed(sites):
        if UNKNOWN in site.flops:
            if following is not None:
                site.flops = {following: site.flops[UNKNOWN]}
        else:
            following = next(iter(site.flops))
    record.sites.extend(sites)


def _site(mod: Any, binding: Any, ops: dict[tuple, int]) -> Site | None:
    """The kernel a binding of ``main`` calls, or None when it calls none."""
    import tvm
    from tvm import relax

    value = binding.value
    if not isinstance(value, relax.Call):
        return None
    layer = _layer_of(binding.var)
    if value.op == tvm.ir.Op.get("relax.call_tir"):
        callee, args = value.args[0], list(value.args[1].fields)
        func = mod[callee]
        flops = {UNKNOWN if layer is None else layer: _flops(func)}
        return Site(callee.name_hint, flops, _bytes(args, binding.var))
    if isinstance(value.op, relax.GlobalVar):
        func = mod[value.op]
        if not isinstance(func, relax.Function):
            return None
        flops: dict[int, int] = {}
        for inner in (b for block in func.body.blocks for b in block.bindings):
            inner_layer = _layer_of(inner.var)
            call = inner.value
            if not (isinstance(call, relax.Call) and call.op == tvm.ir.Op.get("relax.call_tir")):
                continue
            if inner_layer is None:  # the kernel's result: known by what it reads
                inner_layer = ops.get(_op_key(call), UNKNOWN if layer is None else layer)
            flops[inner_layer] = flops.get(inner_layer, 0) + _flops(mod[call.args[0]])
        if UNKNOWN in flops and len(flops) > 1:  # unnamed pieces: the first named layer's
            first = next(k for k in flops if k != UNKNOWN)
            flops[first] += flops.pop(UNKNOWN)
        return Site(
            value.op.name_hint, flops or {UNKNOWN: 0}, _bytes(list(value.args), binding.var)
        )
    return None


def _layer_of(var: Any) -> int | None:
    match = _NAME.match(str(var.name))
    return int(match.group(1)) if match else None


def _flops(func: Any) -> int:
    """TVM's FLOP estimate of one operator's TIR (0 where it cannot tell)."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return int(estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:  # e.g. a loop with a symbolic extent
        return 0


def _bytes(args: Sequence[Any], result: Any) -> int:
    """Bytes a call reads and writes: its tensor arguments plus its result (static shapes)."""
    from tvm import relax

    total = 0
    for expr in [*args, result]:
        ty = getattr(expr, "ty", None)
        types = list(ty.fields) if isinstance(ty, relax.TupleType) else [ty]
        for item in types:
            total += _tensor_bytes(item)
    return total


def _tensor_bytes(ty: Any) -> int:
    from tvm import relax

    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return 0
    try:
        dims = [int(d) for d in ty.shape.values]
    except (TypeError, AttributeError):  # a symbolic dimension
        return 0
    bits = np.dtype(str(ty.dtype)).itemsize * 8 if str(ty.dtype) != "bool" else 8
    return int(np.prod(dims, dtype=np.int64)) * bits // 8


# --- the metadata -------------------------------------------------------------------------
def kernel_table(record: KernelRecord) -> dict[str, dict[str, Any]]:
    """The metadata's ``"kernels"``: per kernel, its layers, FLOPs and bytes (totals over one
    call of the model) and its calls in VM order."""
    names = [name for name, _ in record.layers]
    table: dict[str, dict[str, Any]] = {}
    for site in record.sites:
        entry = table.setdefault(site.kernel, {"layers": [], "flops": 0, "bytes": 0, "calls": []})
        layers = [names[i] for i in site.flops if 0 <= i < len(names)]
        entry["layers"] += [n for n in layers if n not in entry["layers"]]
        entry["flops"] += sum(site.flops.values())
        entry["bytes"] += site.bytes
        entry["calls"].append(
            {
                "layers": layers,
                "flops": [int(site.flops[i]) for i in site.flops if 0 <= i < len(names)],
                "bytes": site.bytes,
            }
        )
    return table


def layer_order(record: KernelRecord) -> list[dict[str, str]]:
    """The metadata's ``"layer_order"``: every layer that emitted code, in model order."""
    return [{"layer": name, "class": cls} for name, cls in record.layers]


def kernel_metadata(record: KernelRecord) -> dict[str, Any]:
    """``{"kernels": ..., "layer_order": ...}`` for the artifact metadata (empty tables for a
    target whose pipeline bridge does not own)."""
    return {"kernels": kernel_table(record), "layer_order": layer_order(record)}

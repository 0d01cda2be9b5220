"""Which model layers each compiled kernel holds, recorded while compiling (for ``bridge profile``).

Translation names every Relax binding of ``main`` after the layer (Keras) or operator (TFLite)
that emitted it (:func:`label_layers`: name hint ``bridge_layer_<i>_<n>``, the layers listed in
``main``'s attribute ``bridge_layers``). The names survive binding the weights and legalization.
Two observer passes (:func:`with_observers`) bracket ``FuseOps``: before it, every operator call
is recorded with its layer, keyed by the operator and the values it reads; after it, each call
of ``main`` is replayed operator by operator on those values, which finds the layers of every
operator fused into it even when FuseOps named the result anew or shares one kernel among
identical groups (MobileNet's repeated blocks). FLOPs are TVM's estimate over each operator's
TIR; bytes, the call's arguments plus its result. Observing changes nothing in the module and
records only inside :func:`recording`, so kernels and their speed are unchanged.

The result (:func:`kernel_metadata`) is the artifact metadata's ``"kernels"``: ``{kernel:
{"layers": [...], "flops": int, "bytes": int, "calls": [{"layers", "flops", "bytes"}, ...]}}``
(totals over one call of the model; ``calls`` in the order the VM makes them, ``flops`` per
layer) plus ``"layer_order"``: the layers in model order with their classes, so a profile
renders without the compiler.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
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
    # operator calls before fusion (observe_ops): key -> [(variable, layer), ...] in model
    # order (one operator on the same values may be called by several layers), and by loose key
    ops: dict[tuple, list] = field(default_factory=dict)
    loose: dict[tuple, list] = field(default_factory=dict)


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
    """Where in ``main``'s bindings an output is bound; a dataclass holding expressions (the
    int8 walk's QValue: float and integer forms) at its fields' positions."""
    from tvm import relax

    if dataclasses.is_dataclass(expr) and not isinstance(expr, type):
        fields = [getattr(expr, f.name) for f in dataclasses.fields(expr)]
        return [p for value in fields for p in _positions(value, by_var, by_value)]
    if not isinstance(expr, relax.Expr):
        return []
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
                if os.environ.get("BRIDGE_TRACEBACK") == "1":
                    raise
                record.sites.clear()
        return mod

    return observe_pass


def observe_ops(mod: Any, record: KernelRecord) -> None:
    """Before fusion: every operator call of ``main`` with its variable and layer, keyed by the
    operator and what it reads (variables and constants, which FuseOps passes on unchanged).
    FuseOps names a fused kernel's result anew and shares one kernel among identical groups,
    so after it the calls are found again by these keys, not by names."""
    record.ops, record.loose = {}, {}
    for binding in _bindings(mod["main"]):
        key = _call_key(binding.value, {})
        if key is not None:
            entry = (binding.var, _layer_of(binding.var))
            record.ops.setdefault(key, []).append(entry)
            record.loose.setdefault(_loose(key), []).append(entry)


def _bindings(func: Any) -> list:
    from tvm import relax

    if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
        return []
    return [b for block in func.body.blocks for b in block.bindings]


def _is_call_tir(value: Any) -> bool:
    import tvm
    from tvm import relax

    return isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir")


def _call_key(value: Any, env: dict) -> tuple | None:
    """(operator, its arguments as the values before fusion) of a call_tir, else None."""
    from tvm import relax

    if not _is_call_tir(value):
        return None
    args = value.args[1].fields if isinstance(value.args[1], relax.Tuple) else [value.args[1]]
    return (value.args[0].name_hint, tuple(_arg_key(env.get(a, a)) for a in args))


def _arg_key(value: Any) -> Any:
    from tvm import relax
    from tvm.ir.expr import Constant

    if isinstance(value, (relax.Var, Constant)):
        return value
    return ("expr", str(value))


def _loose(key: tuple) -> tuple:
    """``key`` with constants by type only (a kernel shared by identical groups holds the
    first group's inline constants)."""
    from tvm.ir.expr import Constant

    op, args = key
    return (op, tuple(("const", str(a.ty)) if isinstance(a, Constant) else a for a in args))


def observe_module(mod: Any, record: KernelRecord) -> None:
    """After fusion: append to ``record`` every kernel call of ``main``, in order, with the
    layers of the operators it computes (found by replaying each call's operators on the
    values before fusion)."""
    main = mod["main"]
    names = [str(n) for n in (main.attrs or {}).get(ATTR, [])] if main.attrs else []
    record.layers = [tuple(n.split("\t", 1)) for n in names]  # type: ignore[misc]
    env: dict = {}  # variable after fusion -> what it was before (a variable, or a tuple)
    used: set = set()
    flops_of: dict[str, int] = {}
    sites = []
    for binding in _bindings(main):
        site = _site(mod, binding, env, record, used, flops_of)
        if site is not None:
            sites.append(site)
    # a call of no layer (a winograd transform a pass added) belongs to the next call's first
    # layer, or the last one's at the end
    known = [next(iter(s.flops)) for s in sites if UNKNOWN not in s.flops]
    following = known[-1] if known else None
    for site in reversed(sites):
        if UNKNOWN in site.flops:
            if following is not None:
                site.flops = {following: sum(site.flops.values())}
        else:
            following = next(iter(site.flops))
    record.sites.extend(sites)


def _site(
    mod: Any, binding: Any, env: dict, record: KernelRecord, used: set, flops_of: dict
) -> Site | None:
    """The kernel call a binding of ``main`` makes (None when it calls none); ``env`` learns
    what the binding's variable was before fusion."""
    from tvm import relax

    value = binding.value
    if isinstance(value, relax.Var):
        env[binding.var] = env.get(value, value)
        return None
    if isinstance(value, relax.TupleGetItem):
        held = env.get(value.tuple_value)
        if isinstance(held, tuple) and value.index < len(held):
            env[binding.var] = held[value.index]
        return None
    if not isinstance(value, relax.Call):
        return None
    if _is_call_tir(value):
        flops: dict[int, int] = {}
        _replay(mod, value, binding.var, env, record, used, flops, flops_of)
        args = value.args[1].fields if isinstance(value.args[1], relax.Tuple) else [value.args[1]]
        return Site(value.args[0].name_hint, flops, _bytes(list(args), binding.var))
    func = mod[value.op] if isinstance(value.op, relax.GlobalVar) else None
    if not isinstance(func, relax.Function):
        return None
    local = {p: env.get(a, a) for p, a in zip(func.params, value.args)}
    flops = {}
    for inner in _bindings(func):
        if _is_call_tir(inner.value):
            _replay(mod, inner.value, inner.var, local, record, used, flops, flops_of)
        elif isinstance(inner.value, relax.Tuple):
            local[inner.var] = tuple(local.get(f, f) for f in inner.value.fields)
        elif isinstance(inner.value, relax.Var):
            local[inner.var] = local.get(inner.value, inner.value)
    out = func.body.body
    if isinstance(out, relax.Tuple):
        env[binding.var] = tuple(local.get(f, f) for f in out.fields)
    else:
        env[binding.var] = local.get(out, out)
    if UNKNOWN in flops and len(flops) > 1:  # unnamed pieces: the first named layer's
        first = next(k for k in flops if k != UNKNOWN)
        flops[first] += flops.pop(UNKNOWN)
    return Site(value.op.name_hint, flops or {UNKNOWN: 0}, _bytes(list(value.args), binding.var))


def _replay(
    mod: Any,
    call: Any,
    var: Any,
    env: dict,
    record: KernelRecord,
    used: set,
    flops: dict,
    flops_of: dict,
) -> None:
    """One operator call: find it before fusion, note its variable and add its FLOPs to its
    layer's (UNKNOWN when it is not found or was not named after a layer)."""
    key = _call_key(call, env)
    found = next((e for e in record.ops.get(key, []) if id(e) not in used), None)
    if found is None:
        candidates = [e for e in record.loose.get(_loose(key), []) if id(e) not in used]
        found = candidates[0] if candidates else None
    layer = UNKNOWN
    if found is not None:
        used.add(id(found))
        env[var] = found[0]
        layer = UNKNOWN if found[1] is None else found[1]
    name = call.args[0].name_hint
    if name not in flops_of:
        flops_of[name] = _flops(mod[call.args[0]])
    flops[layer] = flops.get(layer, 0) + flops_of[name]


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
    """A tensor's size; a symbolic dimension (a dynamic batch) counts 1, as TVM's FLOP estimate
    counts a loop of symbolic extent once: both are per sample then."""
    import tvm
    from tvm import relax

    if not isinstance(ty, relax.TensorType) or getattr(ty, "shape", None) is None:
        return 0
    try:
        values = ty.shape.values
    except AttributeError:  # a shape known only at run time
        return 0
    dims = [int(d) if isinstance(d, tvm.tirx.IntImm) else 1 for d in values]
    try:
        itemsize = np.dtype(str(ty.dtype)).itemsize
    except TypeError:  # a dtype numpy does not know (bfloat16, int4)
        itemsize = max(1, tvm.runtime.DataType(str(ty.dtype)).bits // 8)
    return int(np.prod(dims, dtype=np.int64)) * itemsize


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

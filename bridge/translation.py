"""What translating a model gives, whatever its source (Keras or TFLite), and the helpers both
translators share: tensor signatures, picking outputs by name, one-line error reasons.

No TVM at import: Relax objects are only touched inside the functions that receive them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.errors import InputError, Problem, UnsupportedModelError
from bridge.signature import TensorInfo

if TYPE_CHECKING:
    import numpy as np
    import tvm

T = TypeVar("T")
# One dimension of ``input_shapes=``: a size, a symbol's name (a dimension kept symbolic), or
# None (as the model declares it; the batch: ``batch_size``'s).
Dim = int | str | None
InputShapes = Mapping[str, Sequence[Dim]] | Sequence[Dim] | Sequence[Sequence[Dim]] | None
BATCH_SYMBOL = "batch"  # the symbolic batch of batch_size=None
MAX_DIM = 2**31  # largest size of one dimension of an input


@dataclass
class Translation:
    """A translated model: ``mod``'s ``main`` takes the inputs then every weight in ``params``
    (attribute ``num_input`` counts the inputs)."""

    mod: tvm.IRModule
    params: dict[str, np.ndarray]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    layer_count: int
    layer_shapes: dict[str, list[tuple[int, ...]]]


def tensor_info(name: str, value: Any) -> TensorInfo:
    """A signature entry from a Relax expression, variable or tensor type (unknown dims None;
    a dimension that is one symbol keeps its name in ``symbols``)."""
    import tvm
    from tvm import relax

    ty = value if isinstance(value, relax.TensorType) else value.ty
    dims = ty.shape.values
    shape = tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in dims)
    symbols = tuple(str(d.name) if isinstance(d, tvm.tirx.Var) else None for d in dims)
    return TensorInfo(name, shape, str(ty.dtype), symbols if any(symbols) else ())


# --- input_shapes= ------------------------------------------------------------------------------


def _is_dim(value: Any) -> bool:
    return value is None or (isinstance(value, (int, str)) and not isinstance(value, bool))


def _dim_problem(value: Any) -> str | None:
    """Why ``value`` is not a dimension of ``input_shapes`` (None if it is one)."""
    if not _is_dim(value):
        return f"{value!r} is not a size, a symbol's name or None"
    if isinstance(value, int) and not 0 <= value < MAX_DIM:
        return f"size {value} is outside 0..{MAX_DIM - 1}"
    if isinstance(value, str) and not value.isidentifier():
        return f"symbol {value!r} is not a name (letters, digits, _)"
    return None


def requested_shapes(
    input_shapes: InputShapes, names: Sequence[str], label: str
) -> dict[str, tuple[Dim, ...]]:
    """``input_shapes=`` by input name: a dict by name, one shape (a model with one input) or
    a list of shapes by position. Raises InputError for unknown names, wrong counts and values
    that are not dimensions."""
    if input_shapes is None:
        return {}
    if isinstance(input_shapes, Mapping):
        unknown = [k for k in input_shapes if k not in names]
        if unknown:
            raise InputError(
                f"{label}: input_shapes names no input {unknown!r}; the model's inputs are "
                f"{list(names)}"
            )
        given = dict(input_shapes)
    elif isinstance(input_shapes, Sequence) and not isinstance(input_shapes, str):
        if all(_is_dim(d) for d in input_shapes):  # one shape
            if len(names) != 1:
                raise InputError(
                    f"{label}: one shape given as input_shapes, the model has {len(names)} "
                    f"inputs {list(names)}: give a dict by input name"
                )
            given = {names[0]: input_shapes}
        elif len(input_shapes) != len(names):
            raise InputError(
                f"{label}: input_shapes gives {len(input_shapes)} shapes, the model has "
                f"{len(names)} inputs {list(names)}"
            )
        else:
            given = dict(zip(names, input_shapes))
    else:
        raise InputError(f"{label}: input_shapes must be a dict by input name or a shape")
    shapes = {}
    for name, shape in given.items():
        if isinstance(shape, str) or not isinstance(shape, Sequence):
            raise InputError(f"{label}: input_shapes[{name!r}] = {shape!r} is not a shape")
        problem = next((p for p in map(_dim_problem, shape) if p), None)
        if problem:
            raise InputError(f"{label}: input_shapes[{name!r}]: {problem}")
        shapes[name] = tuple(shape)
    return shapes


def resolve_shape(
    name: str,
    declared: Sequence[int | None],
    requested: Sequence[Dim] | None,
    batch_size: int | None,
    label: str,
    batched: bool = True,
) -> list[Dim]:
    """An input's shape: the declared one with ``requested``'s sizes and symbols in its unknown
    dimensions; a declared unknown first dimension (``batched``) is ``batch_size`` (the symbol
    ``batch`` when None). Returns sizes, symbols' names, and None where nothing fixed a
    dimension. Raises InputError where ``requested`` disagrees with the model or with
    ``batch_size``."""
    dims: list[Dim] = list(declared)
    where = f"{label}: input {name!r}"
    if requested is not None:
        if len(requested) != len(declared):
            raise InputError(
                f"{where} has rank {len(declared)} {_shape_text(declared)}, input_shapes gives "
                f"rank {len(requested)} {_shape_text(requested)}"
            )
        for axis, (have, want) in enumerate(zip(declared, requested)):
            if want is None:
                continue
            if have is not None and want != have:
                raise InputError(
                    f"{where}: dimension {axis} is {have} in the model "
                    f"{_shape_text(declared)}, input_shapes gives {want!r}"
                )
            dims[axis] = want
    if batched and declared and declared[0] is None:
        dims[0] = _batch_dim(where, requested[0] if requested else None, batch_size)
    return dims


def _batch_dim(where: str, requested: Dim, batch_size: int | None) -> Dim:
    """The batch: ``batch_size`` decides; ``input_shapes`` may repeat it (or name the symbol
    of a symbolic batch) but not contradict it."""
    if batch_size is None:
        if isinstance(requested, int):
            raise InputError(
                f"{where}: input_shapes gives batch {requested}, batch_size=None keeps the batch "
                f"symbolic: pass batch_size={requested} (the batch is batch_size's)"
            )
        return requested or BATCH_SYMBOL
    if requested is not None and requested != batch_size:
        raise InputError(
            f"{where}: input_shapes gives batch {requested!r}, batch_size is {batch_size}: "
            f"they must agree (the batch is batch_size's; None for a symbolic batch)"
        )
    return batch_size


def _shape_text(shape: Sequence[Dim]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def unknown_dims_reason(name: str, shape: Sequence[Dim]) -> str | None:
    """Why an input with dimensions still unknown cannot be compiled, with what fixes it."""
    if not any(d is None for d in shape[1:]):
        return None
    batch = shape[0] if isinstance(shape[0], int) else None
    fixed = (batch, *(d if d is not None else 50 for d in shape[1:]))
    symbolic = (batch, *(d if d is not None else "T" for d in shape[1:]))
    return (
        f"input shape {_shape_text(shape)} has unknown dimensions besides the batch: fix them "
        f"with input_shapes={{{name!r}: {fixed}}}, or keep them symbolic (one build runs "
        f"every size) with input_shapes={{{name!r}: {symbolic}}}"
    )


def dim_text(dim: Any) -> str:
    """A dimension as text: ``3``, ``T``, ``T * 4``, ``(T - 2) // 2 + 1``."""
    import tvm
    from tvm import tirx

    ops = {
        tirx.Add: "+",
        tirx.Sub: "-",
        tirx.Mul: "*",
        tirx.FloorDiv: "//",
        tirx.FloorMod: "%",
    }
    if isinstance(dim, int):
        return str(dim)
    if isinstance(dim, tvm.tirx.IntImm):
        return str(int(dim.value))
    if isinstance(dim, tvm.tirx.Var):
        return str(dim.name)
    for kind, symbol in ops.items():
        if isinstance(dim, kind):
            left, right = dim_text(dim.a), dim_text(dim.b)
            if symbol in ("*", "//", "%"):
                left = f"({left})" if isinstance(dim.a, (tirx.Add, tirx.Sub)) else left
                right = f"({right})" if not isinstance(dim.b, (tirx.IntImm, tirx.Var)) else right
            return f"{left} {symbol} {right}"
    if isinstance(dim, (tirx.Min, tirx.Max)):
        return f"{type(dim).__name__.lower()}({dim_text(dim.a)}, {dim_text(dim.b)})"
    return str(dim)


def relax_dims(dims: Sequence[Dim], symbols: dict[str, Any]) -> list[Any]:
    """Sizes as ints and symbols as TIR variables, one per name (shared by every input that
    names it, kept in ``symbols``)."""
    import tvm

    out = []
    for d in dims:
        if isinstance(d, str):
            d = symbols.setdefault(d, tvm.tirx.Var(d, "int64"))
        out.append(d)
    return out


def error_reason(exc: BaseException) -> str:
    """The line of an exception's message that says what went wrong: its last non-empty line
    (TVM's errors start with a traceback and end with the check that failed)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def pick_outputs(
    available: Mapping[str, Sequence[T]], wanted: Sequence[str], label: str, what: str
) -> list[tuple[str, T]]:
    """``outputs=``: the named values in order, as (name, value); a name with several values
    gives ``name``, ``name:1``, ... Raises UnsupportedModelError naming every unknown name."""
    missing = [name for name in wanted if name not in available]
    if missing:
        problems = [Problem(name, "outputs", f"no {what} of that name") for name in missing]
        raise UnsupportedModelError(label, problems)
    return [
        (name if i == 0 else f"{name}:{i}", value)
        for name in wanted
        for i, value in enumerate(available[name])
    ]

"""What translating a model gives, whatever its source (Keras or TFLite), and the helpers both
translators share: tensor signatures, picking outputs by name, one-line error reasons.

No TVM at import: Relax objects are only touched inside the functions that receive them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.errors import Problem, UnsupportedModelError
from bridge.signature import TensorInfo

if TYPE_CHECKING:
    import numpy as np
    import tvm

T = TypeVar("T")


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
    """A signature entry from a Relax expression, variable or tensor type (unknown dims None)."""
    import tvm
    from tvm import relax

    ty = value if isinstance(value, relax.TensorType) else value.ty
    dims = ty.shape.values
    shape = tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in dims)
    return TensorInfo(name, shape, str(ty.dtype))


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

"""Input/output descriptions shared by compiled and loaded models (no TVM import here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (None for a symbolic dimension) and dtype of a model input or output;
    ``symbols`` names each dimension that is one symbol (``input_shapes={"x": (1, "T")}``:
    ``(None, "T")``, the symbolic batch ``"batch"``), empty when no dimension is."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    symbols: tuple[str | None, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self) | {"shape": list(self.shape), "symbols": list(self.symbols)}
        return data if self.symbols else {k: v for k, v in data.items() if k != "symbols"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorInfo:
        symbols = tuple(data.get("symbols") or ())
        return cls(data["name"], tuple(data["shape"]), data["dtype"], symbols)

    def symbol(self, axis: int) -> str | None:
        """The symbol's name of dimension ``axis``, or None (a size, or an expression)."""
        return self.symbols[axis] if axis < len(self.symbols) else None

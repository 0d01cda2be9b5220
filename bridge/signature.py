"""Input/output descriptions shared by compiled and loaded models (no TVM import here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (None for a symbolic dimension) and dtype of a model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorInfo:
        return cls(data["name"], tuple(data["shape"]), data["dtype"])

"""What a converter sees: the layer's config, its weights, and helpers to emit Relax."""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax

from bridge.errors import Problem
from bridge.keras.graph import Call, Layer


def static_shape(expr: relax.Expr) -> tuple:
    """The shape of a Relax tensor value: ints, and a symbolic expression for a dynamic batch."""
    return tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else d for d in expr.ty.shape.values)


def _symbolic(dim: object) -> bool:
    return isinstance(dim, tvm.tirx.Expr) and not isinstance(dim, tvm.tirx.IntImm)


def symbolic_weight_reason(name: str, shape: tuple) -> str:
    """Why a layer whose weight's shape would depend on a symbolic input dimension (a Dense
    after a Flatten of a symbolic length) cannot be translated."""
    from bridge.translation import dim_text

    text = ", ".join(dim_text(d) for d in shape)
    return (
        f"needs a static size: weight '{name}' would have the shape ({text}), which depends on "
        f"a symbolic input dimension; give that dimension a size in input_shapes"
    )


def dtype_of(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


class LayerContext:
    """Per-call context handed to a converter function ``fn(ctx, inputs)``."""

    def __init__(
        self,
        bb: relax.BlockBuilder,
        layer: Layer,
        path: str,
        call: Call,
        weight_names: list[str],
        weight_vars: list[relax.Var],
        keras_major: int,
        problems: list[Problem],
        tensor_kwargs: dict[str, list[relax.Expr]] | None = None,
        masks: list[relax.Expr | None] | None = None,
        kwarg_masks: dict[str, list[relax.Expr | None]] | None = None,
        explicit_masks: bool = False,
        device: str = "cpu",
    ):
        self.bb = bb
        self.layer = layer
        self.path = path
        self.call = call
        self.keras_major = keras_major
        self._weights = dict(zip(weight_names, weight_vars))
        self._problems = problems
        self._tensor_kwargs = tensor_kwargs or {}
        self._read: set[str] = set()
        self._masks = list(masks or [])
        self._kwarg_masks = kwarg_masks or {}
        # whether the masks were passed to the call as ``mask=`` (not propagated from inputs)
        self.explicit_masks = explicit_masks
        self.device = device  # what the module is compiled for: "cpu" or "cuda"
        self.output_masks: list[relax.Expr | None] | None = None

    # --- config -----------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return self.layer.config

    @property
    def name(self) -> str:
        return self.path

    def get(self, key: str, default: Any = None) -> Any:
        value = self.layer.config.get(key, default)
        return default if value is None else value

    # --- the call ---------------------------------------------------------------------------
    def call_arg(self, key: str, default: Any = None) -> Any:
        """A non-tensor kwarg of the call (``use_causal_mask``, ``training``, ...)."""
        value = self.call.kwargs.get(key, default)
        return default if value is None or key in self._tensor_kwargs else value

    def call_tensor(self, key: str) -> relax.Expr | None:
        """A tensor passed to the call as keyword ``key`` (e.g. ``value``, ``key``, ``mask``)."""
        tensors = self.call_tensors(key)
        return tensors[0] if tensors else None

    def call_tensors(self, key: str) -> list[relax.Expr]:
        """Every tensor of keyword ``key`` (a list-valued kwarg such as ``initial_state``)."""
        self._read.add(key)
        return list(self._tensor_kwargs.get(key, []))

    def unread_tensor_kwargs(self) -> list[str]:
        """Tensor kwargs of the call that the converter never asked for (so it ignored them)."""
        return [key for key in self._tensor_kwargs if key not in self._read]

    # --- masks (see Converter.masks) ---------------------------------------------------------
    def mask(self, index: int = 0) -> relax.Expr | None:
        """The Keras mask of positional input ``index`` (boolean, e.g. ``(batch, steps)``)."""
        return self._masks[index] if index < len(self._masks) else None

    def call_tensor_masks(self, key: str) -> list[relax.Expr | None]:
        """The masks of the tensors passed as keyword ``key``."""
        return list(self._kwarg_masks.get(key, []))

    def set_masks(self, masks: list[relax.Expr | None]) -> None:
        """The masks of the layer's outputs, in output order (a converter with ``masks="custom"``;
        outputs past the list's end get none)."""
        self.output_masks = list(masks)

    # --- emitting ---------------------------------------------------------------------------
    def emit(self, expr: relax.Expr) -> relax.Var:
        return self.bb.emit(expr)

    @staticmethod
    def shape(expr: relax.Expr) -> tuple[int, ...]:
        """Static shape of an emitted value."""
        return static_shape(expr)

    @staticmethod
    def const(value: Any, dtype: str = "float32") -> relax.Constant:
        return relax.const(np.asarray(value, dtype=dtype), dtype)

    def wrapped(self, layer: Layer) -> LayerContext:
        """A context for a layer wrapped by this one (TimeDistributed), sharing its weights."""
        return LayerContext(
            self.bb,
            layer,
            self.path,
            Call(self.call.inputs),
            list(self._weights),
            list(self._weights.values()),
            self.keras_major,
            self._problems,
            device=self.device,
        )

    # --- weights ----------------------------------------------------------------------------
    def has_weight(self, name: str) -> bool:
        return name in self._weights

    def weight(self, name: str, shape: tuple[int, ...] | None = None) -> relax.Expr:
        """The named weight; if its stored shape differs from ``shape``, a problem is recorded
        (raised after translation, with every other one) and zeros stand in."""
        var = self._weights[name]
        if shape is not None:
            if any(_symbolic(d) for d in shape):
                raise ValueError(symbolic_weight_reason(name, shape))
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise ValueError(f"the config gives weight '{name}' the shape {list(shape)}")
            got = self.shape(var)
            if got != tuple(shape):
                self._problems.append(
                    Problem(
                        self.path,
                        self.layer.class_name,
                        f"weight '{name}' has shape {list(got)} in the weights file, "
                        f"the architecture needs {list(shape)}",
                    )
                )
                # A zeros op, not a constant: the config's shape may be far too large to hold.
                return self.emit(relax.op.zeros(relax.ShapeExpr(list(shape)), "float32"))
        return var

    def fail(self, reason: str) -> None:
        """Record a problem found while translating (e.g. a shape the config cannot produce)."""
        self._problems.append(Problem(self.path, self.layer.class_name, reason))

"""The converter registry: Keras class name -> converter, filled by the layer family modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Weight names Keras creates as non-trainable (they come last in the legacy nested-model order).
NON_TRAINABLE = frozenset({"moving_mean", "moving_variance", "mean", "variance", "count"})

WeightNames = Callable[[dict[str, Any]], list[str]]
ConfigCheck = Callable[[dict[str, Any]], list[str]]


@dataclass(frozen=True)
class Converter:
    """How one Keras layer class becomes Relax.

    ``fn(ctx, inputs)`` emits the layer and returns its output(s); ``weights(config)`` names the
    weights Keras stores for that config, in order; ``check(config)`` returns reasons a config is
    unsupported; ``activation`` says the config's ``activation`` is fused and applied centrally.
    ``masks`` says how the layer treats Keras masks (the per-step booleans that
    ``Embedding(mask_zero=True)`` and ``Masking`` attach to their output): ``"keep"`` passes the
    first input's mask on to every output without reading it (Keras' default ``compute_mask``);
    ``"custom"``: the converter reads ``ctx.mask()`` and sets ``ctx.set_masks()``; ``None``: the
    layer does not support masking, so Keras drops the mask (Keras 2 refuses to build the model).
    """

    class_name: str
    fn: Callable[..., Any]
    family: str
    weights: WeightNames
    check: ConfigCheck | None
    activation: bool
    masks: str | None = None

    def weight_names(self, config: dict[str, Any]) -> list[str]:
        return self.weights(config)

    def problems(self, config: dict[str, Any]) -> list[str]:
        return self.check(config) if self.check else []


REGISTRY: dict[str, Converter] = {}
MASK_MODES = (None, "keep", "custom")

# Keras classes bridge deliberately does not convert, and why (``bridge layers`` prints these).
UNSUPPORTED: dict[str, str] = {
    "Lambda": "holds Python code (bytecode), which bridge never executes from a model file; "
    "rewrite it with built-in Keras layers",
    "StringLookup": "string tensors: TVM has no string type or string ops",
    "TextVectorization": "string tensors (splitting, n-grams, vocabulary lookup of strings)",
    "TFSMLayer": "wraps a TensorFlow SavedModel, which only TensorFlow can run",
    "TorchModuleWrapper": "wraps a PyTorch module, stored as pickled Python",
    "JaxLayer": "wraps Python JAX functions, not stored in the file",
    "FlaxLayer": "wraps a Python Flax module, not stored in the file",
}


def no_weights(config: dict[str, Any]) -> list[str]:
    return []


def register(
    *class_names: str,
    weights: WeightNames = no_weights,
    check: ConfigCheck | None = None,
    activation: bool = False,
    masks: str | None = None,
):
    """Register ``fn`` as the converter of the given Keras class names (duplicates refused)."""

    if masks not in MASK_MODES:
        raise ValueError(f"masks={masks!r}: expected one of {MASK_MODES}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        family = fn.__module__.rsplit(".", 1)[-1]
        for name in class_names:
            if name in REGISTRY:
                raise RuntimeError(f"converter for {name!r} registered twice")
            REGISTRY[name] = Converter(name, fn, family, weights, check, activation, masks)
        return fn

    return decorate


def registry_key(class_name: str, module: str | None = None) -> str:
    """Layers register by class name; Keras 3 operations recorded in functional graphs (the
    ``keras.src.ops.numpy.Add`` of ``x + 3.0``) by ``ops.<module>.<Class>``, since their class
    names clash with layers'."""
    if module and module.startswith("keras.src.ops."):
        return f"{module.removeprefix('keras.src.')}.{class_name}"
    return class_name


def lookup(class_name: str, module: str | None = None) -> Converter | None:
    _load_families()
    return REGISTRY.get(registry_key(class_name, module))


def all_converters() -> dict[str, Converter]:
    _load_families()
    return dict(REGISTRY)


def _load_families() -> None:
    from bridge.convert import layers  # noqa: F401  (imports every family module, filling REGISTRY)


def support_table() -> dict[str, list[str]]:
    """Family (module in ``bridge/convert/layers/``) -> its registered Keras classes, sorted."""
    table: dict[str, list[str]] = {}
    for name, converter in sorted(all_converters().items()):
        table.setdefault(converter.family, []).append(name)
    return dict(sorted(table.items()))

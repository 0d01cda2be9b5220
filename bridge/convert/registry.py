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
    """

    class_name: str
    fn: Callable[..., Any]
    family: str
    weights: WeightNames
    check: ConfigCheck | None
    activation: bool

    def weight_names(self, config: dict[str, Any]) -> list[str]:
        return self.weights(config)

    def problems(self, config: dict[str, Any]) -> list[str]:
        return self.check(config) if self.check else []


REGISTRY: dict[str, Converter] = {}


def no_weights(config: dict[str, Any]) -> list[str]:
    return []


def register(
    *class_names: str,
    weights: WeightNames = no_weights,
    check: ConfigCheck | None = None,
    activation: bool = False,
):
    """Register ``fn`` as the converter of the given Keras class names (duplicates refused)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        family = fn.__module__.rsplit(".", 1)[-1]
        for name in class_names:
            if name in REGISTRY:
                raise RuntimeError(f"converter for {name!r} registered twice")
            REGISTRY[name] = Converter(name, fn, family, weights, check, activation)
        return fn

    return decorate


def lookup(class_name: str) -> Converter | None:
    _load_families()
    return REGISTRY.get(class_name)


def all_converters() -> dict[str, Converter]:
    _load_families()
    return dict(REGISTRY)


def _load_families() -> None:
    from bridge.convert import layers  # noqa: F401  (imports every family module, filling REGISTRY)

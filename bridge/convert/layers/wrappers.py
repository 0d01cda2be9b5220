"""Wrapper layers: TimeDistributed (the wrapped layer's converter, applied to every time step),
SpectralNormalization (at inference, the wrapped layer with its stored, normalized kernel) and
Pipeline (Keras 3's chain of weightless preprocessing layers)."""

from __future__ import annotations

from typing import Any

from tvm.relax import op as R

from bridge.convert.invoke import invoke
from bridge.convert.registry import Converter, register, registered
from bridge.keras.graph import Layer

NOT_WRAPPABLE = frozenset({"TimeDistributed", "Sequential", "Functional", "Model"})


def _wrapped(config: dict[str, Any]) -> tuple[str, dict[str, Any], Converter | None]:
    """(class_name, config, converter) of the wrapped layer."""
    entry = config.get("layer") or {}
    class_name = entry.get("class_name", "")
    converter = None if class_name in NOT_WRAPPABLE else registered(class_name)
    return class_name, entry.get("config") or {}, converter


def _time_distributed_weights(config: dict[str, Any]) -> list[str]:
    _, inner, converter = _wrapped(config)
    return converter.weight_names(inner) if converter else []


def _check_time_distributed(config: dict[str, Any]) -> list[str]:
    class_name, inner, converter = _wrapped(config)
    if converter is None:
        return [f"wrapped layer {class_name!r} is not supported"]
    return [f"wrapped {class_name}: {reason}" for reason in converter.problems(inner)]


@register(
    "TimeDistributed",
    weights=_time_distributed_weights,
    check=_check_time_distributed,
    masks="keep",
    sublayers=("layer",),
)
def time_distributed(ctx, inputs):
    """Fold time into the batch, ``(B, T, ...) -> (B*T, ...)``, run the wrapped layer, unfold."""
    class_name, inner, converter = _wrapped(ctx.config)
    x = inputs[0]
    batch, steps, *rest = ctx.shape(x)
    folded = ctx.emit(R.reshape(x, (batch * steps, *rest)))
    layer = Layer(inner.get("name", class_name), class_name, inner, [])
    inner_ctx = ctx.wrapped(layer)
    y = invoke(converter, inner_ctx, [folded])
    if isinstance(y, (list, tuple)):
        ctx.fail(f"wrapped {class_name} has several outputs; TimeDistributed needs one")
        return x
    return ctx.emit(R.reshape(y, (batch, steps, *ctx.shape(y)[1:])))


def _spectral_weights(config: dict[str, Any]) -> list[str]:
    """Keras 3 saves the wrapper's own variables (a reference to the layer's kernel, then
    ``vector_u``) before the layer's; tf.keras 2's legacy files the layer's, then ``vector_u``.
    Keras 3 configs serialize ``dtype`` as a policy dict, tf.keras 2 ones as a string."""
    inner = _time_distributed_weights(config)
    if isinstance(config.get("dtype"), dict):
        return ["kernel_reference", "vector_u", *inner]
    return [*inner, "vector_u"]


@register(
    "SpectralNormalization",
    weights=_spectral_weights,
    check=_check_time_distributed,
    sublayers=("layer",),
)
def spectral_normalization(ctx, inputs):
    """Training re-normalizes and stores the kernel; inference just runs the wrapped layer."""
    class_name, inner, converter = _wrapped(ctx.config)
    layer = Layer(inner.get("name", class_name), class_name, inner, [])
    inner_ctx = ctx.wrapped(layer)
    return invoke(converter, inner_ctx, inputs)


def _pipeline_layers(config: dict[str, Any]) -> list[tuple[str, dict[str, Any], Converter | None]]:
    return [_wrapped({"layer": entry}) for entry in config.get("layers") or []]


def _check_pipeline(config: dict[str, Any]) -> list[str]:
    reasons = []
    for class_name, inner, converter in _pipeline_layers(config):
        if converter is None:
            reasons.append(f"layer {class_name!r} in the pipeline is not supported")
        elif converter.weight_names(inner):
            reasons.append(f"{class_name} in a pipeline has weights, which is not supported")
        else:
            reasons += [f"{class_name} in the pipeline: {r}" for r in converter.problems(inner)]
    return reasons


@register("Pipeline", check=_check_pipeline)
def pipeline(ctx, inputs):
    """Each layer in turn, as ``Pipeline.call`` applies them."""
    x = inputs[0]
    for class_name, inner, converter in _pipeline_layers(ctx.config):
        inner_ctx = ctx.wrapped(Layer(inner.get("name", class_name), class_name, inner, []))
        x = invoke(converter, inner_ctx, [x])
    return x

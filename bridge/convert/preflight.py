"""Preflight: find every layer bridge cannot translate before translating anything."""

from __future__ import annotations

from bridge.convert.activations import activation_problem
from bridge.convert.layers import converter_for
from bridge.convert.registry import CODE_CLASSES, UNSUPPORTED, CustomLayers, registry_key
from bridge.errors import Problem
from bridge.keras.graph import Layer, ModelGraph
from bridge.keras.weights import LayerWeights


class WeightsMisfit(Problem):
    """A problem of the weights file (they do not fit the architecture), not of the model."""


HOW_TO_SUPPLY = "supply a converter: custom_layers={{{key!r}: converter}} (README, 'Custom layers')"


def unsupported_reason(layer: Layer) -> str:
    """Why a layer class has no converter, with what the user can do about it."""
    if layer.class_name in CODE_CLASSES:
        return (
            "Lambda layers hold Python code, which bridge never executes from a model file; "
            "rewrite it with built-in Keras layers, or " + HOW_TO_SUPPLY.format(key=layer.name)
        )
    if layer.module and layer.module.startswith("keras.src.ops."):
        key = registry_key(layer.class_name, layer.module)
        return f"the Keras operation {key} (recorded from a functional call) is not supported"
    if layer.class_name in UNSUPPORTED:
        return f"{layer.class_name} is deliberately unsupported: {UNSUPPORTED[layer.class_name]}"
    name = layer.registered_name or layer.class_name
    if ">" in name or (layer.module is None and layer.registered_name):
        return (
            f"custom layer {name!r}: its Python code is not in the file and bridge has no "
            f"converter for it; " + HOW_TO_SUPPLY.format(key=name)
        )
    return (
        f"layer class {layer.class_name!r} is not supported by bridge; if it is your own "
        f"layer, " + HOW_TO_SUPPLY.format(key=name)
    )


def check_layer(
    path: str,
    layer: Layer,
    weights: LayerWeights,
    weights_label: str,
    custom: CustomLayers | None = None,
    require_weights: bool = True,
) -> list[Problem]:
    """Every problem of one (non-model) layer: class, config values, weight count (and missing
    weights, unless ``require_weights`` is False: the model has no weights file at all, one
    problem for the whole model)."""
    converter = converter_for(layer, custom)
    if converter is None:
        return [Problem(path, layer.class_name, unsupported_reason(layer))]
    try:
        reasons = list(converter.problems(layer.config))
        if converter.activation:
            reasons += activation_problem(layer.config.get("activation"))
        expected = converter.weight_names(layer.config)
    except Exception as exc:  # a converter reading a config value of the wrong type or shape
        return [Problem(path, layer.class_name, f"malformed layer config ({exc!r:.200})")]
    got = weights.get(path)
    if expected and got is None and require_weights:
        reasons.append(f"no weights for this layer in {weights_label} (expects {expected})")
    problems = [Problem(path, layer.class_name, r) for r in reasons]
    if got is not None and len(got) != len(expected):
        problems.append(weight_count_problem(path, layer, weights_label, len(got), expected))
    return problems


def weight_count_problem(
    path: str, layer: Layer, weights_label: str, count: int, expected: list[str]
) -> Problem:
    """Weights that do not fit the architecture: another number of arrays than the config
    needs (a :class:`~bridge.errors.WeightsError` when it is the only kind of problem)."""
    return WeightsMisfit(
        path,
        layer.class_name,
        f"{weights_label} holds {count} weight arrays for this layer, "
        f"the config needs {len(expected)} {expected}",
    )


def preflight(
    graph: ModelGraph,
    weights: LayerWeights,
    weights_label: str,
    custom: CustomLayers | None = None,
    require_weights: bool = True,
) -> list[Problem]:
    """All problems of all layers, in model order (nested models' layers in place)."""
    problems: list[Problem] = []
    for path, layer in graph.walk_layers():
        if layer.model is None:
            problems += check_layer(path, layer, weights, weights_label, custom, require_weights)
    return problems

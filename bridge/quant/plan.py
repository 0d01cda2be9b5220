"""What the integer walk fuses, decided from the Keras graph before translating: a convolution
or Dense layer absorbs a BatchNormalization and a ReLU/ReLU6 that only it feeds (an Add absorbs a
ReLU), and a fused activation without an integer clamp (sigmoid, swish, softmax...) is split off
its layer so that the range before it is observed too. Keys name every tensor a layer call makes,
the same in the calibration walk and the integer walk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from bridge.keras.graph import Call, Layer, ModelGraph, TensorRef

MARK = "\u00a7"  # observed tensors' names in the calibration walk's layer_values
PRODUCTS = frozenset({"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"})
DEPTHWISE_PART = "/depthwise"  # a SeparableConv2D's depthwise result
CLAMPS = {"relu": "RELU", "relu6": "RELU6", "linear": "NONE", None: "NONE"}
# Activations that are not elementwise: never a table.
NOT_ELEMENTWISE = frozenset({"softmax", "log_softmax", "glu", "sparsemax"})


def call_key(path: str, index: int, occurrence: int, tensor: int = 0, part: str = "") -> str:
    """The key of output ``tensor`` of call ``index`` of the layer at ``path`` (``occurrence``
    counts the times a nested model re-emits the same call); ``part`` "/pre" names the value
    before a split-off activation."""
    return f"{path}@{index}.{occurrence}:{tensor}{part}"


def input_key(name: str) -> str:
    return f"{name}@input"


def activation_name(spec) -> str | None:
    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and isinstance(spec.get("config"), str):
        return spec["config"]
    return None


def clamp_of(layer: Layer) -> str | None:
    """The integer clamp a standalone activation layer stands for (RELU, RELU6), if any."""
    config = layer.config
    if layer.class_name == "Activation":
        name = activation_name(config.get("activation"))
        return {"relu": "RELU", "relu6": "RELU6"}.get(name or "")
    if layer.class_name == "ReLU":
        if float(config.get("threshold") or 0.0) or float(config.get("negative_slope") or 0.0):
            return None
        top = config.get("max_value")
        if top is None:
            return "RELU"
        return "RELU6" if float(top) == 6.0 else None
    return None


def split_activation(layer: Layer) -> str | None:
    """The fused activation an integer product layer applies after a table or in float (not
    linear, relu or relu6), or None."""
    if layer.class_name not in PRODUCTS:
        return None
    name = activation_name(layer.config.get("activation"))
    return None if name in CLAMPS else name


def linear_copy(layer: Layer) -> Layer:
    """The layer without its fused activation."""
    config = {**layer.config, "activation": "linear"}
    return Layer(layer.name, layer.class_name, config, layer.calls, layer.registered_name,
                 None, layer.module, layer.in_model_layers)  # fmt: skip


def activation_layer(layer: Layer, name: str) -> tuple[Layer, TensorRef]:
    """An Activation layer applying ``name`` to one input, and the reference it reads."""
    ref = TensorRef(f"{layer.name}{MARK}pre", 0, 0)
    config = {"name": layer.name, "activation": name}
    return Layer(layer.name, "Activation", config, [Call([ref])], module="keras.layers"), ref


@dataclass
class Plan:
    """Fusions by call: ``followers[(path, index)]`` the calls a head absorbs, in order;
    ``absorbed`` every absorbed call (they pass their input through)."""

    followers: dict[tuple[str, int], list[tuple[str, int, Layer]]] = field(default_factory=dict)
    absorbed: set[tuple[str, int]] = field(default_factory=set)


def make_plan(graph: ModelGraph, keep: Iterable[str] = ()) -> Plan:
    """Fusions over every graph (nested ones too); layers named in ``keep`` (requested outputs)
    keep their own output, so nothing after them is absorbed into them."""
    plan = Plan()
    _plan_graph(graph, "", set(keep), plan)
    return plan


def _plan_graph(graph: ModelGraph, prefix: str, keep: set[str], plan: Plan) -> None:
    consumers: dict[TensorRef, list[tuple[Layer, int] | None]] = {}
    for layer in graph.layers:
        for index, call in enumerate(layer.calls):
            for ref in call.all_inputs():
                consumers.setdefault(ref, []).append((layer, index))
        if layer.model is not None:
            _plan_graph(layer.model, f"{prefix}{layer.name}/", keep, plan)
    for ref in graph.outputs:
        consumers.setdefault(ref, []).append(None)

    def only(layer: Layer, index: int) -> tuple[Layer, int] | None:
        users = consumers.get(TensorRef(layer.name, index, 0), [])
        if len(users) != 1 or users[0] is None or f"{prefix}{layer.name}" in keep:
            return None
        user, _ = users[0]
        if user.model is not None or len(user.calls) != 1 or len(user.calls[0].inputs) != 1:
            return None
        return users[0]

    for layer in graph.layers:
        if layer.model is not None or len(layer.calls) != 1:
            continue
        chain: list[tuple[str, int, Layer]] = []
        current = layer
        if layer.class_name in PRODUCTS and activation_name(layer.config.get("activation")) in (
            "linear",
            None,
        ):
            user = only(current, 0)
            if user is not None and _foldable_bn(user[0], layer.class_name):
                chain.append((f"{prefix}{user[0].name}", 0, user[0]))
                current = user[0]
        elif not (layer.class_name == "Add" and len(layer.calls[0].inputs) == 2):
            continue
        user = only(current, 0)
        if user is not None and clamp_of(user[0]) is not None:
            chain.append((f"{prefix}{user[0].name}", 0, user[0]))
        if chain:
            plan.followers[(f"{prefix}{layer.name}", 0)] = chain
            plan.absorbed.update((path, index) for path, index, _ in chain)


def _foldable_bn(layer: Layer, head: str) -> bool:
    """A BatchNormalization over the last axis of a convolution's (NHWC) or Dense's output."""
    if layer.class_name != "BatchNormalization":
        return False
    axis = layer.config.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    return axis == -1 or (axis == 3 and head != "Dense")

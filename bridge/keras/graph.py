"""Parse a Keras model config (Keras 2 or 3, Sequential or Functional, nested) into one graph form.

Both node encodings (Keras 2 lists, Keras 3 ``args``/``kwargs`` dicts) become :class:`Call` objects,
Sequential models become the same layer/call form as Functional ones, and the nested-model
``node_index`` offsets of each Keras version are normalized here, so nothing downstream branches on
the Keras version for graph structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.errors import ModelFileError
from bridge.keras.guards import MAX_MODEL_DEPTH

MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})


@dataclass(frozen=True)
class TensorRef:
    """One tensor: output ``tensor`` of call ``node`` of layer ``layer`` (Keras' keras_history)."""

    layer: str
    node: int
    tensor: int


@dataclass
class Call:
    """One call of a layer: its positional tensor inputs (flattened, in order) and its kwargs;
    a tensor-valued kwarg (MultiHeadAttention's ``key``, a ``mask``) is a list of TensorRef."""

    inputs: list[TensorRef]
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Non-tensor positional arguments by position, e.g. {1: 3.0} for Keras 3's ``x + 3.0``.
    constants: dict[int, Any] = field(default_factory=dict)

    def tensor_kwargs(self) -> dict[str, list[TensorRef]]:
        """The tensor-valued kwargs, in config order."""
        return {
            k: v
            for k, v in self.kwargs.items()
            if isinstance(v, list) and v and all(isinstance(t, TensorRef) for t in v)
        }

    def all_inputs(self) -> list[TensorRef]:
        """Every tensor the call reads: positional inputs, then tensor kwargs."""
        return self.inputs + [t for refs in self.tensor_kwargs().values() for t in refs]


@dataclass
class Layer:
    """A layer entry of a model config."""

    name: str
    class_name: str
    config: dict[str, Any]
    calls: list[Call]
    registered_name: str | None = None
    model: ModelGraph | None = None  # set for nested models
    module: str | None = None  # "keras.layers", or e.g. "keras.src.ops.numpy" for operations
    in_model_layers: bool = True  # False for a Sequential's InputLayer (not in model.layers)


@dataclass
class ModelGraph:
    """A model as layers (in ``model.layers`` order) plus its input and output tensors."""

    name: str
    kind: str  # "sequential" or "functional"
    layers: list[Layer]
    inputs: list[TensorRef]
    outputs: list[TensorRef]
    keras_major: int

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def walk_layers(self, prefix: str = ""):
        """Yield ``(path, layer)`` for every layer, depth first, nested models included."""
        for layer in self.layers:
            path = f"{prefix}{layer.name}"
            yield path, layer
            if layer.model is not None:
                yield from layer.model.walk_layers(path + "/")


def parse_model(envelope: Any, keras_major: int, source: str) -> ModelGraph:
    """Parse a top-level ``{"class_name": ..., "config": ...}`` model envelope."""
    if not isinstance(envelope, dict) or "class_name" not in envelope:
        raise ModelFileError(source, "not a Keras model config (no 'class_name' at the top level)")
    class_name = envelope["class_name"]
    if not isinstance(class_name, str) or class_name not in MODEL_CLASSES:
        raise ModelFileError(
            source,
            f"not a Keras model config: top-level class is {class_name!r}, expected one of "
            f"{sorted(MODEL_CLASSES)} (subclassed models cannot be read without their Python code)",
        )
    try:
        return _parse(envelope, keras_major, 0)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as exc:
        raise ModelFileError(source, f"malformed Keras model config: {exc!r:.300}") from exc


def _parse(envelope: dict, keras_major: int, depth: int) -> ModelGraph:
    if depth > MAX_MODEL_DEPTH:
        raise ValueError(f"models nested more than {MAX_MODEL_DEPTH} deep")
    if envelope["class_name"] == "Sequential":
        graph = _parse_sequential(envelope, keras_major, depth)
    else:
        graph = _parse_functional(envelope, keras_major, depth)
    names = {layer.name for layer in graph.layers}
    unknown = [r.layer for r in graph.inputs + graph.outputs if r.layer not in names]
    if unknown:
        raise ValueError(f"model {graph.name!r}: inputs/outputs name no layer: {unknown}")
    return graph


def _layer_name(entry: dict) -> str:
    config = entry.get("config")
    return entry.get("name") or (config.get("name") if isinstance(config, dict) else None)


def _text_or_none(entry: dict, key: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{key} {value!r} is not a string")
    return value


def _make_layer(entry: dict, keras_major: int, calls: list[Call], depth: int) -> Layer:
    if not isinstance(entry, dict):
        raise TypeError(f"layer entry {entry!r:.80} is not an object")
    class_name, name = entry["class_name"], _layer_name(entry)
    if not isinstance(class_name, str) or not isinstance(name, str) or not name:
        raise TypeError(f"layer entry has no string class_name and name: {class_name!r}, {name!r}")
    config = entry.get("config") or {}
    nested = _parse(entry, keras_major, depth + 1) if class_name in MODEL_CLASSES else None
    return Layer(
        name=name,
        class_name=class_name,
        config=config if isinstance(config, dict) else {"layers": config},
        calls=calls,
        registered_name=_text_or_none(entry, "registered_name"),
        model=nested,
        module=_text_or_none(entry, "module"),
    )


# --- Sequential ---------------------------------------------------------------------------------


def _sequential_input_shape(envelope: dict, entries: list[dict]) -> list | None:
    config = envelope.get("config")
    first = entries[0].get("config", {}) if entries else {}
    candidates = [
        first.get("batch_input_shape"),
        first.get("batch_shape"),
        config.get("build_input_shape") if isinstance(config, dict) else None,
        (envelope.get("build_config") or {}).get("input_shape"),
    ]
    return next((list(c) for c in candidates if c), None)


def _parse_sequential(envelope: dict, keras_major: int, depth: int) -> ModelGraph:
    config = envelope["config"]
    entries = config if isinstance(config, list) else config["layers"]  # Keras <= 2.2.4: bare list
    name = "sequential" if isinstance(config, list) else config.get("name", "sequential")
    if not isinstance(name, str) or not isinstance(entries, list):
        raise TypeError("Sequential config needs a string name and a list of layers")
    layers: list[Layer] = []
    if entries and entries[0]["class_name"] == "InputLayer":
        input_layer = _make_layer(entries[0], keras_major, [], depth)
        entries = entries[1:]
    else:
        shape = _sequential_input_shape(envelope, entries)
        if shape is None:
            raise ValueError(f"Sequential model {name!r} has no input shape (no InputLayer)")
        input_layer = Layer(
            name=f"{name}_input",
            class_name="InputLayer",
            config={"batch_shape": shape, "name": f"{name}_input"},
            calls=[],
        )
    input_layer.in_model_layers = False
    layers.append(input_layer)
    previous = TensorRef(input_layer.name, 0, 0)
    for entry in entries:
        layer = _make_layer(entry, keras_major, [Call([previous])], depth)
        layers.append(layer)
        previous = TensorRef(layer.name, 0, 0)
    return ModelGraph(
        name, "sequential", layers, [TensorRef(input_layer.name, 0, 0)], [previous], keras_major
    )


# --- Functional ---------------------------------------------------------------------------------


def _is_triple(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) in (3, 4)
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and isinstance(value[2], int)
    )


def _endpoint_refs(value: Any) -> list[list]:
    """input_layers/output_layers: a flat triple (Keras 3, single), a list, or a dict of triples;
    Keras 3 nests a list where a layer returned one (an RNN's per-cell StackedRNNCells states),
    flattened here in order, as Keras flattens ``model.outputs``."""
    if isinstance(value, dict):
        value = list(value.values())
    if _is_triple(value):
        return [value]
    if not isinstance(value, list):
        raise TypeError(f"model endpoint {value!r:.80} is not a tensor reference")
    return [triple for item in value for triple in _endpoint_refs(item)]


def _history(value: Any) -> list | None:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        return value["config"]["keras_history"]
    return None


def _flatten_tensors(value: Any, out: list[list]) -> None:
    history = _history(value)
    if history is not None:
        out.append(history)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _flatten_tensors(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _flatten_tensors(item, out)


def _parse_node(node: Any) -> tuple[list[list], dict]:
    """Return (tensor triples in order, kwargs) for one inbound node, Keras 2 or 3 form."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        triples: list[list] = []
        _flatten_tensors(node.get("args", []), triples)
        kwargs = {}
        for key, value in (node.get("kwargs") or {}).items():
            found: list[list] = []
            _flatten_tensors(value, found)
            kwargs[key] = [list(t) for t in found] if found else value
        return triples, kwargs
    # Keras 2: [[name, node, tensor, kwargs], ...]; early files have no kwargs element.
    # A TFOpLambda called on one tensor stores the bare entry [name, node, tensor, kwargs];
    # a nested input list (an RNN's per-cell initial states) stores nested entries.
    node = _k2_entries(node)
    triples = [entry[:3] for entry in node]
    kwargs = dict(node[0][3]) if node and len(node[0]) > 3 and node[0][3] else {}
    return triples, kwargs


def _k2_entries(node: Any) -> list[list]:
    """A Keras 2 inbound node's ``[name, node, tensor, kwargs]`` entries, nesting flattened."""
    if node and isinstance(node[0], str):
        return [node]
    return [entry for item in node for entry in _k2_entries(item)]


def _constants(node: Any) -> dict[int, Any]:
    """Keras 3 positional arguments holding no tensor (the ``3.0`` of ``x + 3.0``)."""
    if not isinstance(node, dict):
        return {}
    constants = {}
    for position, value in enumerate(node.get("args", [])):
        found: list[list] = []
        _flatten_tensors(value, found)
        if not found:
            constants[position] = value
    return constants


def _parse_functional(envelope: dict, keras_major: int, depth: int) -> ModelGraph:
    config = envelope["config"]
    entries = config["layers"]
    classes = {_layer_name(e): e["class_name"] for e in entries}

    def ref(triple: list, endpoint: bool) -> TensorRef:
        name, node, tensor = triple[0], int(triple[1]), int(triple[2])
        if not isinstance(name, str):
            raise TypeError(f"tensor reference {triple!r:.80} does not name a layer")
        target = classes.get(name)
        # Keras 2 never serializes a nested model's construction node, so every reference to a
        # nested model counts from 1. Keras 3 does so only in input/output_layers of Functionals.
        if target in MODEL_CLASSES and (keras_major < 3 or (endpoint and target != "Sequential")):
            node -= 1
        return TensorRef(name, node, tensor)

    layers = []
    for entry in entries:
        calls = []
        for node in entry.get("inbound_nodes") or []:
            triples, kwargs = _parse_node(node)
            kwargs = {
                k: [ref(t, False) for t in v]
                if isinstance(v, list) and v and _is_triple(v[0])
                else ([ref(v, False)] if keras_major < 3 and _is_triple(v) else v)
                for k, v in kwargs.items()
            }
            calls.append(Call([ref(t, False) for t in triples], kwargs, _constants(node)))
        layers.append(_make_layer(entry, keras_major, calls, depth))
    inputs = [ref(t, True) for t in _endpoint_refs(config["input_layers"])]
    outputs = [ref(t, True) for t in _endpoint_refs(config["output_layers"])]
    name = config.get("name", "model")
    return ModelGraph(str(name), "functional", layers, inputs, outputs, keras_major)

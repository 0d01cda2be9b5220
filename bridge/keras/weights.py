"""Keras weight stores and the assignment of stored arrays to the layers of a model graph.

Two layouts exist (see shared docs, keras-formats §2): the Keras 3 "new" layout (``.weights.h5``,
the ``model.weights.h5`` in a ``.keras``, sharded ``.weights.json``) addresses a layer by its
position (``layers/<snake_case(class)>[_n]/vars/<i>``); the legacy layout (``.h5``) addresses it
by name with a ``weight_names`` attribute. Every array comes back as float32 (bfloat16 and float16
are widened) so that the model computes in float32.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bridge.errors import ModelFileError, Problem
from bridge.keras.graph import Layer, ModelGraph
from bridge.keras.guards import check_dataset, check_links, reading
from bridge.keras.h5guard import check_global_heaps

LayerWeights = dict[str, list[np.ndarray]]
# For a layer, which of its weights are trainable, in weight order; None if unknown.
TrainableFlags = Callable[[Layer, bool], "list[bool] | None"]
CONTAINER_KEYS = ("layers", "_layer_checkpoint_dependencies")
# New layout: where a layer's sub-layers keep their variables (``<group>/<sub>/vars``), in weight
# order, given by the caller (converters register them: ``register(..., sublayers=...)``).
SublayerGroups = Callable[[Layer], "list[str]"]
# Layers saved under their Python class's name where the config's class name is an alias.
PYTHON_CLASS = {"GroupQueryAttention": "GroupedQueryAttention"}


def no_sublayers(layer: Layer) -> list[str]:
    return []


def snake_case(name: str) -> str:
    """Keras' ``to_snake_case``, which names the weight groups of the new layout."""
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def to_float_array(dataset: h5py.Dataset) -> np.ndarray:
    """Read a dataset as numpy; floating types (bfloat16 stored as opaque 2-byte) become float32."""
    data = np.asarray(dataset[()])
    if data.dtype.kind == "V" and data.dtype.itemsize == 2:  # bfloat16 (HDF5 OPAQUE)
        bits = np.frombuffer(data.tobytes(), dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(data.shape)
    if data.dtype.kind == "f" and data.dtype != np.float32:
        return data.astype(np.float32)
    return data


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_name_list(attrs: h5py.AttributeManager, name: str) -> list[str] | None:
    """A string-list attribute, also when Keras split it into ``name0``, ``name1``, ..."""
    if name in attrs:
        return [_text(v) for v in np.atleast_1d(attrs[name])]
    if f"{name}0" not in attrs:
        return None
    out: list[str] = []
    index = 0
    while f"{name}{index}" in attrs:
        out.extend(_text(v) for v in np.atleast_1d(attrs[f"{name}{index}"]))
        index += 1
    return out


class WeightStore:
    """Base: a source of per-layer weight arrays for one model graph."""

    def __init__(self, path: Path):
        self.path = path

    def assign(
        self,
        graph: ModelGraph,
        flags: TrainableFlags,
        sublayers: SublayerGroups = no_sublayers,
    ) -> tuple[LayerWeights, list[Problem]]:
        """Each layer's stored arrays (by layer path), and problems found assigning them.
        ``flags`` says which of a layer's weights are trainable (legacy nested models),
        ``sublayers`` where its sub-layers keep their variables (Keras 3 layout)."""
        with reading(self.path, "weights file"):
            return self.assign_layers(graph, flags, sublayers)

    def assign_layers(
        self, graph: ModelGraph, flags: TrainableFlags, sublayers: SublayerGroups
    ) -> tuple[LayerWeights, list[Problem]]:
        raise NotImplementedError

    def array(self, dataset: Any) -> np.ndarray:
        """A checked dataset (numeric, stored in this file, plausible size) as an array."""
        if not isinstance(dataset, h5py.Dataset):
            raise ModelFileError(self.path, f"{dataset.name} is a group where an array belongs")
        check_dataset(dataset, self.path)
        return to_float_array(dataset)


# --- new layout -----------------------------------------------------------------------------------


class NewLayoutStore(WeightStore):
    """Keras 3 layout: groups addressed by position, datasets ``vars/0``, ``vars/1``, ..."""

    def read_vars(self, group: str) -> list[np.ndarray] | None:
        raise NotImplementedError

    def has_group(self, group: str) -> bool:
        raise NotImplementedError

    def assign_layers(
        self, graph: ModelGraph, flags: TrainableFlags, sublayers: SublayerGroups
    ) -> tuple[LayerWeights, list[Problem]]:
        out: LayerWeights = {}
        self._assign(graph, "", "", out, sublayers)
        return out, []

    def _container(self, prefix: str) -> str:
        for key in CONTAINER_KEYS:
            if self.has_group(prefix + key):
                return prefix + key
        return prefix + CONTAINER_KEYS[0]

    def _assign(
        self,
        graph: ModelGraph,
        group_prefix: str,
        path_prefix: str,
        out: LayerWeights,
        sublayers: SublayerGroups,
    ):
        container = self._container(group_prefix)
        counters: Counter[str] = Counter()
        for layer in graph.layers:
            if not layer.in_model_layers:
                continue
            base = snake_case(PYTHON_CLASS.get(layer.class_name, layer.class_name))
            group = f"{container}/{base}" + (f"_{counters[base]}" if counters[base] else "")
            counters[base] += 1
            if layer.model is not None:
                prefix = f"{path_prefix}{layer.name}/"
                self._assign(layer.model, group + "/", prefix, out, sublayers)
                continue
            arrays = self.read_layer_vars(group, sublayers(layer))
            if arrays is not None:
                out[path_prefix + layer.name] = arrays

    def read_layer_vars(self, group: str, subgroups: list[str]) -> list[np.ndarray] | None:
        """A layer's own ``vars``, then those of its sub-layers (``subgroups``), in order."""
        arrays = self.read_vars(group + "/vars")
        for sub in subgroups:
            more = self.read_vars(f"{group}/{sub}/vars")
            if more is not None:
                arrays = (arrays or []) + more
        return arrays


def _numeric_members(group: Any) -> dict[int, h5py.Dataset]:
    """``vars/0``, ``vars/1``, ... of a group (a dataset where the group belongs has none)."""
    if not isinstance(group, h5py.Group):
        return {}
    return {int(k): v for k, v in group.items() if k.isdigit() and len(k) < 10}


class H5NewLayoutStore(NewLayoutStore):
    def __init__(self, path: Path, root: h5py.Group):
        super().__init__(path)
        self.root = root

    def has_group(self, group: str) -> bool:
        return group in self.root

    def read_vars(self, group: str) -> list[np.ndarray] | None:
        if group not in self.root:
            return None
        members = _numeric_members(self.root[group])
        return [self.array(members[i]) for i in sorted(members)]


class ShardedStore(NewLayoutStore):
    """``.weights.json`` index plus shard files; one layer's vars may span several shards."""

    def __init__(self, path: Path, weight_map: dict[str, Any]):
        super().__init__(path)
        self.weight_map = {
            k.strip("/"): [v] if isinstance(v, str) else v for k, v in weight_map.items()
        }
        for names in self.weight_map.values():
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise ModelFileError(path, "weight_map values must be shard file names")
        self._files: dict[str, h5py.File] = {}

    def _shard(self, name: str) -> h5py.File:
        if name not in self._files:
            shard = (self.path.parent / name).resolve()
            if self.path.parent.resolve() not in shard.parents or not shard.is_file():
                raise ModelFileError(self.path, f"shard {name!r} not found next to the index")
            check_global_heaps(shard)
            try:
                handle = h5py.File(shard, "r")
            except OSError as exc:
                raise ModelFileError(shard, f"corrupt or truncated HDF5 shard ({exc})") from exc
            check_links(handle, shard)
            self._files[name] = handle
        return self._files[name]

    def has_group(self, group: str) -> bool:
        return any(k == group or k.startswith(group + "/") for k in self.weight_map)

    def read_vars(self, group: str) -> list[np.ndarray] | None:
        if group not in self.weight_map:
            return None
        members: dict[int, h5py.Dataset] = {}
        for name in self.weight_map[group]:
            shard = self._shard(name)
            if group in shard:
                members.update(_numeric_members(shard[group]))
        return [self.array(members[i]) for i in sorted(members)]


# --- legacy layout --------------------------------------------------------------------------------


class LegacyStore(WeightStore):
    """Legacy HDF5 (``save_weights('x.h5')`` or a full model's ``model_weights``), by layer name."""

    def __init__(self, path: Path, root: h5py.Group):
        super().__init__(path)
        self.root = root
        self.layer_names = read_name_list(root.attrs, "layer_names") or []

    def read_layer(self, name: str) -> list[np.ndarray] | None:
        if name not in self.layer_names or name not in self.root:
            return None
        group = self.root[name]
        names = read_name_list(group.attrs, "weight_names") or []
        return [self.array(group[n]) for n in names]

    def assign_layers(
        self, graph: ModelGraph, flags: TrainableFlags, sublayers: SublayerGroups
    ) -> tuple[LayerWeights, list[Problem]]:
        out: LayerWeights = {}
        problems: list[Problem] = []
        for layer in graph.layers:
            arrays = self.read_layer(layer.name)
            if arrays is None:
                continue
            if layer.model is None:
                out[layer.name] = arrays
            else:
                trainable = bool(layer.config.get("trainable", True))
                problem = _distribute(layer, arrays, flags, trainable, out)
                if problem:
                    problems.append(problem)
        return out, problems


def _leaves(graph: ModelGraph, prefix: str, trainable: bool, flags: TrainableFlags):
    for layer in graph.layers:
        layer_trainable = trainable and bool(layer.config.get("trainable", True))
        if layer.model is not None:
            yield from _leaves(layer.model, f"{prefix}{layer.name}/", layer_trainable, flags)
        else:
            yield f"{prefix}{layer.name}", layer, flags(layer, layer_trainable)


def _distribute(
    outer: Layer,
    arrays: list[np.ndarray],
    flags: TrainableFlags,
    trainable: bool,
    out: LayerWeights,
) -> Problem | None:
    """Split a nested model's one legacy group (all trainable weights, then the rest)."""
    leaves = list(_leaves(outer.model, f"{outer.name}/", trainable, flags))
    if any(f is None for _, _, f in leaves):
        return None  # an unknown layer inside; preflight reports it
    order = [(path, i) for path, _, f in leaves for i, t in enumerate(f) if t]
    order += [(path, i) for path, _, f in leaves for i, t in enumerate(f) if not t]
    if len(order) != len(arrays):
        return Problem(
            outer.name,
            outer.class_name,
            f"the weights file holds {len(arrays)} arrays for this nested model, "
            f"its layers need {len(order)}",
        )
    slots: dict[str, dict[int, np.ndarray]] = {}
    for (path, index), array in zip(order, arrays):
        slots.setdefault(path, {})[index] = array
    for path, by_index in slots.items():
        out[path] = [by_index[i] for i in sorted(by_index)]
    return None


# --- opening ---------------------------------------------------------------------------------


def open_weights_h5(handle: h5py.File, path: Path) -> WeightStore:
    """Pick the layout of an open HDF5 weights file (or full-model file)."""
    if "model_weights" in handle and read_name_list(handle["model_weights"].attrs, "layer_names"):
        return LegacyStore(path, handle["model_weights"])
    if read_name_list(handle.attrs, "layer_names") is not None:
        return LegacyStore(path, handle)
    if any(key in handle for key in CONTAINER_KEYS) or "vars" in handle:
        return H5NewLayoutStore(path, handle)
    raise ModelFileError(path, "HDF5 file holds no Keras weights (neither layout found)")


def open_weights_json(path: Path, index: Any) -> WeightStore:
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise ModelFileError(path, "not a sharded Keras weights index (no 'weight_map')")
    return ShardedStore(path, index["weight_map"])

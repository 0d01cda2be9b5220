"""The public entry points: build, to_relax, check_modeltype, inspect."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.keras.files import KerasSource, open_model
from bridge.runtime import Model, file_digest

PathLike = str | Path
# custom_layers=: "package>Name", class name or Lambda layer name -> converter
CustomLayersArg = Mapping[str, Any] | None


@dataclass
class Loaded:
    """A Keras source with its weights assigned to layers (and any assignment problems)."""

    source: KerasSource
    weights: dict[str, list[np.ndarray]]
    problems: list = field(default_factory=list)
    custom: dict = field(default_factory=dict)  # validated custom_layers

    @property
    def weights_label(self) -> str:
        path = self.source.weights_path or (self.source.model_path if self.source.weights else None)
        return str(path) if path else "(no weights file)"


def load_keras(
    model: PathLike, weights: PathLike | None = None, custom_layers: CustomLayersArg = None
) -> Loaded:
    """Open the files and assign stored weights to layers."""
    from bridge.convert.registry import NON_TRAINABLE, as_custom_layers, converter_for

    custom = as_custom_layers(custom_layers)

    def flags(layer, trainable: bool) -> list[bool] | None:
        converter = converter_for(layer, custom)
        if converter is None:
            return None
        return [trainable and n not in NON_TRAINABLE for n in converter.weight_names(layer.config)]

    source = open_model(model, weights)
    if source.weights is None:
        return Loaded(source, {}, custom=custom)
    assigned, problems = source.weights.assign(source.graph, flags)
    return Loaded(source, assigned, problems, custom)


def _translate(loaded: Loaded, batch_size: int, outputs: list[str] | None):
    from bridge.convert.walk import translate

    return translate(
        loaded.source.graph,
        loaded.weights,
        loaded.source.label,
        loaded.weights_label,
        batch_size=batch_size,
        outputs=outputs,
        extra_problems=loaded.problems,
        custom=loaded.custom,
    )


def to_relax(
    model: PathLike,
    weights: PathLike | None = None,
    *,
    batch_size: int | None = 1,
    outputs: list[str] | None = None,
    custom_layers: CustomLayersArg = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """The model as a Relax IRModule plus its weights.

    ``main`` takes the model inputs then every weight (attribute ``num_input`` counts the
    inputs); ``params`` maps each weight parameter's name to its array. ``custom_layers`` as
    for :func:`build`.
    """
    translation = _translate(load_keras(model, weights, custom_layers), batch_size, outputs)
    return translation.mod, translation.params


def build(
    model: PathLike,
    weights: PathLike | None = None,
    *,
    target: Any = "llvm",
    batch_size: int | None = 1,
    outputs: list[str] | None = None,
    separate_params: bool = False,
    progress: Callable[[str], None] | None = None,
    custom_layers: CustomLayersArg = None,
) -> Model:
    """Read Keras files, translate to Relax, compile for ``target``; returns a callable Model.

    ``target`` is a preset name (``bridge targets``), ``"llvm"``/``"native"``, ``"cuda"``, a TVM
    tag or a TVM target dict. ``batch_size=None`` compiles a symbolic batch dimension.
    ``separate_params=True`` keeps the weights out of the library (``export`` then writes them
    to ``model.params``, loaded at run time). ``progress``, if given, is called with a short
    description as each stage starts.

    ``custom_layers`` supplies converters for layers whose code is not in the file: keys are a
    registered custom layer's ``"package>Name"`` (or its class name), or a Lambda layer's name;
    values are functions ``fn(ctx, inputs)`` or :func:`bridge.converter` objects (which also
    name the layer's weights), the interface of the built-in converters.
    """
    import tvm

    from bridge import __version__
    from bridge.compile import compile_module
    from bridge.targets import resolve, target_json

    report = progress or (lambda stage: None)
    spec = resolve(target)
    tvm_target = spec.tvm_target()
    if spec.device == "cuda":
        from bridge.cuda import enable_offline_codegen

        enable_offline_codegen()
    started = time.perf_counter()
    report(f"reading {Path(model).name}")
    loaded = load_keras(model, weights, custom_layers)
    report(f"translating {sum(1 for _ in loaded.source.graph.walk_layers())} layers to Relax")
    translation = _translate(loaded, batch_size, outputs)
    report(f"compiling for {spec.name} ({spec.arch}, {spec.device})")
    executable = compile_module(
        translation.mod, translation.params, tvm_target, bind=not separate_params
    )
    source = loaded.source
    metadata = {
        "bridge_version": __version__,
        "tvm_version": tvm.__version__,
        "target_name": spec.name,
        "target": target_json(tvm_target),
        "arch": spec.arch,
        "device": spec.device,
        "model": source.graph.name,
        "model_type": source.graph.kind,
        "keras_version": source.keras_version,
        "layers": translation.layer_count,
        "source_files": [p.name for p in source.files],
        "source_sha256": file_digest(source.files),
        "batch_size": batch_size,
        "params": list(translation.params) if separate_params else [],
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    if spec.device == "cuda":
        metadata["cuda_arch"] = str(tvm_target.attrs["arch"])
    params = list(translation.params.values()) if separate_params else None
    return Model(
        executable,
        translation.inputs,
        translation.outputs,
        metadata,
        executable,
        params=params,
        spec=spec,
    )


def check_modeltype(model: PathLike) -> str:
    """``"sequential"`` or ``"functional"`` (reads the architecture only)."""
    return open_model(model).graph.kind


@dataclass
class LayerRow:
    """One line of ``bridge inspect``."""

    path: str
    class_name: str
    output_shapes: list[tuple[int, ...]] | None
    params: int
    status: str  # "ok" or the reasons it is unsupported


@dataclass
class ModelReport:
    kind: str
    name: str
    keras_version: str
    layers: list[LayerRow]

    @property
    def supported(self) -> bool:
        return all(row.status == "ok" for row in self.layers)


def inspect(
    model: PathLike,
    weights: PathLike | None = None,
    *,
    batch_size: int = 1,
    custom_layers: CustomLayersArg = None,
) -> ModelReport:
    """Per-layer class, output shape, parameter count and support status (never raises for
    unsupported layers; they are reported in the rows)."""
    from bridge.convert.preflight import check_layer
    from bridge.errors import UnsupportedModelError

    loaded = load_keras(model, weights, custom_layers)
    graph = loaded.source.graph
    problems: dict[str, list[str]] = {}
    for path, layer in graph.walk_layers():
        if layer.model is None:
            checked = check_layer(path, layer, loaded.weights, loaded.weights_label, loaded.custom)
            for p in checked:
                problems.setdefault(path, []).append(p.reason)
    for p in loaded.problems:
        problems.setdefault(p.layer, []).append(p.reason)
    shapes: dict[str, list[tuple[int, ...]]] = {}
    if not problems:
        try:
            shapes = _translate(loaded, batch_size, None).layer_shapes
        except UnsupportedModelError as exc:
            for p in exc.problems:
                problems.setdefault(p.layer, []).append(p.reason)
    rows = [
        LayerRow(
            path,
            layer.class_name,
            shapes.get(path),
            sum(int(a.size) for a in loaded.weights.get(path, [])),
            "; ".join(problems.get(path, [])) or "ok",
        )
        for path, layer in graph.walk_layers()
    ]
    source = loaded.source
    return ModelReport(graph.kind, graph.name, source.keras_version, rows)

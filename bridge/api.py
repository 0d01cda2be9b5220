"""The public entry points: build, to_relax, check_modeltype, inspect."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.export import BuiltModel, file_digest
from bridge.keras.files import KerasSource, file_kind, open_model
from bridge.targets import host_arch

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
    from bridge.convert.layers import converter_for
    from bridge.convert.registry import NON_TRAINABLE, as_custom_layers

    custom = as_custom_layers(custom_layers)

    def flags(layer, trainable: bool) -> list[bool] | None:
        converter = converter_for(layer, custom)
        try:
            names = converter.weight_names(layer.config) if converter else None
        except Exception:  # a malformed config: preflight reports it, naming the layer
            return None
        return None if names is None else [trainable and n not in NON_TRAINABLE for n in names]

    source = open_model(model, weights)
    if source.weights is None:
        return Loaded(source, {}, custom=custom)
    assigned, problems = source.weights.assign(source.graph, flags)
    return Loaded(source, assigned, problems, custom)


def _translate(loaded: Loaded, batch_size: int, outputs: list[str] | None, device: str = "cpu"):
    from bridge.convert.walk import translate

    return translate(
        loaded.source.graph,
        loaded.weights,
        loaded.source.label,
        loaded.weights_label,
        batch_size=batch_size,
        outputs=outputs,
        extra_problems=loaded.problems,
        device=device,
        custom=loaded.custom,
    )


def _is_tflite(model: PathLike, weights: PathLike | None) -> bool:
    """Whether ``model`` is a TFLite flatbuffer (which holds its own weights)."""
    from bridge.errors import ModelFileError

    if file_kind(Path(model)) != "tflite":
        return False
    if weights is not None:
        raise ModelFileError(weights, "a .tflite model holds its weights; pass no weights file")
    return True


def _load_and_translate(
    model: PathLike,
    weights: PathLike | None,
    batch_size: int | None,
    outputs: list[str] | None,
    report: Callable[[str], None] = lambda stage: None,
    device: str = "cpu",
    custom_layers: CustomLayersArg = None,
):
    """Translate any supported model file: (translation, metadata describing its source).
    ``device`` ("cpu" or "cuda") is what the module will be compiled for."""
    if _is_tflite(model, weights):
        from bridge.tflite import read_tflite, translate

        tfl = read_tflite(model)
        report(f"translating {len(tfl.ops)} TFLite operators to Relax")
        source = {
            "model": tfl.name,
            "model_type": "tflite",
            "keras_version": "",
            "files": [tfl.path],
        }
        return translate(tfl, batch_size=batch_size, outputs=outputs), source
    loaded = load_keras(model, weights, custom_layers)
    report(f"translating {sum(1 for _ in loaded.source.graph.walk_layers())} layers to Relax")
    keras = loaded.source
    source = {
        "model": keras.graph.name,
        "model_type": keras.graph.kind,
        "keras_version": keras.keras_version,
        "files": keras.files,
    }
    return _translate(loaded, batch_size, outputs, device), source


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
    translation, _ = _load_and_translate(
        model, weights, batch_size, outputs, custom_layers=custom_layers
    )
    return translation.mod, translation.params


def build(
    model: PathLike,
    weights: PathLike | None = None,
    *,
    target: Any = "llvm",
    batch_size: int | None = 1,
    outputs: list[str] | None = None,
    separate_params: bool = False,
    tune: int | str | None = None,
    tuning_db: PathLike | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    num_threads: int | None = None,
    progress: Callable[[str, float | None], None] | None = None,
    custom_layers: CustomLayersArg = None,
) -> BuiltModel:
    """Read a Keras or TFLite model, translate to Relax, compile for ``target``; returns a
    callable, exportable model (a ``bridge.Model``; see ``bridge.export.BuiltModel``).

    ``target`` is a preset name (``bridge targets``), ``"llvm"``/``"native"``, ``"cuda"``, a TVM
    tag or a TVM target dict. ``batch_size=None`` compiles a symbolic batch dimension.
    ``separate_params=True`` keeps the weights out of the library (``export`` then writes them
    to ``model.params``, loaded at run time). ``progress``, if given, is called as
    ``progress(description, done)`` as each stage starts, ``description`` a short line and
    ``done`` None; while tuning, also with ``done`` the fraction of the budget spent.

    ``tune`` (a time such as ``"20m"`` or a number of trials) first searches faster kernels
    with MetaSchedule (see :func:`tune`); tuned kernels already in the target's database
    (``tuning_db``, default ``~/.cache/bridge/tuning``) are used by every build, tuned or not.
    ``rpc_tracker="host:port"`` and ``rpc_key`` measure candidates on a remote device.
    ``num_threads`` sets how many CPU threads the model's kernels use (default: every core).
    ``custom_layers`` supplies converters for layers whose code is not in the file: keys are a
    registered custom layer's ``"package>Name"`` (or its class name), or a Lambda layer's name;
    values are functions ``fn(ctx, inputs)`` or :func:`bridge.converter` objects (which also
    name the layer's weights), the interface of the built-in converters.
    """
    import tvm

    from bridge import __version__
    from bridge.compile import bind_weights, compile_module
    from bridge.targets import resolve, target_json
    from bridge.tuning import Budget, database_dir, existing_database

    report = _stages(progress)
    spec = resolve(target)
    tvm_target = spec.tvm_target()
    if spec.device == "cuda":
        from bridge.cuda import enable_offline_codegen

        enable_offline_codegen()
    started = time.perf_counter()
    report(f"reading {Path(model).name}")
    translation, source = _load_and_translate(
        model, weights, batch_size, outputs, report, device=spec.device, custom_layers=custom_layers
    )
    mod = translation.mod if separate_params else bind_weights(translation.mod, translation.params)
    folder = database_dir(tvm_target, tuning_db)
    tuning = None
    if tune is not None:
        report(f"tuning kernels for {spec.name} ({Budget.parse(tune)})")
        tuning = _tune_kernels(mod, spec, tune, folder, rpc_tracker, rpc_key, progress)
    report(f"compiling for {spec.name} ({spec.arch}, {spec.device})")
    database = existing_database(folder)
    executable = compile_module(mod, tvm_target, database=database)
    metadata = {
        "bridge_version": __version__,
        "tvm_version": tvm.__version__,
        "target_name": spec.name,
        "target": target_json(tvm_target),
        "arch": spec.arch,
        "device": spec.device,
        "model": source["model"],
        "model_type": source["model_type"],
        "keras_version": source["keras_version"],
        "layers": translation.layer_count,
        "source_files": [p.name for p in source["files"]],
        "source_sha256": file_digest(source["files"]),
        "batch_size": batch_size,
        "params": list(translation.params) if separate_params else [],
        "build_seconds": round(time.perf_counter() - started, 3),
        "tuning_database": str(folder) if database is not None else None,
    }
    if tuning is not None:
        metadata["tuning"] = tuning.summary()
    if spec.device == "cuda":
        metadata["cuda_arch"] = str(tvm_target.attrs["arch"])
    params = list(translation.params.values()) if separate_params else None
    return BuiltModel(
        executable,
        translation.inputs,
        translation.outputs,
        metadata,
        spec=spec,
        params=params,
        num_threads=num_threads,
    )


def _stages(progress: Callable[[str, float | None], None] | None) -> Callable[[str], None]:
    """``report(description)`` for the stages of a build or tuning run: ``progress(..., None)``."""
    if progress is None:
        return lambda description: None
    return lambda description: progress(description, None)


def _tune_kernels(mod, spec, budget, folder, rpc_tracker, rpc_key, progress=None):
    """Tune ``mod`` (weights bound or not, as it will be compiled) into ``folder``, telling
    ``progress(description, done)`` how far it is."""
    from bridge.errors import TargetError, TuningError
    from bridge.schedules.pipeline import fuse
    from bridge.tuning import Budget, Remote
    from bridge.tuning import tune as run_tuning

    if folder is None:
        raise TuningError("tuning needs a database folder: BRIDGE_TUNING_DB is 'off'")
    if (rpc_tracker is None) != (rpc_key is None):
        raise TuningError("remote tuning needs both rpc_tracker='host:port' and rpc_key")
    remote = Remote(rpc_tracker, rpc_key) if rpc_tracker else None
    if remote is None and spec.arch != host_arch():
        raise TargetError(
            f"{spec.name} ({spec.arch}) cannot run on this {host_arch()} machine: tune through an"
            " RPC tracker (rpc_tracker='host:port', rpc_key=...) with the device registered"
        )
    tvm_target = spec.tvm_target()
    return run_tuning(
        fuse(mod, tvm_target),
        tvm_target,
        Budget.parse(budget),
        folder=folder,
        remote=remote,
        cross_compiler=spec.cross_compiler,
        progress=progress,
    )


def tune(
    model: PathLike,
    weights: PathLike | None = None,
    *,
    target: Any = "llvm",
    budget: int | str = "20m",
    batch_size: int | None = 1,
    separate_params: bool = False,
    tuning_db: PathLike | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    custom_layers: CustomLayersArg = None,
    progress: Callable[[str, float | None], None] | None = None,
):
    """Search faster kernels for a model's target within ``budget`` (``"20m"``, ``"90s"``, or a
    number of trials) and store them in the target's tuning database; returns a TuningReport.

    Only kernels faster than bridge's default schedule *and* numerically equal to it on random
    inputs are stored. Kernels tuned before (by any model) are skipped, so tuning again only
    tunes what is new. Later builds for the same target use the stored kernels.
    ``progress`` is :func:`build`'s: ``progress(description, done)``, ``done`` the fraction of
    the budget spent (None while reading the model and measuring the default kernels).
    """
    from bridge.compile import bind_weights
    from bridge.targets import resolve
    from bridge.tuning import database_dir

    spec = resolve(target)
    report = _stages(progress)
    report(f"reading {Path(model).name}")
    translation, _ = _load_and_translate(
        model, weights, batch_size, None, report, device=spec.device, custom_layers=custom_layers
    )
    mod = translation.mod if separate_params else bind_weights(translation.mod, translation.params)
    folder = database_dir(spec.tvm_target(), tuning_db)
    return _tune_kernels(mod, spec, budget, folder, rpc_tracker, rpc_key, progress)


def check_modeltype(model: PathLike) -> str:
    """``"sequential"``, ``"functional"`` (reads the architecture only) or ``"tflite"``."""
    if file_kind(Path(model)) == "tflite":
        return "tflite"
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

    if _is_tflite(model, weights):
        from bridge.tflite import read_tflite
        from bridge.tflite.translate import report_rows

        tfl = read_tflite(model)
        rows = [LayerRow(*row) for row in report_rows(tfl)]
        return ModelReport("tflite", tfl.name, "", rows)
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

"""The public entry points: build, to_relax, check_modeltype, inspect."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.export import BuiltModel, file_digest
from bridge.sources import open_source
from bridge.targets import host_arch

if TYPE_CHECKING:
    from bridge.translation import InputShapes, Translation

PathLike = str | Path
# custom_layers=: "package>Name", class name or Lambda layer name -> converter
CustomLayersArg = Mapping[str, Any] | None


def _load_and_translate(
    model: PathLike,
    weights: PathLike | None,
    batch_size: int | None,
    outputs: list[str] | None,
    report: Callable[[str], None] = lambda stage: None,
    device: str = "cpu",
    custom_layers: CustomLayersArg = None,
    input_shapes: InputShapes = None,
) -> tuple[Translation, dict[str, Any]]:
    """Translate any supported model file: (translation, metadata describing its source).
    ``device`` ("cpu" or "cuda") is what the module will be compiled for."""
    source = open_source(model, weights, custom_layers)
    translation = source.translate(batch_size, outputs, device, report, input_shapes)
    return translation, source.describe()


def to_relax(
    model: PathLike,
    weights: PathLike | None = None,
    *,
    batch_size: int | None = 1,
    outputs: list[str] | None = None,
    custom_layers: CustomLayersArg = None,
    input_shapes: InputShapes = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """The model as a Relax IRModule plus its weights.

    ``main`` takes the model inputs then every weight (attribute ``num_input`` counts the
    inputs); ``params`` maps each weight parameter's name to its array. ``custom_layers`` and
    ``input_shapes`` as for :func:`build`.
    """
    translation, _ = _load_and_translate(
        model, weights, batch_size, outputs, custom_layers=custom_layers, input_shapes=input_shapes
    )
    return translation.mod, translation.params


def build(
    model: PathLike,
    weights: PathLike | None = None,
    *,
    target: Any = "llvm",
    batch_size: int | None = 1,
    outputs: list[str] | None = None,
    separate_params: bool = True,
    optimize_for: str = "balanced",
    tune: int | str | None = None,
    tuning_db: PathLike | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    num_threads: int | None = None,
    quantize: str | None = None,
    calibration: Any = None,
    calibration_method: str = "minmax",
    percentile: float = 99.99,
    progress: Callable[[str, float | None], None] | None = None,
    custom_layers: CustomLayersArg = None,
    input_shapes: InputShapes = None,
) -> BuiltModel:
    """Read a Keras or TFLite model, translate to Relax, compile for ``target``; returns a
    callable, exportable model (a ``bridge.Model``; see ``bridge.export.BuiltModel``).

    ``target`` is a preset name (``bridge targets``), ``"llvm"``/``"native"``, ``"cuda"``, a TVM
    tag or a TVM target dict. ``batch_size=None`` compiles a symbolic batch dimension.
    ``separate_params`` (default) keeps the weights out of the library: ``export`` writes them
    to ``model.params``, as the kernels read them (prepacked, Winograd-transformed at build
    time), and a loaded model holds each once; ``separate_params=False`` embeds them in the
    library (one file, but loading it holds them several times over). ``optimize_for``:
    ``"balanced"`` (default) uses Winograd convolutions (4x faster products, weights 1.8-4x
    larger) where they save the most work per added byte, adding at most 20% to the weights;
    ``"speed"`` wherever they pay; ``"size"`` nowhere (library + params = the weights).
    ``progress``, if given, is called as
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

    ``quantize="int8"`` (Keras models) runs the model on int8 kernels: per-channel symmetric
    int8 weights, activation ranges observed by running the float model over ``calibration``
    (an array whose first axis counts samples, a list of arrays for several inputs, a dict by
    input name, or an iterable of batches; any number of samples) with ``calibration_method``
    ``"minmax"`` or ``"percentile"`` (the ``percentile``-th, e.g. 99.99). Inputs and outputs
    stay float; layers without an integer kernel run in float. ``metadata["quantization"]``
    lists those layers and the agreement with the float model on the calibration samples.

    ``input_shapes`` sets dimensions the model leaves unknown (a variable time axis):
    ``{"tokens": (1, 50)}`` by input name (or one shape for a single-input model, or a list by
    position) fixes them; a name instead of a size, ``{"tokens": (1, "T")}``, keeps that
    dimension symbolic, so one build runs every length (inputs naming the same symbol must
    agree in that size). Known dimensions must match the model's. The batch is
    ``batch_size``'s: in ``input_shapes`` it may be None or repeat ``batch_size`` (with
    ``batch_size=None``, a name for the symbolic batch), never differ.
    """
    import tvm

    from bridge import __version__
    from bridge.compile import bind_weights, compile_model
    from bridge.kernels_map import kernel_metadata, recording
    from bridge.targets import resolve, target_json
    from bridge.tuning import Budget, database_dir, existing_database

    report = _stages(progress)
    spec = resolve(target)
    tvm_target = spec.tvm_target()
    if spec.device == "cuda":
        from bridge.cuda import enable_offline_codegen

        enable_offline_codegen()
    started = time.perf_counter()
    quantizer = None
    if quantize is not None:  # checks the calibration samples before any work
        from bridge.quant.build import prepare

        quantizer = prepare(
            model,
            weights,
            mode=quantize,
            calibration=calibration,
            method=calibration_method,
            percentile=percentile,
            custom_layers=custom_layers,
            input_shapes=input_shapes,
        )
    report(f"reading {Path(model).name}")
    translation, source = _load_and_translate(
        model,
        weights,
        batch_size,
        outputs,
        report,
        device=spec.device,
        custom_layers=custom_layers,
        input_shapes=input_shapes,
    )
    if quantizer is not None:
        translation = quantizer.translate(batch_size, outputs, spec.device, report, progress)
    folder = database_dir(tvm_target, tuning_db)
    tuning = None
    if tune is not None:
        report(f"tuning kernels for {spec.name} ({Budget.parse(tune)})")
        mod = bind_weights(translation.mod, translation.params)  # as compile_model compiles it
        tuning = _tune_kernels(
            mod, spec, tune, folder, rpc_tracker, rpc_key, progress, optimize_for
        )
    report(f"compiling for {spec.name} ({spec.arch}, {spec.device})")
    database = existing_database(folder)
    with recording() as kernels:  # each kernel's layers, for bridge profile
        compiled = compile_model(
            translation.mod,
            translation.params,
            tvm_target,
            database,
            separate_params=separate_params,
            optimize_for=optimize_for,
        )
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
        "input_shapes": _shapes_json(input_shapes),
        "params": compiled.param_names,
        "optimize_for": optimize_for,
        "weights_bytes": sum(int(p.nbytes) for p in translation.params.values()),
        "params_bytes": compiled.params_bytes,
        "arena_bytes": compiled.arena_bytes,
        "build_seconds": round(time.perf_counter() - started, 3),
        "tuning_database": str(folder) if database is not None else None,
    }
    if tuning is not None:
        metadata["tuning"] = tuning.summary()
    metadata.update(kernel_metadata(kernels))
    if spec.device == "cuda":
        metadata["cuda_arch"] = str(tvm_target.attrs["arch"])
    built = BuiltModel(
        compiled.executable,
        translation.inputs,
        translation.outputs,
        metadata,
        spec=spec,
        params=compiled.params,
        num_threads=num_threads,
    )
    return built if quantizer is None else quantizer.finish(built)


def _shapes_json(input_shapes: InputShapes) -> Any:
    """``input_shapes=`` as the sidecar records it (lists; None when not given)."""
    if input_shapes is None:
        return None
    if isinstance(input_shapes, Mapping):
        return {str(k): list(v) for k, v in input_shapes.items()}
    return [list(v) if isinstance(v, (list, tuple)) else v for v in input_shapes]


def _stages(progress: Callable[[str, float | None], None] | None) -> Callable[[str], None]:
    """``report(description)`` for the stages of a build or tuning run: ``progress(..., None)``."""
    if progress is None:
        return lambda description: None
    return lambda description: progress(description, None)


def _tune_kernels(
    mod, spec, budget, folder, rpc_tracker, rpc_key, progress=None, optimize_for="balanced"
):
    """Tune ``mod`` (weights bound, as it will be compiled) into ``folder``, telling
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
        fuse(mod, tvm_target, optimize_for),
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
    separate_params: bool = True,
    optimize_for: str = "balanced",
    tuning_db: PathLike | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    custom_layers: CustomLayersArg = None,
    progress: Callable[[str, float | None], None] | None = None,
    input_shapes: InputShapes = None,
):
    """Search faster kernels for a model's target within ``budget`` (``"20m"``, ``"90s"``, or a
    number of trials) and store them in the target's tuning database; returns a TuningReport.

    Only kernels faster than bridge's default schedule *and* numerically equal to it on random
    inputs are stored. Kernels tuned before (by any model) are skipped, so tuning again only
    tunes what is new. Later builds for the same target use the stored kernels.
    ``progress`` is :func:`build`'s: ``progress(description, done)``, ``done`` the fraction of
    the budget spent (None while reading the model and measuring the default kernels).
    ``input_shapes`` as for :func:`build` (as you will build it).
    ``optimize_for`` must be the build's (it decides the kernels); ``separate_params`` does
    not change them (weights are transformed at build time either way).
    """
    from bridge.compile import bind_weights
    from bridge.targets import resolve
    from bridge.tuning import database_dir

    spec = resolve(target)
    report = _stages(progress)
    report(f"reading {Path(model).name}")
    translation, _ = _load_and_translate(
        model,
        weights,
        batch_size,
        None,
        report,
        device=spec.device,
        custom_layers=custom_layers,
        input_shapes=input_shapes,
    )
    mod = bind_weights(translation.mod, translation.params)
    folder = database_dir(spec.tvm_target(), tuning_db)
    return _tune_kernels(mod, spec, budget, folder, rpc_tracker, rpc_key, progress, optimize_for)


def check_modeltype(model: PathLike) -> str:
    """``"sequential"``, ``"functional"`` or ``"tflite"``."""
    return open_source(model).describe()["model_type"]


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
    notes: list[str] = field(default_factory=list)  # about the model as a whole

    @property
    def supported(self) -> bool:
        return all(row.status == "ok" for row in self.layers)


def inspect(
    model: PathLike,
    weights: PathLike | None = None,
    *,
    batch_size: int = 1,
    custom_layers: CustomLayersArg = None,
    input_shapes: InputShapes = None,
) -> ModelReport:
    """Per-layer class, output shape, parameter count and support status (never raises for
    unsupported layers; they are reported in the rows). ``input_shapes`` as for :func:`build`
    (a symbolic dimension shows as an expression in the shapes)."""
    source = open_source(model, weights, custom_layers)
    kind, version, rows = source.inspect_rows(batch_size, input_shapes)
    rows = [LayerRow(*row) for row in rows]
    return ModelReport(kind, source.name, version, rows, source.notes())

"""Where do two runs of a model diverge? Every layer's (TFLite: every tensor's) output compared.

``bridge.compare(model, weights, inputs=..., reference=...)`` builds the model once with every
layer as an output (``bridge.build(outputs=[...])``), runs it, and compares each output with the
reference, in model order. The reference is one of:

- a ``.npz`` written by ``python -m bridge.reference`` (Keras's own outputs; for ``.tflite``,
  LiteRT's tensors): its inputs are used when ``inputs`` is not given;
- ``"litert"``: LiteRT run here with every tensor preserved (``.tflite`` only; needs
  ``ai-edge-litert``);
- ``"int8"``: bridge's float build, against its ``quantize="int8"`` build calibrated on
  ``calibration`` (default: the inputs) — which layer loses accuracy when quantized;
- ``"native"``: bridge's build for this machine, against the build for ``target`` (run here,
  under ``qemu-aarch64`` as a bundle for an aarch64 preset, or read from ``runner_outputs``:
  the ``output<i>.npy`` files the bundle's ``run`` wrote on the device).

Tolerance (a layer is ok when all hold): ``max_abs <= atol + rtol * scale``, ``scale`` the
largest absolute value of the layer's reference output; and, unless the reference is all but
zero (its norm at most ``atol * sqrt(size)``), cosine similarity ``>= cosine``. Integer (quantized
TFLite) tensors are compared in real units, dequantized, one quantization step allowed on top.
Defaults: ``atol=1e-5, rtol=1e-3, cosine=0.999`` for float references; ``rtol=0.05,
cosine=0.99`` against ``"int8"``. ``max_rel`` is ``max_abs / scale``. The first divergent layer
is the first in model order that is not ok.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import DeviceError, InputError, ModelFileError
from bridge.reference import FORMAT as REFERENCE_FORMAT
from bridge.reference import INPUT_PREFIX, META_KEY

PathLike = str | Path
Progress = Callable[[str, "float | None"], None]
TABLE_FORMAT = "bridge-compare"
QEMU = {"aarch64": ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]}
NAMED_REFERENCES = ("litert", "int8", "native")


@dataclass(frozen=True)
class Tolerance:
    """When a layer agrees with its reference (see the module docstring)."""

    atol: float = 1e-5
    rtol: float = 1e-3
    cosine: float = 0.999


QUANTIZED_TOLERANCE = Tolerance(atol=1e-5, rtol=0.05, cosine=0.99)


@dataclass
class Row:
    """One layer (TFLite: tensor) compared; ``None`` numbers where they cannot be computed
    (shapes differ, or non-finite values), ``note`` then says why."""

    layer: str
    class_name: str
    shape: list[int]
    max_abs: float | None
    max_rel: float | None
    cosine: float | None
    ok: bool
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["class"] = row.pop("class_name")
        if row["note"] is None:
            del row["note"]
        return row


@dataclass
class CompareTable:
    """The result of :func:`compare`: rows in model order."""

    model: str
    reference: str
    tolerance: Tolerance
    rows: list[Row] = field(default_factory=list)
    unreferenced: list[str] = field(default_factory=list)  # layers the reference lacks

    @property
    def first_divergent(self) -> str | None:
        """The first layer in model order that is not within the tolerance."""
        return next((row.layer for row in self.rows if not row.ok), None)

    @property
    def ok(self) -> bool:
        return self.first_divergent is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "version": 1,
            "model": self.model,
            "reference": self.reference,
            "tolerance": asdict(self.tolerance),
            "rows": [row.to_dict() for row in self.rows],
            "first_divergent": self.first_divergent,
            "unreferenced": self.unreferenced,
        }

    def save(self, path: PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


def load(path: PathLike) -> CompareTable:
    """A table saved by :meth:`CompareTable.save`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {TABLE_FORMAT!r}")
        rows = [
            Row(
                r["layer"],
                r["class"],
                list(r["shape"]),
                r["max_abs"],
                r["max_rel"],
                r["cosine"],
                bool(r["ok"]),
                r.get("note"),
            )
            for r in data["rows"]
        ]
        tolerance = Tolerance(**data["tolerance"])
        table = CompareTable(data["model"], data["reference"], tolerance, rows)
        table.unreferenced = list(data.get("unreferenced", []))
        return table
    except OSError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelFileError(path, f"not a bridge compare table ({exc})") from exc


# --- measuring ---------------------------------------------------------------------------------


def measure(
    layer: str,
    class_name: str,
    got: np.ndarray,
    ref: np.ndarray,
    tolerance: Tolerance,
    step: float = 0.0,
) -> Row:
    """Compare one output (``got``) with its reference (``ref``), both in real units; ``step``
    is a quantization step allowed on top of the tolerance."""
    a, b = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    shape = list(b.shape)
    if a.shape != b.shape:
        if a.size != b.size:
            note = f"shape {tuple(a.shape)} where the reference has {tuple(b.shape)}"
            return Row(layer, class_name, shape, None, None, None, False, note)
        a = a.reshape(b.shape)
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.all() and not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        return Row(layer, class_name, shape, None, None, None, False, "non-finite values")
    a, b = a[finite], b[finite]
    max_abs = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if norm_a == 0 or norm_b == 0:
        cosine = 1.0 if norm_a == norm_b else 0.0
    else:
        cosine = float(np.dot(a, b) / (norm_a * norm_b))
    tiny = norm_b <= tolerance.atol * math.sqrt(max(b.size, 1))
    ok = max_abs <= tolerance.atol + tolerance.rtol * scale + step and (
        tiny or cosine >= tolerance.cosine
    )
    if math.isinf(max_rel):
        return Row(layer, class_name, shape, max_abs, None, cosine, ok, "the reference is zero")
    return Row(layer, class_name, shape, max_abs, max_rel, cosine, ok)


# --- the model's layers ------------------------------------------------------------------------


@dataclass
class Layers:
    """What can be compared in a model: output keys in model order with their class (operator),
    the real-unit (scale, zero point) of quantized TFLite tensors, and the model's input names."""

    kind: str  # "keras" or "tflite"
    name: str
    inputs: list[str]
    classes: dict[str, str]  # layer path / tensor name -> class / operator
    quantization: dict[str, tuple[float, int]]


def model_layers(model: PathLike, weights: PathLike | None, custom_layers=None) -> Layers:
    """Every layer (nested ones too, InputLayers left out) or every TFLite tensor an operator
    computes from the inputs (not from constants alone), in model order."""
    from bridge.sources import open_source

    source = open_source(model, weights, custom_layers)
    if source.kind != "tflite":
        graph = source.source.graph
        classes = {
            path: layer.class_name
            for path, layer in graph.walk_layers()
            if layer.class_name != "InputLayer"
        }
        return Layers("keras", Path(model).name, [r.layer for r in graph.inputs], classes, {})
    file = source.file
    classes: dict[str, str] = {}
    for op in file.ops:
        if all(t < 0 or file.constant(t) is not None for t in op.inputs):
            continue  # e.g. a float16 weight's DEQUANTIZE: a constant, not an activation
        for t in op.outputs:
            name = file.tensors[t].name
            classes.setdefault(name, op.name) if name else None
    inputs = [file.tensors[t].name for t in file.inputs]
    return Layers("tflite", Path(model).name, inputs, classes, _tflite_quantization(file))


def _tflite_quantization(file) -> dict[str, tuple[float, int]]:
    """(scale, zero point) of every integer tensor quantized per tensor, by name."""
    graph = file.model.Subgraphs(0)
    found = {}
    for desc in file.tensors:
        q = graph.Tensors(desc.index).Quantization()
        if desc.quantized and q is not None and q.ScaleLength() == 1:
            zero = int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0
            found[desc.name] = (float(q.Scale(0)), zero)
    return found


def _real(value: np.ndarray, quant: tuple[float, int] | None) -> tuple[np.ndarray, float]:
    """An output in real units, and one quantization step (0 for float outputs)."""
    if quant is None or value.dtype.kind not in "iu":
        return value, 0.0
    scale, zero = quant
    return (value.astype(np.float64) - zero) * scale, scale


# --- inputs and reference files ----------------------------------------------------------------


def read_reference(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays by key, meta) of a ``python -m bridge.reference`` file; the inputs stay in the
    arrays under ``__input__:<name>``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("a single array, not an .npz of layer outputs")
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a reference .npz ({_one_line(exc)})") from exc
    if META_KEY not in arrays:
        raise InputError(f"{path}: no {META_KEY} entry: write it with python -m bridge.reference")
    try:
        meta = json.loads(str(arrays.pop(META_KEY)))
        if meta.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
    except (ValueError, AttributeError) as exc:
        raise InputError(f"{path}: unreadable {META_KEY} ({_one_line(exc)})") from exc
    return arrays, meta


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def input_arrays(inputs: Any, names: list[str], label: str = "inputs") -> dict[str, np.ndarray]:
    """``inputs`` (an array, a list in input order, a dict by name, or a ``.npy``/``.npz``
    path) as arrays by input name."""
    if isinstance(inputs, (str, Path)):
        from bridge.reference import read_inputs

        return dict(zip(names, read_inputs(Path(inputs), names)))
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InputError(f"{label}: no array for input(s) {missing} (given {list(inputs)})")
        return {n: np.asarray(inputs[n]) for n in names}
    if isinstance(inputs, Sequence) and len(inputs) == len(names):
        return {n: np.asarray(a) for n, a in zip(names, inputs)}
    raise InputError(f"{label}: expected {len(names)} input(s) ({', '.join(names)})")


def reference_inputs(
    arrays: dict[str, np.ndarray], meta: dict[str, Any], names: list[str], label: str
) -> dict[str, np.ndarray]:
    """The inputs stored in a reference file, matched to the model's input names (by name, else
    by order)."""
    stored = [n for n in meta.get("inputs", []) if f"{INPUT_PREFIX}{n}" in arrays]
    if len(stored) != len(names):
        raise InputError(
            f"{label}: holds {len(stored)} input(s), the model takes {len(names)} "
            f"({', '.join(names)}); pass the inputs"
        )
    if set(stored) != set(names):  # same count, other names: in model order
        return {n: arrays[f"{INPUT_PREFIX}{s}"] for n, s in zip(names, stored)}
    return {n: arrays[f"{INPUT_PREFIX}{n}"] for n in names}


def _batch(inputs: dict[str, np.ndarray], kind: str) -> int:
    """The batch to build for: the inputs' first dimension (a TFLite model's is stored)."""
    if kind == "tflite":
        return 1
    batches = {a.shape[0] for a in inputs.values() if a.ndim}
    if len(batches) != 1:
        raise InputError(f"inputs: arrays with different batch sizes {sorted(batches)}")
    return batches.pop()


# --- running -----------------------------------------------------------------------------------


def _named(model, values: Any) -> dict[str, np.ndarray]:
    values = values if isinstance(values, list) else [values]
    return {info.name: np.asarray(v) for info, v in zip(model.outputs, values)}


def run_here(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A built model's outputs by name, run in this process."""
    return _named(model, model(dict(inputs)))


def run_bundle(model, inputs: dict[str, np.ndarray], folder: Path) -> dict[str, np.ndarray]:
    """Export ``model`` as a bundle into ``folder`` and run its native ``run`` on ``inputs``
    (under qemu-user for an aarch64 target on another machine); outputs by name."""
    spec = model.spec
    from bridge.targets import host_arch

    prefix: list[str] = []
    if spec.arch != host_arch():
        prefix = QEMU.get(spec.arch, [])
        if not prefix or shutil.which(prefix[0]) is None:
            raise DeviceError(
                f"{spec.name}: its bundle cannot run on this {host_arch()} machine"
                + (f" ({prefix[0]} not found)" if prefix else "")
                + ": write it with bundle_out=, run it on the device, pass its outputs as"
                " runner_outputs="
            )
    bundle = folder / "bundle"
    model.export(bundle, bundle=True)
    files = []
    for index, info in enumerate(model.inputs):
        np.save(bundle / f"in{index}.npy", np.asarray(inputs[info.name]).astype(info.dtype))
        files.append(f"in{index}.npy")
    result = subprocess.run(
        [*prefix, "./run", *files, "--out", "results"],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise DeviceError(f"{bundle}/run: exit code {result.returncode} ({reason})")
    return runner_outputs(bundle / "results", model)


def runner_outputs(where: PathLike, model) -> dict[str, np.ndarray]:
    """Outputs written by a bundle's ``run --out DIR`` (``output<i>.npy``; or an ``.npz`` with
    keys ``output<i>``), matched to ``model``'s outputs by position."""
    where = Path(where)
    if where.is_dir():
        files = {p.stem: p for p in where.glob("output*.npy")}
        load_one = lambda key: np.load(files[key], allow_pickle=False)  # noqa: E731
    elif where.is_file():
        try:
            data = np.load(where, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{where}: not an .npz of runner outputs ({_one_line(exc)})") from exc
        if not hasattr(data, "files"):
            raise InputError(f"{where}: a single array, not runner outputs")
        files = {key: key for key in data.files}
        load_one = lambda key: data[key]  # noqa: E731
    else:
        raise InputError(f"{where}: no such file or folder")
    expected = [f"output{i}" for i in range(len(model.outputs))]
    if sorted(files) != sorted(expected):
        raise InputError(
            f"{where}: holds {len(files)} output(s), the all-layers model has "
            f"{len(expected)} (output0 ... output{len(expected) - 1}): run the bundle compare "
            "wrote (bundle_out=) on these inputs"
        )
    got = {}
    for key, info in zip(expected, model.outputs):
        value = load_one(key)
        if info.shape and tuple(value.shape[1:]) != tuple(info.shape[1:]):
            raise InputError(
                f"{where}: {key} has shape {value.shape}, {info.name!r} is {info.shape}"
            )
        got[info.name] = value
    return got


def litert_outputs(
    model: PathLike, inputs: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """LiteRT's value of every tensor on ``inputs`` (``ai-edge-litert``), as a reference."""
    from bridge.reference import litert_reference

    return litert_reference(model, [inputs[n] for n in inputs])


# --- compare -----------------------------------------------------------------------------------


def compare(
    model: PathLike,
    weights: PathLike | None = None,
    *,
    inputs: Any = None,
    reference: PathLike | str | None = None,
    target: Any = "llvm",
    tolerance: Tolerance | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    cosine: float | None = None,
    calibration: Any = None,
    runner_outputs: PathLike | None = None,
    bundle_out: PathLike | None = None,
    custom_layers: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> CompareTable:
    """Compare every layer's output of ``model`` built for ``target`` with ``reference`` (a
    ``python -m bridge.reference`` ``.npz``, ``"litert"``, ``"int8"`` or ``"native"``; see the
    module docstring). ``tolerance`` (a :class:`Tolerance`) replaces the default rule, and
    ``atol``/``rtol``/``cosine`` each of its numbers. ``inputs``: an array, a list, a dict by
    input name or a ``.npy``/``.npz`` path (default: the reference file's). ``calibration``:
    the samples the int8 build is calibrated on (default: the inputs). ``runner_outputs``: the
    candidate's outputs from a bundle's ``run`` (a folder or ``.npz``) instead of running it;
    ``bundle_out``: also keep the all-layers bundle there (to run on a device).
    ``progress(description, done)`` as for :func:`bridge.build`, ``done`` the share of layers
    compared. Returns a :class:`CompareTable`."""
    report = progress or (lambda description, done: None)
    report(f"reading {Path(model).name}", None)
    layers = model_layers(model, weights, custom_layers)
    named = reference if isinstance(reference, str) and reference in NAMED_REFERENCES else None
    if reference is None:
        named = _default_reference(layers, target, runner_outputs)
    if named == "litert":
        _litert_available(model)  # before building anything
    ref_arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    if named is None:
        ref_arrays, meta = read_reference(reference)
    if inputs is not None:
        feeds = input_arrays(inputs, layers.inputs)
    elif meta:
        feeds = reference_inputs(ref_arrays, meta, layers.inputs, str(reference))
    else:
        raise InputError(f"{layers.name}: pass inputs (a .npy, or an .npz keyed by input name)")
    wanted = _wanted(layers, meta, ref_arrays, reference)
    build = _builder(model, weights, wanted, _batch(feeds, layers.kind), custom_layers, report)
    calibrate = None
    if named == "int8":
        calibrate = feeds if calibration is None else input_arrays(calibration, layers.inputs)
    candidate = build(target, calibrate)
    feeds = {info.name: _cast(feeds[info.name], info) for info in candidate.inputs}
    try:
        got = _candidate_outputs(candidate, feeds, runner_outputs, bundle_out, report)
    except InputError as exc:  # the model refused an input: name the file it came from
        where = inputs if isinstance(inputs, (str, Path)) else reference if meta else None
        raise InputError(f"{where}: {exc}" if where is not None else str(exc)) from exc
    ref_arrays, meta, label = _reference_outputs(
        named, model, candidate, build, feeds, (ref_arrays, meta), reference, report
    )
    if named != "native" and not _runs_natively(target):
        label += f"; bridge built for {candidate.spec.name}"
    if tolerance is None:
        tolerance = QUANTIZED_TOLERANCE if named == "int8" else Tolerance()
    tolerance = Tolerance(
        tolerance.atol if atol is None else atol,
        tolerance.rtol if rtol is None else rtol,
        tolerance.cosine if cosine is None else cosine,
    )
    keys = [k for k in _model_order(candidate, meta) if k in ref_arrays and k in got]
    table = CompareTable(layers.name, label, tolerance)
    table.unreferenced = [name for name in layers.classes if meta and name not in wanted]
    for index, key in enumerate(keys):
        report(f"comparing {key}", index / max(len(keys), 1))
        table.rows.append(_row(key, layers, got[key], ref_arrays[key], tolerance))
    report("compared", 1.0)
    return table


def _row(key: str, layers: Layers, got: np.ndarray, ref: np.ndarray, tolerance: Tolerance) -> Row:
    """One output compared, integer tensors in real units (one quantization step allowed)."""
    quant = layers.quantization.get(key)
    a, step_a = _real(got, quant)
    b, step_b = _real(ref, quant)
    klass = layers.classes.get(key.split(":")[0]) or layers.classes.get(key, "")
    return measure(key, klass, a, b, tolerance, max(step_a, step_b))


def _reference_outputs(named, model, candidate, build, feeds, from_file, reference, report):
    """(reference outputs by name, reference meta, one-line label) for a named reference, or
    ``from_file`` (a reference file's arrays and meta) otherwise."""
    if named == "litert":
        report("running LiteRT", None)
        arrays, meta = litert_outputs(model, feeds)
        return arrays, meta, f"LiteRT {meta.get('runtime_version', '')}, every tensor preserved"
    if named == "int8":
        floats = _candidate_outputs(build(candidate.spec, None), feeds, None, None, report)
        return floats, {}, "bridge float build (candidate: its int8 build)"
    if named == "native":
        report("building for this machine", None)
        label = f"bridge native build (candidate: {candidate.spec.name})"
        return run_here(build("llvm", None), feeds), {}, label
    arrays, meta = from_file
    return arrays, meta, _reference_label(Path(reference), meta)


def _cast(array: np.ndarray, info) -> np.ndarray:
    """A numeric input in the model input's dtype (anything else: the model refuses it)."""
    array = np.asarray(array)
    return array.astype(info.dtype) if array.dtype.kind in "biuf" else array


def _default_reference(layers: Layers, target: Any, runner_outputs: Any) -> str:
    """Without a reference: this machine's build against another target's, else LiteRT for a
    ``.tflite``; a Keras model built for this machine has nothing to be compared with."""
    if not _runs_natively(target) or runner_outputs is not None:
        return "native"
    if layers.kind == "tflite":
        return "litert"
    raise InputError(
        f"{layers.name}: nothing to compare with: pass a reference .npz (python -m "
        "bridge.reference), 'int8', or a target= other than this machine's"
    )


def _litert_available(model: PathLike) -> None:
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None:
        reason = "a LiteRT reference needs ai-edge-litert (pip install ai-edge-litert)"
        raise ModelFileError(model, reason)


def _runs_natively(target: Any) -> bool:
    return isinstance(target, str) and target in ("llvm", "native")


def _wanted(layers: Layers, meta: dict[str, Any], arrays: dict, reference) -> list[str]:
    """The layers to build as outputs: the model's, restricted to those in a reference file."""
    if not meta:
        return list(layers.classes)
    in_file = {key.split(":")[0] for key in arrays if not key.startswith(INPUT_PREFIX)}
    wanted = [name for name in layers.classes if name in in_file]
    if not wanted:
        raise InputError(
            f"{reference}: no layer of {layers.name} in it (was it written for another model?)"
        )
    return wanted


def _model_order(candidate, meta: dict[str, Any]) -> list[str]:
    """Output keys in the reference's model order (its layers list), else the build's."""
    keys = [info.name for info in candidate.outputs]
    order = [key for entry in meta.get("layers", []) for key in entry.get("outputs", [])]
    if not order:
        return keys
    position = {key: i for i, key in enumerate(order)}
    return sorted(keys, key=lambda k: position.get(k, len(order)))


def _builder(model, weights, wanted, batch, custom_layers, report):
    """``build(target, calibration)``: the all-layers model (quantized when ``calibration``
    is given), its stage messages passed to ``report``."""
    from bridge.api import build as build_model

    def build(target, calibration):
        options: dict[str, Any] = {}
        if calibration is not None:
            options = {"quantize": "int8", "calibration": calibration}
        return build_model(
            model,
            weights,
            target=target,
            batch_size=batch,
            outputs=wanted,
            custom_layers=custom_layers,
            progress=lambda stage, done: report(stage, None),
            **options,
        )

    return build


def _candidate_outputs(candidate, feeds, runner_outputs_path, bundle_out, report):
    """The candidate's outputs: read from a runner's output folder, run as a bundle (another
    CPU), or run here."""
    from bridge.targets import host_arch

    if bundle_out is not None:
        report(f"writing the bundle to {bundle_out}", None)
        candidate.export(Path(bundle_out), bundle=True)
        for index, info in enumerate(candidate.inputs):
            np.save(Path(bundle_out) / f"in{index}.npy", feeds[info.name])
    if runner_outputs_path is not None:
        return runner_outputs(runner_outputs_path, candidate)
    if candidate.spec.arch != host_arch():
        report(f"running the {candidate.spec.name} bundle", None)
        with tempfile.TemporaryDirectory(prefix="bridge-compare-") as tmp:
            return run_bundle(candidate, feeds, Path(tmp))
    report("running", None)
    return run_here(candidate, feeds)


def _reference_label(path: Path, meta: dict[str, Any]) -> str:
    runtime = meta.get("runtime")
    if runtime:
        return f"{path.name} ({runtime} {meta.get('runtime_version', '')})".replace(" )", ")")
    return f"{path.name} (Keras {meta.get('keras_version', '?')}, {meta.get('backend', '?')})"


class _CallableModule(types.ModuleType):
    """``bridge.compare`` is this module once ``import bridge.compare`` ran: calling it calls
    :func:`compare`, and ``bridge.compare.load`` reads a saved table either way."""

    def __call__(self, *args, **kwargs) -> CompareTable:
        return compare(*args, **kwargs)


compare.load = load  # type: ignore[attr-defined]
sys.modules[__name__].__class__ = _CallableModule

__all__ = ["CompareTable", "Row", "Tolerance", "compare", "load", "measure"]

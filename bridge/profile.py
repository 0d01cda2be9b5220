"""Per-layer profiles: the time of every kernel call, attributed to the model's layers.

Measuring (:func:`measure`) times each call the Relax VM makes during one call of the model,
with the VM's instrument hook (``set_instrument``; the native runner's ``run --profile`` does
the same on a device) and keeps the median of ``runs`` runs: the *raw* profile,
``{"format": "bridge-profile-raw", "calls": [{"name", "us"}, ...], ...}``. Rendering
(:func:`render`) needs only the artifact's metadata (``"kernels"``, recorded at build time by
``bridge.kernels_map``): each kernel call's time is split among the layers fused into it in
proportion to their FLOPs (equally where none has any), so a layer's GFLOP/s is its kernel's.
Calls of the VM's own builtins (``vm.builtin.*``: allocation, shape checks, reshapes) and its
shape functions form the row ``(runtime)``; kernels the metadata does not know, ``(unattributed)``.

No TVM compiler here: this runs where ``bridge.runtime`` runs.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.errors import ArtifactError, DeviceError, InputError

if TYPE_CHECKING:
    from bridge.runtime import Model

RAW_FORMAT = "bridge-profile-raw"
FORMAT = "bridge-profile"
VERSION = 1
RUNTIME_ROW = "(runtime)"
UNATTRIBUTED_ROW = "(unattributed)"
BUILTIN_PREFIX = "vm.builtin."
SHAPE_FUNC = "shape_func"  # TIR the VM runs to compute symbolic shapes (a dynamic batch)
Progress = Callable[[str, "float | None"], None]


@dataclass
class LayerRow:
    """One layer's share of a profile (times per call of the model)."""

    layer: str
    class_name: str
    us: float = 0.0
    share: float = 0.0
    flops: int = 0
    bytes: int = 0
    kernels: list[str] = field(default_factory=list)

    @property
    def gflops(self) -> float:
        return self.flops / (self.us * 1e3) if self.us > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "class": self.class_name,
            "us": self.us,
            "share": self.share,
            "flops": self.flops,
            "bytes": self.bytes,
            "gflops": self.gflops,
            "kernels": list(self.kernels),
        }


@dataclass
class KernelRow:
    """One compiled kernel: its time per call of the model (all its calls) and its layers."""

    name: str
    us: float = 0.0
    layers: list[str] = field(default_factory=list)
    flops: int = 0
    bytes: int = 0
    calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "us": self.us,
            "layers": list(self.layers),
            "flops": self.flops,
            "bytes": self.bytes,
            "calls": self.calls,
        }


@dataclass
class Profile:
    """A rendered profile: layers in model order, kernels by time."""

    model: str
    target: str
    threads: int
    runs: int
    layers: list[LayerRow]
    kernels: list[KernelRow]
    source: str = "python"
    device: str = "cpu"

    @property
    def total_us(self) -> float:
        return sum(row.us for row in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``bridge-profile`` version 1)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "target": self.target,
            "source": self.source,
            "device": self.device,
            "threads": self.threads,
            "runs": self.runs,
            "total_us": self.total_us,
            "layers": [row.to_dict() for row in self.layers],
            "kernels": [row.to_dict() for row in self.kernels],
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``; returns it."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], label: str = "profile") -> Profile:
        try:
            layers = [
                LayerRow(
                    str(r["layer"]),
                    str(r["class"]),
                    float(r["us"]),
                    float(r["share"]),
                    int(r["flops"]),
                    int(r["bytes"]),
                    [str(k) for k in r["kernels"]],
                )
                for r in data["layers"]
            ]
            kernels = [
                KernelRow(
                    str(k["name"]),
                    float(k["us"]),
                    [str(n) for n in k["layers"]],
                    int(k["flops"]),
                    int(k["bytes"]),
                    int(k.get("calls", 1)),
                )
                for k in data["kernels"]
            ]
            return cls(
                str(data["model"]),
                str(data["target"]),
                int(data["threads"]),
                int(data["runs"]),
                layers,
                kernels,
                str(data.get("source", "python")),
                str(data.get("device", "cpu")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{label}: malformed profile ({exc!r})") from exc


# --- measuring ----------------------------------------------------------------------------
def random_inputs(model: Model, seed: int = 0) -> list[np.ndarray]:
    """Inputs of the model's shapes and dtypes (unknown dimensions 1): standard normal floats,
    integers 0 or 1 (valid token ids and indices), random booleans."""
    rng = np.random.default_rng(seed)
    arrays = []
    for info in model.inputs:
        shape = tuple(1 if d is None else d for d in info.shape)
        kind = np.dtype(info.dtype).kind
        if kind == "f":
            arrays.append(rng.standard_normal(shape).astype(info.dtype))
        else:
            arrays.append(rng.integers(0, 2, shape).astype(info.dtype))
    return arrays


def measure(
    model: Model,
    inputs: Any = None,
    *,
    runs: int = 10,
    warmup: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The raw profile of ``model`` on ``inputs`` (random ones when None): every VM call of one
    call of the model, the median of ``runs`` runs each, in call order."""
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
        raise InputError(f"runs must be a positive integer, got {runs!r}")
    if model._vm is None:
        raise DeviceError(model._unavailable)
    if inputs is None:
        inputs = random_inputs(model)
    arrays = model._arrange(*_as_call(inputs))
    report = progress or (lambda description, done: None)
    for _ in range(max(1, warmup)):  # at least one: it applies the thread count
        model(*arrays)
    timings = _timed_runs(model, arrays, runs, report)
    report(f"profiled {runs} runs", 1.0)
    names = [name for name, _ in timings[0]]
    if any([name for name, _ in t] != names for t in timings[1:]):
        raise DeviceError("the model made different calls from run to run; cannot profile it")
    calls = [
        {"name": name, "us": statistics.median(t[i][1] for t in timings)}
        for i, name in enumerate(names)
    ]
    return {
        "format": RAW_FORMAT,
        "version": VERSION,
        "source": "python",
        "device": model.metadata.get("device", "cpu"),
        "threads": _threads(model),
        "runs": runs,
        "calls": calls,
    }


def _as_call(inputs: Any) -> tuple[tuple, dict]:
    """``inputs`` as the positional/keyword arguments of a model call."""
    if isinstance(inputs, Mapping):
        return (dict(inputs),), {}
    if isinstance(inputs, (list, tuple)):
        return tuple(inputs), {}
    return (inputs,), {}


def _timed_runs(
    model: Model, arrays: list[np.ndarray], runs: int, report: Progress
) -> list[list[tuple[str, float]]]:
    """(function symbol, microseconds) of every VM call, in the order the calls start, for
    each of ``runs`` runs made back to back (no pause for the thread pool to fall asleep in)."""
    import tvm_ffi
    from tvm.runtime import tensor

    clock = time.perf_counter_ns
    cuda = model.metadata.get("device") == "cuda"
    names: list[str] = []
    times: list[float] = []
    open_calls: list[tuple[int, int]] = []  # (index, start) of the calls under way

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            names.append(str(symbol))
            times.append(0.0)
            open_calls.append((len(names) - 1, clock()))
        elif open_calls:
            if cuda:  # kernels launch asynchronously: time them to completion
                model._device.sync()
            index, start = open_calls.pop()
            times[index] = (clock() - start) / 1e3
        return 0

    # the thread count is the model's: calling it (the warm-up) applied it
    values = [tensor(a, model._device) for a in arrays] + model._param_tensors
    main = model._vm["main"]
    timings = []
    model._vm.set_instrument(tvm_ffi.convert(instrument))
    try:
        for run in range(-1, runs):  # run -1 wakes the thread pool and is not kept
            report(f"profiling run {max(run, 0) + 1}/{runs}", max(run, 0) / runs)
            names.clear(), times.clear(), open_calls.clear()
            main(*values)
            if run >= 0:
                timings.append(list(zip(names, times)))
    finally:
        model._vm.set_instrument(None)
    return timings


def _threads(model: Model) -> int:
    import tvm_ffi

    if model.metadata.get("device") == "cuda":
        return 1
    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


def profile_model(
    model: Model,
    inputs: Any = None,
    *,
    runs: int = 10,
    progress: Progress | None = None,
) -> Profile:
    """``model.profile(...)``: measure, then render with the model's own metadata."""
    return render(measure(model, inputs, runs=runs, progress=progress), model.metadata)


# --- rendering ----------------------------------------------------------------------------
def render(raw: Mapping[str, Any], metadata: Mapping[str, Any], label: str = "profile") -> Profile:
    """Attribute a raw profile's calls to layers with the artifact ``metadata``."""
    calls = _raw_calls(raw, label)
    kernels_meta = metadata.get("kernels") or {}
    order = [(e["layer"], e["class"]) for e in metadata.get("layer_order") or []]
    rows = {name: LayerRow(name, cls) for name, cls in order}
    kernels: dict[str, KernelRow] = {}
    seen: dict[str, int] = {}
    for name, us in calls:
        builtin = name.startswith(BUILTIN_PREFIX) or name.startswith(SHAPE_FUNC)
        kernel = kernels.setdefault(name, KernelRow(name))
        kernel.us += us
        kernel.calls += 1
        sites = [] if builtin else kernels_meta.get(name, {}).get("calls") or []
        site = sites[seen.get(name, 0) % len(sites)] if sites else None
        seen[name] = seen.get(name, 0) + 1
        if not site or not site.get("layers"):
            row_name = RUNTIME_ROW if builtin else UNATTRIBUTED_ROW
            row = rows.setdefault(row_name, LayerRow(row_name, "-"))
            row.us += us
            if name not in row.kernels:
                row.kernels.append(name)
            kernel.layers = [row_name]
            continue
        _attribute(site, name, us, rows, kernel)
    total = sum(row.us for row in rows.values())
    layers = [row for row in rows.values() if row.kernels]
    for row in layers:
        row.share = row.us / total if total > 0 else 0.0
    return Profile(
        model=str(metadata.get("model", "?")),
        target=str(metadata.get("target_name", metadata.get("target", "?"))),
        threads=int(raw.get("threads", 0) or 0),
        runs=int(raw.get("runs", 0) or 0),
        layers=layers,
        kernels=sorted(kernels.values(), key=lambda k: -k.us),
        source=str(raw.get("source", "python")),
        device=str(raw.get("device", metadata.get("device", "cpu"))),
    )


def _attribute(
    site: Mapping[str, Any], name: str, us: float, rows: dict[str, LayerRow], kernel: KernelRow
) -> None:
    """Split one kernel call among its layers by FLOPs (equally when none has any)."""
    layers = [str(n) for n in site.get("layers", [])]
    flops = [int(f) for f in site.get("flops", [0] * len(layers))]
    total = sum(flops)
    weights = [f / total for f in flops] if total > 0 else [1 / len(layers)] * len(layers)
    nbytes = int(site.get("bytes", 0))
    kernel.flops += total
    kernel.bytes += nbytes
    for layer, share, count in zip(layers, weights, flops):
        if layer not in kernel.layers:
            kernel.layers.append(layer)
        row = rows.setdefault(layer, LayerRow(layer, "?"))
        row.us += us * share
        row.flops += count
        row.bytes += round(nbytes * share)
        if name not in row.kernels:
            row.kernels.append(name)


def _raw_calls(raw: Mapping[str, Any], label: str) -> list[tuple[str, float]]:
    if raw.get("format") != RAW_FORMAT:
        raise ArtifactError(f"{label}: not a raw bridge profile (format {raw.get('format')!r})")
    if raw.get("version") != VERSION:
        raise ArtifactError(f"{label}: raw profile version {raw.get('version')!r} is not 1")
    try:
        calls = [(str(c["name"]), float(c["us"])) for c in raw["calls"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{label}: malformed raw profile calls ({exc!r})") from exc
    if any(not np.isfinite(us) or us < 0 for _, us in calls):
        raise ArtifactError(f"{label}: a call's time is negative or not a number")
    return calls


# --- files --------------------------------------------------------------------------------
def read_json(path: str | Path) -> dict[str, Any]:
    """A profile file's JSON object (ArtifactError naming the file otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: not a profile (a JSON {type(data).__name__})")
    return data


def load(path: str | Path, metadata: Mapping[str, Any] | str | Path | None = None) -> Profile:
    """A profile saved by :meth:`Profile.save`, or a raw one (``run --profile``) rendered with
    ``metadata`` (the artifact metadata: a dict, or the path of a ``.meta.json``, a library or
    a bundle folder)."""
    data = read_json(path)
    if data.get("format") == FORMAT:
        return Profile.from_dict(data, str(path))
    if data.get("format") != RAW_FORMAT:
        raise ArtifactError(f"{path}: not a bridge profile (format {data.get('format')!r})")
    if metadata is None:
        raise ArtifactError(
            f"{path}: a raw profile needs the model's metadata (its .meta.json) to name layers"
        )
    if not isinstance(metadata, Mapping):
        metadata = read_metadata(metadata)
    return render(data, metadata, str(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported model: ``model.meta.json``, ``model.so`` or a bundle."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.meta.json"))
        if len(found) != 1:
            raise ArtifactError(
                f"{path}: expected one .meta.json in the folder, found {len(found)}"
            )
        path = found[0]
    elif not path.name.endswith(".meta.json"):
        path = path.with_name(path.stem + ".meta.json")  # as bridge.runtime.metadata_path
    data = read_json(path)
    if "kernels" not in data:
        raise ArtifactError(f"{path}: no kernel table (built by a bridge without profiles)")
    return data

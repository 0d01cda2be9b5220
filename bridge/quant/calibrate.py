"""Calibration data for ``quantize="int8"``: checked against the model's inputs before any work,
and the activation ranges observed on it (min/max, or a percentile of the values).

Samples may be one array (first axis counts samples), a list of arrays (one per model input), a
dict by input name, or an iterable of batches in any of those forms; all of it is read, checked
and joined into one array per input, in model input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import CalibrationError
from bridge.signature import TensorInfo

METHODS = ("minmax", "percentile")
BINS = 2048  # histogram bins per tensor for the percentile method
Progress = Callable[[str, float | None], None]


def calibration_arrays(samples: Any, inputs: Sequence[TensorInfo]) -> list[np.ndarray]:
    """The samples as one array per model input (float32 or the input's dtype), checked: names,
    shapes (any number of samples), numeric dtypes, finite values, equal sample counts."""
    if samples is None:
        raise CalibrationError("quantize='int8' needs calibration samples (calibration=...)")
    if isinstance(samples, (str, Path)):
        samples = load_npz(samples, inputs)
    batches = [_per_input(samples, inputs)] if _is_whole(samples, inputs) else None
    if batches is None:
        try:
            batches = [_per_input(batch, inputs) for batch in samples]
        except TypeError as exc:
            if "iterable" not in str(exc):
                raise
            raise CalibrationError(
                f"calibration samples of type {type(samples).__name__}: expected an array, a list "
                "of arrays (one per input), a dict by input name, or an iterable of batches"
            ) from exc
    if not batches:
        raise CalibrationError("calibration samples are empty (no batches)")
    joined = []
    for index, info in enumerate(inputs):
        parts = [batch[index] for batch in batches]
        shapes = {part.shape[1:] for part in parts}
        if len(shapes) > 1:
            raise CalibrationError(
                f"calibration input '{info.name}': batches have different shapes {sorted(shapes)}"
            )
        joined.append(np.concatenate(parts) if len(parts) > 1 else parts[0])
    counts = {info.name: len(array) for info, array in zip(inputs, joined)}
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"calibration inputs have different sample counts: {counts}")
    for info, array in zip(inputs, joined):
        if not len(array):
            raise CalibrationError(f"calibration input '{info.name}' has no samples")
    return joined


def _is_whole(samples: Any, inputs: Sequence[TensorInfo]) -> bool:
    """Whether ``samples`` is one batch (array, dict, or one array per input) rather than an
    iterable of batches."""
    if isinstance(samples, (np.ndarray, Mapping)):
        return True
    if isinstance(samples, (list, tuple)) and len(samples) == len(inputs) > 1:
        return all(not isinstance(s, (list, tuple, Mapping)) for s in samples)
    return False


def _per_input(batch: Any, inputs: Sequence[TensorInfo]) -> list[np.ndarray]:
    """One batch as a checked array per input."""
    if isinstance(batch, Mapping):
        unknown = [str(k) for k in batch if k not in {i.name for i in inputs}]
        if unknown:
            names = [i.name for i in inputs]
            raise CalibrationError(
                f"calibration input '{unknown[0]}' is not a model input (inputs: {names})"
            )
        missing = [i.name for i in inputs if i.name not in batch]
        if missing:
            raise CalibrationError(f"calibration input '{missing[0]}' is missing")
        values = [batch[i.name] for i in inputs]
    elif len(inputs) == 1 and not (isinstance(batch, (list, tuple)) and len(batch) == 1):
        values = [batch]
    elif isinstance(batch, (list, tuple)) and len(batch) == len(inputs):
        values = list(batch)
    else:
        count = len(batch) if isinstance(batch, (list, tuple)) else 1
        raise CalibrationError(
            f"calibration batch holds {count} arrays for {len(inputs)} inputs "
            f"({[i.name for i in inputs]}): give one per input, or a dict by name"
        )
    return [_checked(value, info) for value, info in zip(values, inputs)]


def _checked(value: Any, info: TensorInfo) -> np.ndarray:
    where = f"calibration input '{info.name}'"
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise CalibrationError(f"{where}: not a rectangular array ({exc})") from exc
    if array.dtype.kind not in "biuf":
        raise CalibrationError(f"{where}: dtype {array.dtype} is not numeric")
    expected = tuple(info.shape[1:])
    if array.ndim != len(info.shape) or not _fits(array.shape[1:], expected):
        shown = "(N, " + ", ".join("?" if d is None else str(d) for d in expected) + ")"
        raise CalibrationError(f"{where}: shape {array.shape}, the model takes {shown}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise CalibrationError(f"{where}: {bad} values are NaN or infinite")
    return array.astype(info.dtype, copy=False)


def _fits(shape: tuple[int, ...], expected: tuple) -> bool:
    return all(d is None or d == s for s, d in zip(shape, expected))


def load_npz(path: str | Path, inputs: Sequence[TensorInfo]) -> dict[str, np.ndarray] | np.ndarray:
    """Calibration samples from a ``.npz`` (arrays keyed by input name; one array of any name
    for a single-input model) or a ``.npy``."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: not a .npz or .npy file ({exc})") from exc
    if isinstance(data, np.ndarray):
        return data
    with data:
        arrays = {name: data[name] for name in data.files}
    if not arrays:
        raise CalibrationError(f"{path}: holds no arrays")
    if len(inputs) == 1 and len(arrays) == 1:
        return next(iter(arrays.values()))
    return arrays


@dataclass
class Ranges:
    """Observed ranges by tensor key: ``low`` and ``high`` as floats."""

    low: dict[str, float]
    high: dict[str, float]

    def get(self, key: str) -> tuple[float, float] | None:
        if key not in self.low:
            return None
        return self.low[key], self.high[key]


def batches(arrays: list[np.ndarray], batch: int) -> Iterable[tuple[int, list[np.ndarray]]]:
    """``(count, inputs)`` chunks of ``batch`` samples; the last one is padded by repeating its
    last sample (``count`` says how many are real)."""
    total = len(arrays[0])
    for start in range(0, total, batch):
        count = min(batch, total - start)
        chunk = []
        for array in arrays:
            part = array[start : start + count]
            if count < batch:
                part = np.concatenate([part, np.repeat(part[-1:], batch - count, axis=0)])
            chunk.append(part)
        yield count, chunk


def observe(
    run: Callable[[list[np.ndarray]], list[np.ndarray]],
    arrays: list[np.ndarray],
    keys: list[str],
    extra: int,
    batch: int,
    method: str = "minmax",
    percentile: float = 99.99,
    progress: Progress | None = None,
) -> tuple[Ranges, list[np.ndarray]]:
    """Run ``run`` (the float model: ``len(keys)`` observed tensors then ``extra`` outputs) over
    the samples; returns the ranges of the observed tensors and the ``extra`` outputs joined.
    ``percentile``: the range keeps that percentage of each tensor's values (a second pass fills
    histograms between the min and max of the first)."""
    if method not in METHODS:
        raise CalibrationError(f"calibration_method={method!r}: expected one of {METHODS}")
    if method == "percentile" and not 50.0 < float(percentile) <= 100.0:
        raise CalibrationError(f"percentile={percentile}: expected a number in (50, 100]")
    low = {k: np.inf for k in keys}
    high = {k: -np.inf for k in keys}
    kept: list[list[np.ndarray]] = [[] for _ in range(extra)]
    passes = 2 if method == "percentile" else 1
    total = len(arrays[0])

    def sweep(index: int, visit: Callable[[str, np.ndarray], None]) -> None:
        done = 0
        for count, chunk in batches(arrays, batch):
            if progress is not None:
                label = f"calibrating on {total} samples" + (
                    f" (pass {index + 1} of {passes})" if passes > 1 else ""
                )
                progress(label, (index + done / total) / passes)
            outs = run(chunk)
            for key, value in zip(keys, outs):
                visit(key, np.asarray(value)[:count])
            if index == 0:
                for store, value in zip(kept, outs[len(keys) :]):
                    store.append(np.asarray(value)[:count])
            done += count

    def extremes(key: str, value: np.ndarray) -> None:
        if value.size:
            low[key] = min(low[key], float(value.min()))
            high[key] = max(high[key], float(value.max()))

    sweep(0, extremes)
    if method == "percentile":
        histograms = {k: np.zeros(BINS, np.int64) for k in keys}

        def fill(key: str, value: np.ndarray) -> None:
            if np.isfinite(low[key]) and high[key] > low[key]:
                counts, _ = np.histogram(value, BINS, (low[key], high[key]))
                histograms[key] += counts

        sweep(1, fill)
        for key in keys:
            if histograms[key].sum():
                low[key], high[key] = _percentile_range(
                    histograms[key], low[key], high[key], float(percentile)
                )
    if progress is not None:
        progress(f"calibrated on {total} samples", 1.0)
    finite = [k for k in keys if np.isfinite(low[k]) and np.isfinite(high[k])]
    ranges = Ranges({k: low[k] for k in finite}, {k: high[k] for k in finite})
    return ranges, [np.concatenate(parts) for parts in kept]


def _percentile_range(
    counts: np.ndarray, low: float, high: float, percentile: float
) -> tuple[float, float]:
    """From the ``100 - percentile``-th to the ``percentile``-th percentile of a histogram's
    values (bin edges, outward)."""
    edges = np.linspace(low, high, len(counts) + 1)
    cumulative = np.cumsum(counts) / counts.sum()
    tail = (100.0 - percentile) / 100.0
    first = int(np.searchsorted(cumulative, tail, side="right"))
    last = int(np.searchsorted(cumulative, 1.0 - tail, side="left"))
    return float(edges[min(first, len(counts) - 1)]), float(edges[min(last + 1, len(counts))])


def quantization(low: float, high: float) -> tuple[float, int]:
    """Asymmetric int8 ``(scale, zero_point)`` for a range (widened to hold 0, as TFLite's
    converter does, so that 0 is exact: padding and ReLU stay exact)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low < 1e-30:
        return 1.0, 0
    scale = (high - low) / 255.0
    zero = int(np.clip(np.round(-128.0 - low / scale), -128, 127))
    return float(np.float32(scale)), zero

"""``bridge.build(..., quantize="int8", calibration=samples)``: check the samples against the
model's inputs (before any work), build the float model with every activation as an extra
output, run it over the samples to observe the ranges, translate the int8 model
(:mod:`bridge.quant.keras`), and, once it is compiled, measure how closely it follows the float
model on the same samples (:meth:`Quantization.summary`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.errors import CalibrationError, DeviceError
from bridge.quant.calibrate import METHODS, Ranges, batches, calibration_arrays, observe
from bridge.signature import TensorInfo

if TYPE_CHECKING:
    from bridge.quant.keras import Fallback
    from bridge.sources import KerasModel
    from bridge.translation import Translation

MODES = ("int8",)
CALIBRATION_BATCH = 8
Progress = Callable[[str, float | None], None]


@dataclass
class Quantization:
    """What quantizing found: the float layers, the observed ranges, and the float model's
    outputs on the calibration samples (to measure the int8 model against)."""

    method: str
    percentile: float | None
    samples: list[np.ndarray]
    reference: list[np.ndarray]
    ranges: Ranges
    integer_layers: list[str]
    fallbacks: list[Fallback]
    agreement: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None

    def measure(self, model) -> None:
        """Run the int8 model over the calibration samples and compare with the float model:
        max and mean absolute error per output, top-1 agreement for classifier outputs."""
        try:
            outputs = run_batched(model, self.samples, len(self.reference))
        except DeviceError as exc:
            self.note = f"agreement not measured: {exc}"
            return
        self.agreement = [
            agreement(info.name, got, want)
            for info, got, want in zip(model.outputs, outputs, self.reference)
        ]

    def summary(self) -> dict[str, Any]:
        """The artifact metadata's ``quantization`` entry (JSON)."""
        return {
            "mode": "int8",
            "weights": "per-channel symmetric int8",
            "calibration_method": self.method,
            "percentile": self.percentile,
            "calibration_samples": len(self.samples[0]),
            "integer_layers": len(self.integer_layers),
            "float_layers": [
                {"layer": f.path, "class": f.class_name, "reason": f.reason} for f in self.fallbacks
            ],
            "agreement": self.agreement,
            "agreement_note": self.note,
            "ranges": {
                k: [round(lo, 6), round(self.ranges.high[k], 6)]
                for k, lo in self.ranges.low.items()
            },
        }


def agreement(name: str, got: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    error = np.abs(got.astype(np.float64) - want.astype(np.float64))
    row: dict[str, Any] = {
        "output": name,
        "max_abs_error": float(error.max(initial=0.0)),
        "mean_abs_error": float(error.mean()) if error.size else 0.0,
    }
    if want.ndim == 2 and want.shape[1] > 1:  # a classifier's scores
        row["top1_agreement"] = float(np.mean(got.argmax(axis=1) == want.argmax(axis=1)))
    return row


def run_batched(model, arrays: list[np.ndarray], count: int) -> list[np.ndarray]:
    """A compiled model over all samples, in chunks of its batch (a symbolic batch: 8)."""
    batch = model.inputs[0].shape[0] or CALIBRATION_BATCH
    kept: list[list[np.ndarray]] = [[] for _ in range(count)]
    for real, chunk in batches(arrays, batch):
        outs = model(*chunk)
        outs = outs if isinstance(outs, list) else [outs]
        for store, value in zip(kept, outs):
            store.append(np.asarray(value)[:real])
    return [np.concatenate(parts) for parts in kept]


def model_inputs(source: KerasModel, shapes: dict[str, tuple] | None = None) -> list[TensorInfo]:
    """The model's inputs from its config (batch unknown; sizes ``input_shapes`` fixes filled
    in), before translating anything."""
    from bridge.convert.walk import input_dtype, input_shape

    graph = source.source.graph
    infos = []
    for ref in graph.inputs:
        layer = graph.layer(ref.layer)
        shape = list(input_shape(layer) or [None])
        fixed = (shapes or {}).get(layer.name, ())
        for axis, dim in enumerate(fixed):
            if axis < len(shape) and shape[axis] is None and isinstance(dim, int):
                shape[axis] = dim
        dims = tuple(d if isinstance(d, int) else None for d in shape)
        infos.append(TensorInfo(layer.name, (None, *dims[1:]), input_dtype(layer)))
    return infos


def requested(source: KerasModel, input_shapes: Any) -> dict[str, tuple]:
    """``input_shapes=`` by input name (checked as the translation checks it)."""
    from bridge.translation import requested_shapes

    names = [ref.layer for ref in source.source.graph.inputs]
    return requested_shapes(input_shapes, names, source.source.label)


def unbatched(shapes: dict[str, tuple]) -> dict[str, tuple] | None:
    """``input_shapes`` for the calibration build, whose batch is its own."""
    return {name: (None, *shape[1:]) for name, shape in shapes.items()} or None


def check_arguments(mode: str, method: str, percentile: float) -> None:
    if mode not in MODES:
        raise CalibrationError(f"quantize={mode!r}: expected one of {MODES}")
    if method not in METHODS:
        raise CalibrationError(f"calibration_method={method!r}: expected one of {METHODS}")
    if not 50.0 < float(percentile) <= 100.0:
        raise CalibrationError(f"percentile={percentile}: expected a number in (50, 100]")


class Quantizer:
    """One model's quantization: the checked samples first (:func:`prepare`), then the int8
    translation (:meth:`translate`), then the built model's agreement (:meth:`finish`)."""

    def __init__(
        self, source: KerasModel, arrays: list[np.ndarray], method: str, percentile, shapes=None
    ):
        self.source = source
        self.shapes = shapes or {}  # input_shapes= by input name
        self.arrays = arrays
        self.method = method
        self.percentile = float(percentile)
        self.found: Quantization | None = None

    def translate(
        self,
        batch_size: int | None = 1,
        outputs: list[str] | None = None,
        device: str = "cpu",
        report: Callable[[str], None] = lambda stage: None,
        progress: Progress | None = None,
    ) -> Translation:
        """Observe the ranges with the float model, then translate the int8 model."""
        from bridge.quant.keras import CalibrationWalker, QuantWalker, keys_of, output_names
        from bridge.quant.plan import MARK, make_plan

        source = self.source
        plan = make_plan(source.source.graph, outputs or ())
        calibrating = functools.partial(CalibrationWalker, plan=plan)
        report("building the float model to calibrate with")
        calibration_shapes = unbatched(self.shapes)
        first = _translate(source, calibrating, CALIBRATION_BATCH, None, "cpu", calibration_shapes)
        names = keys_of(first.layer_shapes)
        keys = [name[len(MARK) :] for name in names]
        finals = list(outputs) if outputs else output_names(first.layer_shapes)
        observed = _translate(
            source, calibrating, CALIBRATION_BATCH, names + finals, "cpu", calibration_shapes
        )
        float_model = _host_model(observed)
        batch = float_model.inputs[0].shape[0] or CALIBRATION_BATCH

        def run(chunk: list[np.ndarray]) -> list[np.ndarray]:
            outs = float_model(*chunk)
            return outs if isinstance(outs, list) else [outs]

        extra = len(observed.outputs) - len(keys)
        ranges, reference = observe(
            run, self.arrays, keys, extra, batch, self.method, self.percentile, progress
        )
        report("translating to int8")
        made: list[QuantWalker] = []

        def quantizing(*args: Any, **kwargs: Any) -> QuantWalker:
            made.append(QuantWalker(*args, plan=plan, ranges=ranges, **kwargs))
            return made[-1]

        shapes = self.shapes or None
        translation = _translate(source, quantizing, batch_size, outputs, device, shapes)
        translation = prune_params(translation)
        walker = made[-1]
        self.found = Quantization(
            self.method,
            self.percentile if self.method == "percentile" else None,
            self.arrays,
            reference,
            ranges,
            sorted(walker.integer_layers),
            walker.fallbacks,
        )
        return translation

    def finish(self, model):
        """Measure the built int8 model against the float one; record it in its metadata."""
        assert self.found is not None, "translate first"
        self.found.measure(model)
        model.metadata["quantization"] = self.found.summary()
        return model


def prepare(
    model,
    weights=None,
    *,
    mode: str = "int8",
    calibration: Any = None,
    method: str = "minmax",
    percentile: float = 99.99,
    custom_layers=None,
    input_shapes: Any = None,
) -> Quantizer:
    """Read the model and check the arguments and calibration samples (before any work);
    ``input_shapes`` as for ``bridge.build``."""
    from bridge.sources import open_source

    check_arguments(mode, method, percentile)
    source = open_source(model, weights, custom_layers)
    if source.kind != "keras":
        raise CalibrationError(
            f"{model}: quantize= quantizes Keras models; a .tflite file carries its own "
            "quantization (build it without quantize=)"
        )
    shapes = requested(source, input_shapes)
    arrays = calibration_arrays(calibration, model_inputs(source, shapes))
    return Quantizer(source, arrays, method, percentile, shapes)


def _translate(
    source: KerasModel, walker_class, batch_size, outputs, device, input_shapes=None
) -> Translation:
    """``source.translate`` with another walker (the same checks and problems)."""
    return source.translate(
        batch_size, outputs, device, input_shapes=input_shapes, walker_class=walker_class
    )


def _host_model(translation: Translation):
    """The calibration model, compiled for this machine."""
    from bridge.compile import bind_weights, compile_module
    from bridge.export import BuiltModel
    from bridge.targets import resolve

    spec = resolve("llvm")
    mod = bind_weights(translation.mod, translation.params)
    executable = compile_module(mod, spec.tvm_target())
    return BuiltModel(executable, translation.inputs, translation.outputs, {}, spec=spec)


def prune_params(translation: Translation) -> Translation:
    """Drop the weights of layers that became integer kernels (their int8 copies are
    constants) from ``main``'s parameters, so ``separate_params`` stores only what runs."""
    from tvm import relax

    func = translation.mod["main"]
    count = int(func.attrs["num_input"])
    used = {v.name for v in relax.analysis.free_vars(func.body)}
    kept = [p for p in func.params[count:] if p.name in used]
    if len(kept) == len(func.params) - count:
        return translation
    pruned = relax.Function(
        list(func.params[:count]) + kept, func.body, func.ret_ty, func.is_pure, func.attrs
    )
    mod = translation.mod
    mod["main"] = pruned
    translation.mod = mod
    translation.params = {k: v for k, v in translation.params.items() if k in used}
    return translation

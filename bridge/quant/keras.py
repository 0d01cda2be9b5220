"""Keras models quantized to int8: two walks of the Keras graph (subclasses of the converter's).

* :class:`CalibrationWalker` builds the float model and names every float tensor a layer call
  makes (and each model input) as an extra output, so running it over calibration samples
  observes every activation range; a product layer's fused activation that has no integer clamp
  is split off so the range before it is observed too.
* :class:`QuantWalker` builds the int8 model: layers with an integer emitter
  (:mod:`bridge.quant.keras_layers`) run on int8 tensors with the observed ranges; any other
  layer runs its float converter between dequantize and (when an integer layer reads it)
  quantize, and is recorded in ``fallbacks``. Inputs and outputs stay float, so the model has
  the float build's signature; ``outputs=`` layers come back dequantized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.activations import ACTIVATIONS
from bridge.convert.context import dtype_of, static_shape
from bridge.convert.spatial import channels_first, ntuple, paddings
from bridge.convert.walk import _Walker
from bridge.errors import BridgeError
from bridge.keras.graph import Layer, ModelGraph
from bridge.quant import elementwise
from bridge.quant.calibrate import Ranges, quantization
from bridge.quant.keras_layers import EMITTERS, SHAPE_ONLY, QValue, Site
from bridge.quant.plan import (
    DEPTHWISE_PART,
    MARK,
    NOT_ELEMENTWISE,
    Plan,
    activation_layer,
    call_key,
    input_key,
    linear_copy,
    split_activation,
)

OUTPUT_MARK = f"{MARK}output"


@dataclass
class Fallback:
    """A layer that runs in float in the int8 model, and why."""

    path: str
    class_name: str
    reason: str


def quantize(x: relax.Expr, scale: float, zero_point: int) -> relax.Expr:
    """float32 -> int8: ``clip(round(x / scale) + zero_point)``."""
    scaled = R.round(R.multiply(x, relax.const(np.float32(1.0 / scale), "float32")))
    shifted = R.add(scaled, relax.const(np.float32(zero_point), "float32"))
    return R.astype(R.clip(shifted, -128, 127), "int8")


def dequantize(q: relax.Expr, scale: float, zero_point: int) -> relax.Expr:
    """int8 -> float32: ``(q - zero_point) * scale``."""
    centred = R.subtract(R.astype(q, "float32"), relax.const(np.float32(zero_point), "float32"))
    return R.multiply(centred, relax.const(np.float32(scale), "float32"))


class _Counting(_Walker):
    """Counts the times each layer call is emitted (a nested model called twice re-emits its
    layers' calls), so both walks key tensors alike."""

    def __init__(self, *args: Any, plan: Plan, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.seen: dict[tuple[str, int], int] = {}

    def occurrence(self, path: str, index: int) -> int:
        count = self.seen.get((path, index), 0)
        self.seen[(path, index)] = count + 1
        return count

    def emit_split(self, layer: Layer, prefix: str, index: int, values, masks, name: str):
        """A product layer with its activation split off: (pre-activation, outputs, masks)."""
        outs, out_masks = super().emit_call(linear_copy(layer), prefix, index, values, masks)
        act, ref = activation_layer(layer, name)
        final, _ = super().emit_call(act, prefix, 0, {ref: outs[0]}, {})
        self.layer_values[f"{prefix}{layer.name}"] = final
        return outs[0], final, out_masks


class CalibrationWalker(_Counting):
    """The float model with every float tensor recorded as ``layer_values[MARK + key]``, and
    the model outputs as ``layer_values[OUTPUT_MARK + i]``."""

    def record(self, key: str, value: relax.Expr) -> None:
        if dtype_of(value) == "float32":
            self.layer_values[MARK + key] = [value]

    def run_graph(self, graph: ModelGraph, prefix: str, args, arg_masks=None):
        if not prefix:
            for ref, value in zip(graph.inputs, args):
                self.record(input_key(ref.layer), value)
        outs, masks = super().run_graph(graph, prefix, args, arg_masks)
        if not prefix:
            for i, value in enumerate(outs):
                self.layer_values[f"{OUTPUT_MARK}{i}"] = [value]
        return outs, masks

    def emit_call(self, layer: Layer, prefix: str, index: int, values, masks):
        if layer.model is not None:
            return super().emit_call(layer, prefix, index, values, masks)
        path = f"{prefix}{layer.name}"
        occurrence = self.occurrence(path, index)
        split = split_activation(layer)
        if split is not None:
            pre, outs, out_masks = self.emit_split(layer, prefix, index, values, masks, split)
            self.record(call_key(path, index, occurrence, 0, "/pre"), pre)
        else:
            outs, out_masks = super().emit_call(layer, prefix, index, values, masks)
        if layer.class_name == "SeparableConv2D":
            inner = self.depthwise_step(layer, path, values[layer.calls[index].inputs[0]])
            if inner is not None:
                self.record(call_key(path, index, occurrence, 0, DEPTHWISE_PART), inner)
        for tensor, value in enumerate(outs):
            self.record(call_key(path, index, occurrence, tensor), value)
        return outs, out_masks

    def depthwise_step(self, layer: Layer, path: str, x: relax.Expr) -> relax.Expr | None:
        """A 2-D channels_last SeparableConv2D's depthwise result (observed, not an output)."""
        shape = static_shape(x)
        if len(shape) != 4 or channels_first(layer.config) or path not in self.weight_vars:
            return None
        kernel = self.weight_vars[path][self.weight_names[path].index("depthwise_kernel")]
        kh, kw, channels, multiplier = static_shape(kernel)
        strides = ntuple(layer.config.get("strides", 1), 2)
        dilation = ntuple(layer.config.get("dilation_rate", 1), 2)
        befores, afters = paddings(
            layer.config.get("padding", "valid"), shape[1:3], (kh, kw), strides, dilation
        )
        grouped = self.bb.emit(R.reshape(kernel, (kh, kw, 1, channels * multiplier)))
        return self.bb.emit(
            R.nn.conv2d(
                x, grouped, strides, befores + afters, dilation, groups=channels,
                data_layout="NHWC", kernel_layout="HWIO",
            )
        )  # fmt: skip


class _Dequantized(dict):
    """``layer_values`` of the integer walk: reading an entry (``outputs=``) dequantizes it."""

    def __init__(self, walker: QuantWalker):
        super().__init__()
        self.walker = walker

    def __getitem__(self, name: str) -> list[relax.Expr]:
        return [self.walker.real(v) for v in super().__getitem__(name)]


class QuantWalker(_Counting):
    """The int8 model (see the module docstring); ``fallbacks`` lists the float layers."""

    def __init__(self, *args: Any, plan: Plan, ranges: Ranges, **kwargs: Any):
        super().__init__(*args, plan=plan, **kwargs)
        self.ranges = ranges
        self.layer_values = _Dequantized(self)
        self.fallbacks: list[Fallback] = []
        self.integer_layers: set[str] = set()

    # --- values -------------------------------------------------------------------------------
    def real(self, value: Any) -> relax.Expr:
        """The float form of a value (dequantized once, when first needed)."""
        if not isinstance(value, QValue):
            return value
        if value.real is None:
            value.real = self.bb.emit(dequantize(value.q, value.scale, value.zero_point))
        return value.real

    def integer(self, value: Any) -> QValue | None:
        """The value with its int8 form (quantized with its observed range), or None."""
        if not isinstance(value, QValue):
            return None
        if value.q is None:
            found = self.ranges.get(value.key) if value.key else None
            if found is None or dtype_of(value.real) != "float32":
                return None
            value.scale, value.zero_point = quantization(*found)
            value.q = self.bb.emit(quantize(value.real, value.scale, value.zero_point))
        return value

    def table(self, site: Site, x: QValue, key: str, name: str | None) -> QValue | None:
        """An elementwise function of int8 ``x`` as a 256-entry table: activation ``name``, or
        (None) the site's own layer; computed in float on every int8 value, then quantized
        with the range observed at ``key``."""
        found = self.ranges.get(key)
        if found is None:
            return None
        scale, zero_point = quantization(*found)
        grid = np.float32(x.scale) * (np.arange(-128, 128, dtype=np.float32) - x.zero_point)
        grid_expr = relax.const(grid.astype(np.float32))
        if name is not None:
            real = ACTIVATIONS[name](self.bb.emit, grid_expr, self.graph.keras_major)
        else:
            call = site.layer.calls[site.index]
            prefix = site.path[: len(site.path) - len(site.layer.name)]
            real = self.float_call(site.layer, prefix, site.index, {call.inputs[0]: grid_expr})[0]
        table = self.bb.emit(quantize(real, scale, zero_point))
        q = self.bb.emit(elementwise.lookup(x.q, table, -128))
        return QValue(key, q=q, scale=scale, zero_point=zero_point)

    def activation(self, site: Site, value: QValue, name: str) -> QValue:
        """A product's split-off activation: a table when elementwise, else float."""
        final = site.key()
        if name not in NOT_ELEMENTWISE and name in ACTIVATIONS:
            result = self.table(site, value, final, name)
            if result is not None:
                return result
        self.fallback(site.path, site.layer.class_name, f"activation {name!r} runs in float")
        real = ACTIVATIONS[name](self.bb.emit, self.real(value), self.graph.keras_major)
        return QValue(final, real=real)

    def fallback(self, path: str, class_name: str, reason: str) -> None:
        if not any(f.path == path for f in self.fallbacks):
            self.fallbacks.append(Fallback(path, class_name, reason))

    # --- the walk -----------------------------------------------------------------------------
    def run_graph(self, graph: ModelGraph, prefix: str, args, arg_masks=None):
        if not prefix:
            args = [QValue(input_key(r.layer), real=a) for r, a in zip(graph.inputs, args)]
        outs, masks = super().run_graph(graph, prefix, args, arg_masks)
        if not prefix:
            outs = [self.real(v) for v in outs]
        return outs, masks

    def float_call(self, layer: Layer, prefix: str, index: int, values, masks=None):
        """The float converter on float values; keeps ``layer_values`` as it was."""
        path = f"{prefix}{layer.name}"
        before = dict.get(self.layer_values, path)
        outs, _ = _Walker.emit_call(self, layer, prefix, index, values, masks or {})
        if before is None:
            dict.pop(self.layer_values, path, None)
        return outs

    def emit_call(self, layer: Layer, prefix: str, index: int, values, masks):
        if layer.model is not None:
            return super().emit_call(layer, prefix, index, values, masks)
        path = f"{prefix}{layer.name}"
        occurrence = self.occurrence(path, index)
        call = layer.calls[index]
        inputs = [values[r] for r in call.inputs]
        if (path, index) in self.plan.absorbed:  # computed by the layer that absorbed it
            self.layer_values.setdefault(path, inputs[:1])
            return inputs[:1], []
        outs = self.integer_call(layer, path, index, occurrence, inputs, values, masks)
        if isinstance(outs, str):
            return self.float_fallback(layer, prefix, index, occurrence, values, masks, outs)
        self.integer_layers.add(path)
        self.layer_values.setdefault(path, outs)
        return outs, []

    def integer_call(self, layer, path, index, occurrence, inputs, values, masks):
        """The call on integer kernels, or why not."""
        call = layer.calls[index]
        if any(masks.get(r) is not None for r in call.inputs) or call.tensor_kwargs():
            return "masked or keyword tensor inputs"
        if not inputs or any(not isinstance(v, QValue) for v in inputs):
            return "no float tensor inputs"
        if layer.class_name in SHAPE_ONLY:
            return self.shape_only(layer, path, index, occurrence, inputs)
        emitter = EMITTERS.get(layer.class_name)
        if emitter is None:
            return "no integer kernel"
        followers = self.plan.followers.get((path, index), [])
        site = Site(self, layer, path, index, occurrence, inputs, followers)
        return emitter(site)

    def shape_only(self, layer, path, index, occurrence, inputs) -> list[QValue] | str:
        """A layer that only moves values: its float converter on the int8 tensor."""
        x = self.integer(inputs[0])
        if x is None or len(inputs) != 1:
            return "an input has no observed range"
        prefix = path[: len(path) - len(layer.name)]
        try:
            outs = self.float_call(layer, prefix, index, {layer.calls[index].inputs[0]: x.q})
        except BridgeError as exc:
            return f"its converter does not take int8 ({exc})"
        key = call_key(path, index, occurrence)
        return [QValue(key, q=o, scale=x.scale, zero_point=x.zero_point) for o in outs]

    def float_fallback(self, layer, prefix, index, occurrence, values, masks, reason: str):
        path = f"{prefix}{layer.name}"
        call = layer.calls[index]
        real = {r: self.real(values[r]) for r in call.all_inputs()}
        split = split_activation(layer)
        if split is not None:
            _, outs, out_masks = self.emit_split(layer, prefix, index, real, masks, split)
        else:
            outs, out_masks = _Walker.emit_call(self, layer, prefix, index, real, masks)
        self.fallback(path, layer.class_name, reason)
        wrapped = [QValue(call_key(path, index, occurrence, t), real=o) for t, o in enumerate(outs)]
        dict.__setitem__(self.layer_values, path, wrapped)
        return wrapped, out_masks


def keys_of(layer_shapes: dict[str, Any]) -> list[str]:
    """The observed tensors' names in a calibration translation, in walk order."""
    return [k for k in layer_shapes if k.startswith(MARK) and not k.startswith(OUTPUT_MARK)]


def output_names(layer_shapes: dict[str, Any]) -> list[str]:
    return [k for k in layer_shapes if k.startswith(OUTPUT_MARK)]

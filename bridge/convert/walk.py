"""The graph walk: a parsed Keras graph plus weights -> a Relax IRModule and its parameters.

The module's ``main`` takes the model inputs followed by every weight (function attribute
``num_input`` counts the inputs), so callers can bind weights as constants (the default build) or
keep them as run-time parameters.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tvm
from tvm import relax

from bridge.convert.context import LayerContext, static_shape
from bridge.convert.invoke import invoke
from bridge.convert.layers import converter_for
from bridge.convert.preflight import WeightsMisfit, preflight
from bridge.convert.registry import CustomLayers
from bridge.errors import BridgeError, Problem, UnsupportedModelError, WeightsError
from bridge.keras.graph import Layer, ModelGraph, TensorRef
from bridge.keras.weights import LayerWeights
from bridge.kernels_map import label_layers
from bridge.translation import (
    MAX_DIM,
    InputShapes,
    Translation,
    error_reason,
    pick_outputs,
    relax_dims,
    requested_shapes,
    resolve_shape,
    tensor_info,
    unknown_dims_reason,
)

FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"}


def input_dtype(layer: Layer) -> str:
    dtype = layer.config.get("dtype") or "float32"
    if isinstance(dtype, dict):  # a dtype policy
        dtype = dtype.get("config", {}).get("name", "float32")
    return "float32" if dtype in FLOAT_DTYPES else str(dtype)


def input_shape(layer: Layer) -> list | None:
    config = layer.config
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    return list(shape) if isinstance(shape, (list, tuple)) else None


def _shape_problem(shape: list) -> str | None:
    """Why a declared input shape cannot be a tensor shape (None if it can)."""
    if not shape:
        return "input shape is empty: the batch dimension is missing"
    for dim in shape:
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
            return f"input shape {shape} holds {dim!r}, not a size"
        if dim is not None and not 0 <= dim < MAX_DIM:
            return f"input shape {shape} holds {dim}, outside 0..{MAX_DIM - 1}"
    return None


class _Walker:
    def __init__(
        self,
        graph: ModelGraph,
        weights: LayerWeights,
        label: str,
        batch_size: int | None,
        device: str = "cpu",
        custom: CustomLayers | None = None,
        input_shapes: InputShapes = None,
    ):
        self.graph = graph
        self.device = device
        self.custom = custom
        self.label = label
        self.batch_size = batch_size
        names = [ref.layer for ref in graph.inputs]
        self.requested = requested_shapes(input_shapes, names, label)
        # Symbolic dimensions by name (the batch of batch_size=None is "batch"), shared by
        # every input that names them.
        self.symbols: dict[str, tvm.tirx.Var] = {}
        self.problems: list[Problem] = []
        self.bb = relax.BlockBuilder()
        self.layer_values: dict[str, list[relax.Expr]] = {}
        self.weight_vars: dict[str, list[relax.Var]] = {}
        self.weight_names: dict[str, list[str]] = {}
        self.params: dict[str, np.ndarray] = {}
        self.calls: list[tuple[str, str, list[relax.Expr]]] = []  # emitted, for label_layers
        for path, layer in graph.walk_layers():
            converter = converter_for(layer, custom) if layer.model is None else None
            if converter is None or path not in weights:
                continue
            names = converter.weight_names(layer.config)
            self.weight_names[path] = names
            self.weight_vars[path] = []
            for name, array in zip(names, weights[path]):
                key = f"{path}/{name}"
                array = np.ascontiguousarray(array)
                self.params[key] = array
                var = relax.Var(key, relax.TensorType(array.shape, str(array.dtype)))
                self.weight_vars[path].append(var)

    # --- inputs -------------------------------------------------------------------------------
    def input_vars(self) -> list[relax.Var]:
        variables = []
        for ref in self.graph.inputs:
            layer = self.graph.layer(ref.layer)
            shape = input_shape(layer)
            reason = "input has no shape in the config" if shape is None else _shape_problem(shape)
            if reason is None:
                requested = self.requested.get(layer.name)
                dims = resolve_shape(layer.name, shape, requested, self.batch_size, self.label)
                reason = unknown_dims_reason(layer.name, dims)
            if reason is not None:
                raise UnsupportedModelError(
                    self.label, [Problem(layer.name, layer.class_name, reason)]
                )
            try:
                tensor_type = relax.TensorType(relax_dims(dims, self.symbols), input_dtype(layer))
            except Exception as exc:  # e.g. a dtype TVM does not know
                problem = Problem(layer.name, layer.class_name, f"bad input: {error_reason(exc)}")
                raise UnsupportedModelError(self.label, [problem]) from exc
            variables.append(relax.Var(layer.name, tensor_type))
        return variables

    # --- the walk -----------------------------------------------------------------------------
    def run_graph(
        self,
        graph: ModelGraph,
        prefix: str,
        args: list[relax.Expr],
        arg_masks: list[relax.Expr | None] | None = None,
    ) -> tuple[list[relax.Expr], list[relax.Expr | None]]:
        """Emit every call of every layer of ``graph`` once its inputs exist; return its outputs
        and their Keras masks (None where a tensor has none)."""
        values: dict[TensorRef, relax.Expr] = dict(zip(graph.inputs, args))
        masks: dict[TensorRef, relax.Expr | None] = dict(zip(graph.inputs, arg_masks or []))
        for ref, value in values.items():
            self.layer_values.setdefault(f"{prefix}{ref.layer}", [value])
        pending = [(layer, index) for layer in graph.layers for index in range(len(layer.calls))]
        while pending:
            remaining = []
            for layer, index in pending:
                call = layer.calls[index]
                if all(ref in values for ref in call.all_inputs()):
                    outs, out_masks = self.emit_call(layer, prefix, index, values, masks)
                    self.calls.append((f"{prefix}{layer.name}", layer.class_name, outs))
                    for tensor, value in enumerate(outs):
                        ref = TensorRef(layer.name, index, tensor)
                        values[ref] = value
                        masks[ref] = out_masks[tensor] if tensor < len(out_masks) else None
                else:
                    remaining.append((layer, index))
            if len(remaining) == len(pending):
                names = ", ".join(f"{prefix}{layer.name}" for layer, _ in remaining)
                self.graph_error(
                    graph, prefix, f"loops or disconnected nodes; cannot resolve {names}"
                )
            pending = remaining
        missing = [r for r in graph.outputs if r not in values]
        if missing:
            self.graph_error(graph, prefix, f"outputs reference tensors no layer makes: {missing}")
        return [values[r] for r in graph.outputs], [masks.get(r) for r in graph.outputs]

    def graph_error(self, graph: ModelGraph, prefix: str, reason: str) -> None:
        where = prefix.rstrip("/") or graph.name
        raise UnsupportedModelError(self.label, [Problem(where, "graph", reason)])

    def emit_call(
        self,
        layer: Layer,
        prefix: str,
        index: int,
        values: dict[TensorRef, relax.Expr],
        masks: dict[TensorRef, relax.Expr | None],
    ) -> tuple[list[relax.Expr], list[relax.Expr | None]]:
        """The call's outputs and their masks (see ``Converter.masks``)."""
        path = f"{prefix}{layer.name}"
        call = layer.calls[index]
        inputs = [values[r] for r in call.inputs]
        tensor_kwargs = call.tensor_kwargs()
        # Masks propagate along the graph as Keras propagates them (``Converter.masks``); a
        # call's ``mask=`` tensors (Keras 3 records them for some layers, computed by recorded
        # operations: ``not_equal``, ``any``, ...) stand for the positional inputs' masks.
        explicit = [values[r] for r in tensor_kwargs.pop("mask", [])]
        in_masks = explicit + [masks.get(r) for r in call.inputs[len(explicit) :]]
        if layer.model is not None:
            outs, out_masks = self.run_graph(layer.model, path + "/", inputs, in_masks)
        else:
            converter = converter_for(layer, self.custom)
            ctx = LayerContext(
                self.bb,
                layer,
                path,
                call,
                self.weight_names.get(path, []),
                self.weight_vars.get(path, []),
                self.graph.keras_major,
                self.problems,
                {k: [values[r] for r in refs] for k, refs in tensor_kwargs.items()},
                in_masks,
                {k: [masks.get(r) for r in refs] for k, refs in tensor_kwargs.items()},
                explicit_masks=bool(explicit),
                device=self.device,
            )
            try:
                result = invoke(converter, ctx, inputs)
                unread = ctx.unread_tensor_kwargs()
                if unread:  # e.g. an RNN's initial_state: ignoring it would give wrong results
                    reason = f"tensors passed to the call as {unread} are not supported"
                    problem = Problem(path, layer.class_name, reason)
                    raise UnsupportedModelError(self.label, [problem])
                outs = list(result) if isinstance(result, (list, tuple)) else [result]
                out_masks = _output_masks(converter.masks, ctx, in_masks, len(outs))
            except BridgeError:
                raise
            except Exception as exc:  # a TVM shape/type check, or a config value we misread
                raise UnsupportedModelError(
                    self.label,
                    [Problem(path, layer.class_name, f"translation failed: {error_reason(exc)}")],
                ) from exc
        self.layer_values.setdefault(path, outs)
        return outs, out_masks


def _output_masks(
    mode: str | None, ctx: LayerContext, in_masks: list[relax.Expr | None], count: int
) -> list[relax.Expr | None]:
    if mode == "custom":
        return ctx.output_masks or []
    if mode == "keep" and in_masks:
        return [in_masks[0]] * count
    return []


def translate(
    graph: ModelGraph,
    weights: LayerWeights,
    label: str,
    weights_label: str,
    *,
    batch_size: int | None = 1,
    outputs: list[str] | None = None,
    extra_problems: list[Problem] | None = None,
    device: str = "cpu",
    custom: CustomLayers | None = None,
    require_weights: bool = True,
    input_shapes: InputShapes = None,
    walker_class: type[_Walker] | None = None,
) -> Translation:
    """Translate ``graph`` with ``weights``; raises with every problem found (preflight first;
    ``require_weights=False`` leaves out the per-layer "no weights" problems, for a caller that
    reports a missing weights file once).
    ``device`` ("cpu" or "cuda") is what the module will be compiled for: recurrent time loops
    become one loop kernel on CPUs and stay unrolled in the graph for CUDA. ``custom`` maps
    :func:`~bridge.convert.registry.custom_keys` to user converters. ``input_shapes`` fixes
    (sizes) or names (symbols) the inputs' unknown dimensions (see
    :func:`bridge.translation.resolve_shape`)."""
    problems = list(extra_problems or []) + preflight(
        graph, weights, weights_label, custom, require_weights
    )
    if problems and all(isinstance(p, WeightsMisfit) for p in problems):
        raise WeightsError(label, problems)  # the architecture is fine, the weights do not fit
    if problems:
        raise UnsupportedModelError(label, problems)
    try:
        return _translate(
            graph, weights, label, batch_size, outputs, device, custom, input_shapes, walker_class
        )
    except BridgeError:
        raise
    except Exception as exc:  # not a layer's own failure (those name the layer): the graph's
        problem = Problem(graph.name, "graph", f"translation failed: {error_reason(exc)}")
        raise UnsupportedModelError(label, [problem]) from exc


def _translate(
    graph: ModelGraph,
    weights: LayerWeights,
    label: str,
    batch_size: int | None,
    outputs: list[str] | None,
    device: str,
    custom: CustomLayers | None,
    input_shapes: InputShapes = None,
    walker_class: type[_Walker] | None = None,
) -> Translation:
    # walker_class: a subclass of _Walker (bridge.quant.keras's calibration and integer walks)
    walker = (walker_class or _Walker)(
        graph, weights, label, batch_size, device, custom, input_shapes
    )
    inputs = walker.input_vars()
    params = [v for vars_ in walker.weight_vars.values() for v in vars_]
    bb = walker.bb
    with bb.function("main", inputs + params, attrs={"num_input": len(inputs)}):
        try:
            with bb.dataflow():
                results, _ = walker.run_graph(graph, "", inputs)
                names = [
                    f"{r.layer}" if r.tensor == 0 else f"{r.layer}:{r.tensor}"
                    for r in graph.outputs
                ]
                if outputs:
                    picked = pick_outputs(walker.layer_values, outputs, label, "layer")
                    names, results = [n for n, _ in picked], [v for _, v in picked]
                out_vars = [bb.emit_output(r) for r in results]
                output = (
                    out_vars[0] if len(out_vars) == 1 else bb.emit_output(relax.Tuple(out_vars))
                )
        except BaseException:
            # close the function so the builder holds no open scope (TVM warns "BlockBuilder
            # destroyed with remaining blocks!" otherwise); the module is discarded
            with contextlib.suppress(Exception):  # never hide the error being raised
                bb.emit_func_output(relax.Tuple([]))
            raise
        bb.emit_func_output(output)
    if walker.problems:
        raise WeightsError(label, walker.problems)
    mod = label_layers(bb.get(), walker.calls)  # kernels name their layers (bridge profile)
    return Translation(
        mod=mod,
        params=walker.params,
        inputs=[tensor_info(v.name, v) for v in inputs],
        outputs=[tensor_info(n, r) for n, r in zip(names, out_vars)],
        layer_count=sum(1 for _, layer in graph.walk_layers() if layer.model is None),
        layer_shapes={k: [static_shape(v) for v in vs] for k, vs in walker.layer_values.items()},
    )

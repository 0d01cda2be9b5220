"""A checked TFLite model -> the same ``Translation`` the Keras path produces.

Steps: plan weight rewrites (``weights``), preflight every operator (``ops``), hand TVM's
``from_tflite`` a rewritten view of the flatbuffer (``view``) with bridge's operator converter,
then lift the weights out of the module as parameters of ``main`` so that binding, separate
parameters and export work exactly as for Keras models.
"""

from __future__ import annotations

import struct

import numpy as np
import tvm
from tvm import relax

from bridge.errors import BridgeError, ModelFileError, Problem, UnsupportedModelError
from bridge.kernels_map import keep_layers, label_layers, operator_calls
from bridge.tflite.ops import (
    BridgeConverter,
    OperatorFailed,
    op_label,
    preflight,
    subgraph_owners,
)
from bridge.tflite.reader import DTYPES, READ_ERRORS, TFLiteFile
from bridge.tflite.view import ModelView
from bridge.tflite.weights import Rewrites, plan
from bridge.translation import (
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

LIFT_MIN_BYTES = 256  # smaller constants (scalars, scales, shapes) stay inline in the module
KEEP_INLINE = {"relax.quantize", "relax.dequantize"}  # their scale/zero point must be constants


def plan_rewrites(source: TFLiteFile) -> Rewrites:
    try:
        return plan(source)
    except (*READ_ERRORS, RecursionError) as exc:  # e.g. damaged sparsity metadata
        raise ModelFileError(source.path, f"malformed weights: {error_reason(exc)}") from exc


def declared_shape(source: TFLiteFile, tensor: int) -> list[int | None]:
    """An input's shape as its ``shape_signature`` declares it (None where -1; the stored batch,
    at which the model runs), or the stored shape when it has no signature."""
    stored = list(source.tensors[tensor].shape)
    flat = source.model.Subgraphs(0).Tensors(tensor)
    if not flat.ShapeSignatureLength():
        return stored
    signature = [int(d) for d in flat.ShapeSignatureAsNumpy()]
    if len(signature) != len(stored):
        return stored
    return stored[:1] + [None if d < 0 else d for d in signature[1:]]


def input_dims(source: TFLiteFile, input_shapes: InputShapes) -> dict[str, list]:
    """Each input's dimensions: sizes, symbols' names (``input_shapes``), None where the
    signature's -1 is still unknown (LiteRT's ``resize_tensor_input`` is ``input_shapes``)."""
    names = [source.tensors[t].name for t in source.inputs]
    requested = requested_shapes(input_shapes, names, source.label)
    return {
        name: resolve_shape(
            name, declared_shape(source, t), requested.get(name), 1, source.label, batched=False
        )
        for name, t in zip(names, source.inputs)
    }


def check(
    source: TFLiteFile,
    rewrites: Rewrites,
    batch_size: int | None,
    dims: dict[str, list] | None = None,
) -> None:
    """Raise UnsupportedModelError with every problem found before translation."""
    problems = preflight(source, rewrites)
    for name, shape in (dims or {}).items():
        reason = unknown_dims_reason(name, shape)
        if reason is not None:
            problems.append(Problem(name, "input", reason))
    for t in source.inputs:
        desc = source.tensors[t]
        if desc.type_code not in DTYPES:
            problems.append(Problem(desc.name, "input", f"input type {desc.dtype} not supported"))
    batches = sorted({source.tensors[t].shape[0] for t in source.inputs if source.tensors[t].shape})
    if batch_size != 1 and batches != [batch_size]:  # the default, 1, means "as stored"
        problems.append(
            Problem(
                "inputs",
                "batch",
                f"a TFLite model runs at the shapes stored in it (batch {sorted(batches)}); "
                f"batch_size={batch_size} would need reshaping every operator",
            )
        )
    if problems:
        raise UnsupportedModelError(source.label, problems)


def translate(
    source: TFLiteFile,
    *,
    batch_size: int | None = 1,
    outputs: list[str] | None = None,
    input_shapes: InputShapes = None,
) -> Translation:
    """Translate subgraph 0; ``outputs`` picks tensors by name instead of the model outputs;
    ``input_shapes`` sets (or names, symbolic) the sizes the inputs' signatures leave -1."""
    from tvm.relax.frontend.tflite import from_tflite

    rewrites = plan_rewrites(source)
    dims = input_dims(source, input_shapes)
    check(source, rewrites, batch_size, dims)
    symbols: dict = {}
    shape_dict = {name: relax_dims(shape, symbols) for name, shape in dims.items()}
    if outputs:
        by_name = {t.name: [t.index] for t in source.tensors}
        out_tensors = [index for _, index in pick_outputs(by_name, outputs, source.label, "tensor")]
    else:
        out_tensors = list(source.outputs)
    view = ModelView(source, rewrites, out_tensors)
    labels = [op_label(source, op) for op in source.ops if op.index not in rewrites.dropped]

    converters: list[BridgeConverter] = []  # the main graph's first

    def converter(model, subgraph, exp_tab, bb):
        instance = BridgeConverter(model, subgraph, exp_tab, bb)
        instance.op_labels = labels
        converters.append(instance)
        return instance

    try:
        mod = from_tflite(view, shape_dict=shape_dict, op_converter=converter)
    except OperatorFailed as exc:
        if isinstance(exc.cause, struct.error):  # options read past the end of the file
            reason = f"operator {exc.label}: corrupt options ({exc.cause})"
            raise ModelFileError(source.path, reason) from exc.cause
        index = int(exc.label.split()[0][1:])
        problem = Problem(
            exc.label, source.ops[index].name, f"translation failed: {error_reason(exc.cause)}"
        )
        raise UnsupportedModelError(source.label, [problem]) from exc.cause
    except BridgeError:
        raise
    except struct.error as exc:
        raise ModelFileError(source.path, f"corrupt flatbuffer ({exc})") from exc
    except Exception as exc:  # graph-level failures (inputs, outputs)
        problem = Problem(source.name, "graph", f"translation failed: {error_reason(exc)}")
        raise UnsupportedModelError(source.label, [problem]) from exc
    # TVM legalizes conv2d_transpose only as NCHW: transposed convolutions (TRANSPOSE_CONV,
    # Convolution2DTransposeBias) are converted NHWC, so wrap them in layout transposes.
    mod = label_layers(mod, operator_calls(source, labels, converters[0].results))  # profile
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d_transpose": ["NCHW", "IOHW"]})(mod)
    mod, params = lift_weights(mod)
    main = mod["main"]
    inputs = [tensor_info(source.tensors[t].name, v) for t, v in zip(source.inputs, main.params)]
    ret = main.ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    result = [tensor_info(source.tensors[t].name, s) for t, s in zip(out_tensors, fields)]
    return Translation(
        mod=mod,
        params=params,
        inputs=inputs,
        outputs=result,
        layer_count=len(source.ops),
        layer_shapes={
            op_label(source, op): [source.tensors[t].shape for t in op.outputs] for op in source.ops
        },
    )


@relax.expr_functor.mutator
class _WeightLifter(relax.PyExprMutator):
    """Replaces large constants by new variables, remembering their values."""

    def __init__(self, mod):
        super().__init__(mod)
        self.variables: list[relax.Var] = []
        self.values: dict[str, np.ndarray] = {}

    def visit_generic_const_(self, op):
        value = op.value.numpy()
        if value.ndim == 0 or value.nbytes < LIFT_MIN_BYTES:
            return op
        name = f"w{len(self.variables):04d}"
        var = relax.Var(name, relax.TensorType(value.shape, str(value.dtype)))
        self.variables.append(var)
        self.values[name] = value
        return var

    def visit_call_(self, op):
        if isinstance(op.op, tvm.ir.Op) and op.op.name in KEEP_INLINE:
            args = [self.visit_expr(op.args[0]), *op.args[1:]]
            return relax.Call(op.op, args, op.attrs, op.ty_args)
        return super().visit_call_(op)


def lift_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """``main`` takes the inputs then every weight of ``main`` (``num_input`` counts the
    inputs), as the Keras path's ``main`` does; returns the module and the weights by parameter
    name. The private functions of control flow (IF branches, WHILE conditions and bodies) are
    kept as they are, their constants inline: they are compiled into the library."""
    main = mod["main"]
    lifter = _WeightLifter(mod)
    body = lifter.visit_expr(main.body)
    attrs = {"global_symbol": "main", "num_input": len(main.params), **keep_layers(main)}
    func = relax.Function(
        list(main.params) + lifter.variables, body, main.ret_ty, main.is_pure
    ).with_attrs(attrs)
    functions = {gv: f for gv, f in mod.functions.items() if gv.name_hint != "main"}
    lifted = tvm.IRModule({**functions, mod.get_global_var("main"): func})
    return lifted, lifter.values


def report_rows(
    source: TFLiteFile, input_shapes: InputShapes = None
) -> list[tuple[str, str, list | None, int, str]]:
    """``bridge inspect`` rows, one per operator: (label, operator, output shapes, weight
    elements, "ok" or why not). Never raises for unsupported operators."""
    rewrites = plan_rewrites(source)
    problems: dict[str, list[str]] = {}
    owners = subgraph_owners(source)
    for p in preflight(source, rewrites):
        if p.layer.startswith("subgraph "):  # shown on the operator that runs the subgraph
            owner = owners.get(int(p.layer.split()[1]), p.layer)
            problems.setdefault(owner, []).append(f"{p.layer} ({p.class_name}): {p.reason}")
            continue
        problems.setdefault(p.layer, []).append(p.reason)
    if not problems:
        try:
            translate(source, input_shapes=input_shapes)
        except UnsupportedModelError as exc:
            for p in exc.problems:
                problems.setdefault(p.layer, []).append(p.reason)
    rows = []
    for op in source.ops:
        label = op_label(source, op)
        weights = sum(
            int(np.prod(source.tensors[t].shape, dtype=np.int64))
            for t in op.inputs
            if t >= 0 and source.buffer_bytes(source.tensors[t].buffer) is not None
        )
        status = "; ".join(problems.get(label, [])) or "ok"
        if op.index in rewrites.dropped:
            status = "folded at import"
        shapes = [source.tensors[t].shape for t in op.outputs]
        rows.append((label, op.name, shapes, weights, status))
    return rows

"""Operator support: which TFLite operators translate, and converters for custom operators.

Translation is TVM's ``tvm.relax.frontend.tflite`` ``OperatorConverter``, subclassed here (never
patched): custom operators with public semantics get converters, every operator is checked
before translation so that all problems are reported at once, and a failing converter names its
operator.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx
from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter, get_pad_value

from bridge.errors import ModelFileError, Problem
from bridge.quant.operators import INTEGER_ONLY
from bridge.quant.tflite import integer_converters
from bridge.tflite import fold
from bridge.tflite.reader import READ_ERRORS, Graph, OpDesc, TFLiteFile
from bridge.tflite.weights import Rewrites

# Layout and data-movement operators are exact on quantized integers when their input and
# output share scale and zero point (TVM's converters pass the integers through; PAD pads with
# the zero point). TVM's own list of quantized operators omits them.
QUANTIZED_PASSTHROUGH = frozenset(
    {
        "BATCH_TO_SPACE_ND",
        "BROADCAST_TO",
        "DEPTH_TO_SPACE",
        "EXPAND_DIMS",
        "GATHER",
        "MIRROR_PAD",
        "PACK",
        "PAD",
        "PADV2",
        "RESIZE_NEAREST_NEIGHBOR",
        "REVERSE_V2",
        "SLICE",
        "SPACE_TO_BATCH_ND",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SPLIT_V",
        "SQUEEZE",
        "STRIDED_SLICE",
        "TILE",
        "TRANSPOSE",
        "UNPACK",
    }
)
# Resource variables store and load tensors unchanged (streaming models keep int8 state).
QUANTIZED_STORAGE = frozenset({"ASSIGN_VARIABLE", "CALL_ONCE", "READ_VARIABLE", "VAR_HANDLE"})
MARKERS = {"DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"}
# Operators that run other subgraphs: option table -> its subgraph-index fields.
CONTROL_FLOW = {
    "IF": ("IfOptions", ("ThenSubgraphIndex", "ElseSubgraphIndex")),
    "WHILE": ("WhileOptions", ("CondSubgraphIndex", "BodySubgraphIndex")),
    "CALL": ("CallOptions", ("Subgraph",)),
    "CALL_ONCE": ("CallOnceOptions", ("InitSubgraphIndex",)),
}
# What TVM's frontend runs inside a CALL_ONCE initialiser (it records the values assigned).
INITIALISERS = frozenset({"VAR_HANDLE", "ASSIGN_VARIABLE", "HASHTABLE", "HASHTABLE_IMPORT"})
# Tensor types TVM's frontend has no Relax dtype for (string, resource and variant tensors are
# handled by its hash-table and variable operators).
UNTYPED = {"float64", "uint16", "int4", "bfloat16", "complex128"}


class OperatorFailed(Exception):
    """TVM's converter raised while translating one operator (``inside``: the operator of a
    control-flow subgraph that failed, when ``label`` is the IF/WHILE/CALL running it)."""

    def __init__(self, label: str, cause: Exception, inside: str = ""):
        super().__init__(label)
        self.label = label
        self.cause = cause
        self.inside = inside


BUILTIN_CUSTOM = {"TFLite_Detection_PostProcess": "DETECTION_POSTPROCESS"}


class BridgeConverter(OperatorConverter):
    """TVM's converter plus bridge's custom operators; translates the operators it is given."""

    def __init__(self, model, subgraph, exp_tab, ctx, conversion_state=None):
        super().__init__(model, subgraph, exp_tab, ctx, conversion_state)
        self.convert_map.update({"Convolution2DTransposeBias": self.convert_transpose_conv_bias})
        self.convert_map.update(integer_converters(self))  # int8 products: bridge.quant
        self.op_labels: list[str] = []  # set by translate(): "#index NAME" per operator shown
        self.shape_values: dict[int, np.ndarray] = {}  # tensor -> evaluated shape arithmetic
        self.dynamic_slices: dict[int, tuple] = {}  # SLICE output -> (data, begin, size) tensors
        self.results: list[tuple[int, object]] = []  # (position, result) per operator (profile)

    def get_op_code_str(self, op):
        code = self.model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == 32:  # CUSTOM
            name = (code.CustomCode() or b"").decode("utf-8", "replace")
            return BUILTIN_CUSTOM.get(name, name)
        return super().get_op_code_str(op)

    def check_unsupported_ops(self):
        """Done before translation by ``preflight`` (which lists every problem)."""

    def convert_op_to_relax(self):
        for position in range(self.subgraph.OperatorsLength()):
            op = self.subgraph.Operators(position)
            try:
                self.results.append((position, self._convert_one(op)))
            except OperatorFailed as exc:  # in a subgraph this operator runs
                inside = exc.label + (f" > {exc.inside}" if exc.inside else "")
                raise OperatorFailed(self._label(position, op), exc.cause, inside) from exc.cause
            except Exception as exc:
                raise OperatorFailed(self._label(position, op), exc) from exc

    def _label(self, position: int, op) -> str:
        """The main graph's labels come from translate(); a subgraph's operator is named by
        its subgraph, position, operator and first output."""
        if self.op_labels:
            return self.op_labels[position]
        index = next(
            (
                k
                for k in range(self.model.SubgraphsLength())
                if self.model.Subgraphs(k)._tab.Pos == self.subgraph._tab.Pos
            ),
            "?",
        )
        out = ""
        if op.OutputsLength():
            out = (self.subgraph.Tensors(op.Outputs(0)).Name() or b"").decode("utf-8", "replace")
        return f"subgraph {index} #{position} {self.get_op_code_str(op)} {out.split(';')[0]}"

    def _convert_one(self, op):
        """The body of TVM's loop for one operator: convert, then name its outputs; returns
        the result (None for a prefetched constant)."""
        from tvm.relax.frontend.tflite.tflite_frontend import get_tensor_name

        output_tensors = self.get_output_tensors(op)
        name = self.get_op_code_str(op)
        if len(output_tensors) == 1 and self._evaluate_shape(op, name, output_tensors[0]):
            return None
        result = self.convert_map[name](op=op)
        if result is None:  # prefetched (constant) result
            return None
        result = self.bb.normalize(result)
        if len(output_tensors) == 1:
            name = get_tensor_name(self.subgraph, output_tensors[0].tensor_idx)
            self.exp_tab.set_expr(name, result)
            return result
        for i, tensor in enumerate(output_tensors):
            self.exp_tab.set_expr(get_tensor_name(self.subgraph, tensor.tensor_idx), result[i])
        return result

    # --- shape arithmetic (bridge.tflite.fold) --------------------------------------------------
    def _evaluate_shape(self, op, name: str, out) -> bool:
        """Evaluate an integer shape operator from known values (``fold``); False leaves it
        to TVM. Known integer values read as constants (``get_tensor_value``); symbolic ones
        also get an expression, for operators that take them as tensors."""
        if name != "SHAPE" and name not in fold.EVALUATORS:
            return False
        dtype = self.get_tensor_type_str(out.tensor.Type())
        if dtype not in ("int32", "int64"):
            return False
        inputs = self.get_input_tensors(op)
        if name == "SHAPE":
            value = self._inferred_shape(inputs[0])
        else:
            args = [self._known_value(t) for t in inputs]
            if any(a is None for a in args):
                return False
            value = fold.evaluate(name, lambda table: fold.parse_options(op, table), args)
        if value is None:
            return False
        if value.dtype == object and all(isinstance(v, int) for v in value.flat):
            value = value.astype(np.int64)
        if value.dtype != object:
            self.shape_values[out.tensor_idx] = value.astype(dtype)
            return True
        if value.ndim > 1:
            return False
        self.shape_values[out.tensor_idx] = value
        as_tensor = relax.op.shape_to_tensor(relax.ShapeExpr([*value.reshape(-1)]))
        as_tensor = relax.op.astype(as_tensor, dtype)
        if value.ndim == 0:
            as_tensor = relax.op.reshape(as_tensor, [])
        from tvm.relax.frontend.tflite.tflite_frontend import get_tensor_name

        name_out = get_tensor_name(self.subgraph, out.tensor_idx)
        self.exp_tab.set_expr(name_out, self.bb.normalize(as_tensor))
        return True

    def _inferred_shape(self, tensor) -> np.ndarray | None:
        """The shape TVM inferred for ``tensor`` (ints, TIR expressions where symbolic)."""
        ty = getattr(self.get_tensor_expr(tensor), "ty", None)
        if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
            return None
        dims = [int(d.value) if isinstance(d, tirx.IntImm) else d for d in ty.shape.values]
        out = np.empty(len(dims), dtype=object)
        out[:] = dims
        return out

    def _known_value(self, tensor) -> np.ndarray | None:
        """An integer tensor's value: evaluated shape arithmetic or a stored constant."""
        value = self.shape_values.get(tensor.tensor_idx)
        if value is not None:
            return value
        if self.has_expr(tensor.tensor_idx) or tensor.buffer is None:
            return None
        if not tensor.buffer.DataLength():
            return None
        if self.get_tensor_type_str(tensor.tensor.Type()) not in ("int32", "int64"):
            return None
        return super().get_tensor_value(tensor)

    def get_tensor_value(self, tensor_wrapper, is_sparse=False):
        value = self.shape_values.get(tensor_wrapper.tensor_idx)
        if value is not None and value.dtype != object:
            return value
        return super().get_tensor_value(tensor_wrapper, is_sparse)

    def convert_reshape(self, op):
        """``RESHAPE`` to a shape holding symbolic dimensions (``fold``); TVM's otherwise."""
        tensors = self.get_input_tensors(op)
        value = self.shape_values.get(tensors[1].tensor_idx) if len(tensors) > 1 else None
        if value is None or value.dtype != object:
            return super().convert_reshape(op)
        return relax.op.reshape(self.get_tensor_expr(tensors[0]), list(value.reshape(-1)))

    def convert_slice(self, op):
        """``SLICE`` whose begin or size is computed at run time (TensorFlow's TensorList
        emulation in a recurrent layer's loop: the step counter picks the row) as a dynamic
        strided slice; constant ones are TVM's."""
        data, begin_t, size_t = self.get_input_tensors(op)[:3]
        known = [self._known_value(t) for t in (begin_t, size_t)]
        if all(v is not None and v.dtype != object for v in known):
            return super().convert_slice(op)
        x = self.get_tensor_expr(data)
        begin = relax.op.astype(self.get_tensor_expr(begin_t), "int64")
        size = relax.op.astype(self.get_tensor_expr(size_t), "int64")
        full = relax.op.shape_to_tensor(relax.op.shape_of(x))
        end = relax.op.where(
            relax.op.less(size, relax.const(np.zeros((), np.int64), "int64")), full, begin + size
        )
        rank = len(self.get_tensor_shape(data))
        strides = relax.const(np.ones(rank, np.int64), "int64")
        out = self.get_output_tensors(op)[0].tensor_idx
        self.dynamic_slices[out] = (data, begin_t, size_t)
        return relax.op.dynamic_strided_slice(x, begin, end, strides)

    def convert_concatenation(self, op):
        update = self._row_update(op)
        return super().convert_concatenation(op) if update is None else update

    def _row_update(self, op):
        """``CONCATENATION([L[:i], X, L[i + k:]], axis 0)``, TensorFlow's TensorListSetItem in a
        recurrent layer's loop body (``i`` the step): ``L`` with rows ``i .. i + k`` replaced
        by ``X``, computed with static shapes (the two slices' shapes change with ``i``)."""
        inputs = self.get_input_tensors(op)
        if len(inputs) != 3:
            return None
        head = self.dynamic_slices.get(inputs[0].tensor_idx)
        tail = self.dynamic_slices.get(inputs[2].tensor_idx)
        if head is None or tail is None or head[0].tensor_idx != tail[0].tensor_idx:
            return None
        opts = fold.parse_options(op, "ConcatenationOptions")
        start = self._known_value(head[1])
        if opts is None or opts.Axis() != 0 or opts.FusedActivationFunction():
            return None
        if start is None or start.dtype == object or np.any(start != 0):
            return None
        rows = self.get_tensor_expr(head[0])
        update = self.get_tensor_expr(inputs[1])
        shape = [int(d) for d in self.get_tensor_shape(head[0])]
        out_shape = [int(d) for d in self.get_tensor_shape(self.get_output_tensors(op)[0])]
        count = int(self.get_tensor_shape(inputs[1])[0])
        if out_shape != shape or count < 1:
            return None
        size = relax.op.astype(self.get_tensor_expr(head[2]), "int64")
        step = relax.op.take(size, relax.const(0, "int64"), axis=0)  # i: the head's rows
        offset = relax.op.subtract(relax.const(np.arange(shape[0]), "int64"), step)
        inside = relax.op.logical_and(
            relax.op.greater_equal(offset, relax.const(0, "int64")),
            relax.op.less(offset, relax.const(count, "int64")),
        )
        picked = relax.op.take(update, relax.op.clip(offset, 0, count - 1), axis=0)
        mask = relax.op.reshape(inside, [shape[0]] + [1] * (len(shape) - 1))
        return relax.op.where(mask, picked, rows)

    def convert_squeeze(self, op):
        """``SQUEEZE`` with its axes made non-negative (TVM's keeps TFLite's negative axes, and
        ConvertLayout dies with std::bad_alloc on a negative squeeze axis of a symbolic shape).
        No axes: every dimension of size 1."""
        data = self.get_input_tensors(op)[0]
        x = self.get_tensor_expr(data)
        rank = len(self.get_tensor_shape(data))
        opts = fold.parse_options(op, "SqueezeOptions")
        stored = opts.SqueezeDimsAsNumpy() if opts is not None and opts.SqueezeDimsLength() else []
        axes = [int(a) % rank for a in stored]
        return relax.op.squeeze(x, axis=axes or None)

    def convert_prelu(self, op):
        """``x if x > 0 else alpha * x`` with alpha broadcast as stored (TVM's converter
        materializes alpha at the full activation size, one constant per activation element)."""
        data, alpha = self.get_input_tensors(op)[:2]
        x = self.get_tensor_expr(data)
        zero = relax.const(0, self.get_tensor_type_str(data.tensor.Type()))
        negative = relax.op.multiply(x, self.get_tensor_expr(alpha))
        return relax.op.where(relax.op.greater(x, zero), x, negative)

    def convert_expand_dims(self, op):
        """``EXPAND_DIMS``: TVM 0.27's converter passes ``relax.op.expand_dims`` a third argument
        it does not take. Quantized inputs pass through (preflight checks the parameters)."""
        data, axis_tensor = self.get_input_tensors(op)[:2]
        axis = int(np.asarray(self.get_tensor_value(axis_tensor)).reshape(-1)[0])
        rank = len(self.get_tensor_shape(data))
        if not -1 - rank <= axis <= rank:
            raise ValueError(f"axis {axis} out of range for rank {rank}")
        if axis < 0:
            axis += rank + 1
        return relax.op.expand_dims(self.get_tensor_expr(data), axis)

    # --- custom operators ---------------------------------------------------------------------
    def convert_transpose_conv_bias(self, op):
        """MediaPipe ``Convolution2DTransposeBias``: inputs (data NHWC, weights OHWI, bias), options
        ``TfLiteTransposeConvParams`` {padding, stride_width, stride_height} as raw int32s; the
        output shape is the output tensor's; padding is derived from it like TRANSPOSE_CONV."""
        data, weights, bias = self.get_input_tensors(op)[:3]
        output = self.get_output_tensors(op)[0]
        options = np.frombuffer(op.CustomOptionsAsNumpy().tobytes(), dtype="<i4")
        padding, stride_w, stride_h = (int(v) for v in options[:3])
        _, kernel_h, kernel_w, _ = (int(d) for d in self.get_tensor_shape(weights))
        _, out_h, out_w, _ = (int(d) for d in self.get_tensor_shape(output))
        if padding == 1:  # SAME
            top, bottom = get_pad_value(out_h, kernel_h, stride_h)
            left, right = get_pad_value(out_w, kernel_w, stride_w)
        elif padding == 2:  # VALID
            top = bottom = left = right = 0
        else:
            raise ValueError(f"padding code {padding} (expected 1 = SAME or 2 = VALID)")
        kernel = self.get_tensor_expr(weights)  # OHWI
        out = relax.op.nn.conv2d_transpose(
            self.get_tensor_expr(data),
            relax.op.permute_dims(kernel, axes=(3, 0, 1, 2)),  # IOHW
            strides=(stride_h, stride_w),
            padding=(top, left, bottom, right),
            data_layout="NHWC",
            kernel_layout="IOHW",
        )
        return relax.op.add(out, self.get_tensor_expr(bias))


def _qparams(source: TFLiteFile, tensor: int, graph: int = 0) -> tuple:
    q = source.model.Subgraphs(graph).Tensors(tensor).Quantization()
    if q is None or not q.ScaleLength():
        return (), ()
    zero_points = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1, np.int64)
    return tuple(np.round(q.ScaleAsNumpy(), 9)), tuple(zero_points)


def check_op(
    source: TFLiteFile,
    op: OpDesc,
    rewrites: Rewrites,
    known: set[str],
    graph: Graph | None = None,
    initialiser: bool = False,
) -> str | None:
    """Why ``op`` (of ``graph``, the main graph by default) cannot be translated, or None.
    ``initialiser``: ``graph`` is a CALL_ONCE initialiser."""
    graph = graph or source.graphs[0]
    tensors = graph.tensors
    if op.index in rewrites.dropped:
        return None
    if initialiser and op.name not in INITIALISERS:
        return f"a CALL_ONCE initialiser that runs {op.name} (only variable and table set-up)"
    name = BUILTIN_CUSTOM.get(op.name, op.name) if op.custom else op.name
    if op.custom and name not in known:
        return f"custom operator {op.name!r} has no converter in bridge"
    if name in MARKERS:
        return f"{name} marks a delegated or newer-schema operator; nothing to translate"
    if name not in known:
        return f"operator {name} is not supported by TVM's TFLite frontend"
    if name == "ASSIGN_VARIABLE" and not initialiser:  # state carried from call to call
        return "stateful model: variables updated at every call are not supported"
    for t in (*op.inputs, *op.outputs):
        if t >= 0 and t not in rewrites.constants and tensors[t].dtype in UNTYPED:
            desc = tensors[t]
            return f"tensor {desc.name!r} has type {desc.dtype}, which TVM cannot represent"
    activations = [
        t
        for t in op.inputs
        if t >= 0 and t not in rewrites.constants and source.buffer_bytes(tensors[t].buffer) is None
    ]
    quantized = [t for t in (*activations, *op.outputs) if tensors[t].quantized]
    if not quantized:
        if graph.index and name not in ("QUANTIZE", "DEQUANTIZE"):
            weights = [t for t in op.inputs if t >= 0 and t not in activations]
            if any(tensors[t].quantized for t in weights):
                return f"{name} with int8 weights and float activations in a control-flow subgraph"
        return None
    if name in OperatorConverter._SUPPORTED_QUANTIZED_OPS or name in QUANTIZED_STORAGE:
        return None
    if name in INTEGER_ONLY:  # bridge.quant computes them (TVM's converter refuses them)
        return None
    if name == "SHAPE":  # of an integer tensor: its shape, whatever its values
        return None
    if name in QUANTIZED_PASSTHROUGH and activations:
        # the data is input 0, even when stored (GATHER of an int8 embedding table by ids)
        first = op.inputs[0] if op.inputs[0] >= 0 else activations[0]
        out = op.outputs[0]
        if tensors[first].quantized and tensors[out].quantized:
            if _qparams(source, first, graph.index) == _qparams(source, out, graph.index):
                return None
            return f"quantized {name} changes scale or zero point; only pass-through is supported"
    return f"quantized (integer) {name} is not supported"


def preflight(source: TFLiteFile, rewrites: Rewrites) -> list[Problem]:
    """Every operator that cannot be translated, in model order: subgraph 0's, then those of
    the subgraphs its control flow runs (each once, in the order first reached)."""
    known = set(_known_names())
    problems = []
    pending = [(0, False)]  # (subgraph, is a CALL_ONCE initialiser)
    seen = {0}
    while pending:
        index, initialiser = pending.pop(0)
        graph = source.graphs[index]
        own = rewrites if index == 0 else Rewrites()
        for op in graph.ops:
            reason = check_op(source, op, own, known, graph, initialiser)
            if reason is not None:
                problems.append(Problem(op_label(source, op, graph), op.name, reason))
            for called in called_graphs(source, graph, op):
                if called not in seen:
                    seen.add(called)
                    pending.append((called, op.name == "CALL_ONCE"))
    return problems


def subgraph_owners(source: TFLiteFile) -> dict[int, str]:
    """Subgraph index -> the label of the main graph's operator that (maybe through other
    subgraphs) runs it: where ``bridge inspect`` shows a subgraph's problems."""
    owners: dict[int, str] = {}
    for op in source.ops:
        pending = called_graphs(source, source.graphs[0], op)
        while pending:
            index = pending.pop()
            if index in owners:
                continue
            owners[index] = op_label(source, op)
            graph = source.graphs[index]
            for inner in graph.ops:
                pending.extend(called_graphs(source, graph, inner))
    return owners


def called_graphs(source: TFLiteFile, graph: Graph, op: OpDesc) -> list[int]:
    """The subgraphs a control-flow operator runs (none for other operators)."""
    import importlib

    if op.custom or op.name not in CONTROL_FLOW:
        return []
    table, fields = CONTROL_FLOW[op.name]
    label = op_label(source, op, graph)
    try:
        raw = source.model.Subgraphs(graph.index).Operators(op.index).BuiltinOptions()
        if raw is None:
            raise ValueError("no options")
        options = getattr(importlib.import_module(f"tflite.{table}"), table)()
        options.Init(raw.Bytes, raw.Pos)
        called = [int(getattr(options, f)()) for f in fields]
    except READ_ERRORS as exc:
        raise ModelFileError(source.path, f"operator {label}: corrupt options ({exc})") from exc
    for index in called:
        if not 0 < index < len(source.graphs):
            raise ModelFileError(source.path, f"operator {label} runs subgraph {index}: not there")
    return called


def op_label(source: TFLiteFile, op: OpDesc, graph: Graph | None = None) -> str:
    """``#index`` plus the name of the operator's first output tensor (the first of the names
    the converter fused with ';', at most 48 characters); ``subgraph k #index ...`` outside the
    main graph."""
    tensors = graph.tensors if graph is not None else source.tensors
    out = tensors[op.outputs[0]].name.split(";")[0] if op.outputs else "-"
    where = f"subgraph {graph.index} " if graph is not None and graph.index else ""
    return f"{where}#{op.index} {out if len(out) <= 48 else '...' + out[-45:]}"


def _known_names() -> list[str]:
    """Operator names the converter translates (a converter built without a model)."""
    converter = BridgeConverter.__new__(BridgeConverter)
    BridgeConverter.__init__(converter, None, None, None, None)
    return [*converter.convert_map, *BUILTIN_CUSTOM.values()]

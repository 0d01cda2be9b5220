"""Operator support: which TFLite operators translate, and converters for custom operators.

Translation is TVM's ``tvm.relax.frontend.tflite`` ``OperatorConverter``, subclassed here (never
patched): custom operators with public semantics get converters, every operator is checked
before translation so that all problems are reported at once, and a failing converter names its
operator.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter, get_pad_value

from bridge.errors import Problem
from bridge.quant.tflite import integer_converters
from bridge.tflite.reader import OpDesc, TFLiteFile
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
# Tensor types TVM's frontend has no Relax dtype for (string, resource and variant tensors are
# handled by its hash-table and variable operators).
UNTYPED = {"float64", "uint16", "int4", "bfloat16", "complex128"}


class OperatorFailed(Exception):
    """TVM's converter raised while translating one operator."""

    def __init__(self, label: str, cause: Exception):
        super().__init__(label)
        self.label = label
        self.cause = cause


BUILTIN_CUSTOM = {"TFLite_Detection_PostProcess": "DETECTION_POSTPROCESS"}


class BridgeConverter(OperatorConverter):
    """TVM's converter plus bridge's custom operators; translates the operators it is given."""

    def __init__(self, model, subgraph, exp_tab, ctx, conversion_state=None):
        super().__init__(model, subgraph, exp_tab, ctx, conversion_state)
        self.convert_map.update({"Convolution2DTransposeBias": self.convert_transpose_conv_bias})
        self.convert_map.update(integer_converters(self))  # int8 products: bridge.quant
        self.op_labels: list[str] = []  # set by translate(): "#index NAME" per operator shown

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
                self._convert_one(op)
            except Exception as exc:
                raise OperatorFailed(self.op_labels[position], exc) from exc

    def _convert_one(self, op) -> None:
        """The body of TVM's loop for one operator: convert, then name its outputs."""
        from tvm.relax.frontend.tflite.tflite_frontend import get_tensor_name

        output_tensors = self.get_output_tensors(op)
        result = self.convert_map[self.get_op_code_str(op)](op=op)
        if result is None:  # prefetched (constant) result
            return
        result = self.bb.normalize(result)
        if len(output_tensors) == 1:
            name = get_tensor_name(self.subgraph, output_tensors[0].tensor_idx)
            self.exp_tab.set_expr(name, result)
            return
        for i, tensor in enumerate(output_tensors):
            self.exp_tab.set_expr(get_tensor_name(self.subgraph, tensor.tensor_idx), result[i])

    def convert_prelu(self, op):
        """``x if x > 0 else alpha * x`` with alpha broadcast as stored (TVM's converter
        materializes alpha at the full activation size, one constant per activation element)."""
        data, alpha = self.get_input_tensors(op)[:2]
        x = self.get_tensor_expr(data)
        zero = relax.const(0, self.get_tensor_type_str(data.tensor.Type()))
        negative = relax.op.multiply(x, self.get_tensor_expr(alpha))
        return relax.op.where(relax.op.greater(x, zero), x, negative)

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


def _qparams(source: TFLiteFile, tensor: int) -> tuple:
    q = source.model.Subgraphs(0).Tensors(tensor).Quantization()
    if q is None or not q.ScaleLength():
        return (), ()
    zero_points = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1, np.int64)
    return tuple(np.round(q.ScaleAsNumpy(), 9)), tuple(zero_points)


def check_op(source: TFLiteFile, op: OpDesc, rewrites: Rewrites, known: set[str]) -> str | None:
    """Why ``op`` cannot be translated, or None."""
    if op.index in rewrites.dropped:
        return None
    name = BUILTIN_CUSTOM.get(op.name, op.name) if op.custom else op.name
    if op.custom and name not in known:
        return f"custom operator {op.name!r} has no converter in bridge"
    if name in MARKERS:
        return f"{name} marks a delegated or newer-schema operator; nothing to translate"
    if name not in known:
        return f"operator {name} is not supported by TVM's TFLite frontend"
    if name == "ASSIGN_VARIABLE":  # in the main graph: state carried from one call to the next
        return "stateful model: variables updated at every call are not supported"
    for t in (*op.inputs, *op.outputs):
        if t >= 0 and t not in rewrites.constants and source.tensors[t].dtype in UNTYPED:
            desc = source.tensors[t]
            return f"tensor {desc.name!r} has type {desc.dtype}, which TVM cannot represent"
    activations = [
        t
        for t in op.inputs
        if t >= 0
        and t not in rewrites.constants
        and source.buffer_bytes(source.tensors[t].buffer) is None
    ]
    quantized = [t for t in (*activations, *op.outputs) if source.tensors[t].quantized]
    if not quantized:
        return None
    if name in OperatorConverter._SUPPORTED_QUANTIZED_OPS or name in QUANTIZED_STORAGE:
        return None
    if name in QUANTIZED_PASSTHROUGH and activations:
        first, out = activations[0], op.outputs[0]
        if source.tensors[first].quantized and source.tensors[out].quantized:
            if _qparams(source, first) == _qparams(source, out):
                return None
            return f"quantized {name} changes scale or zero point; only pass-through is supported"
    return f"quantized (integer) {name} is not supported"


def preflight(source: TFLiteFile, rewrites: Rewrites) -> list[Problem]:
    """Every operator of subgraph 0 that cannot be translated, in model order."""
    known = set(_known_names())
    problems = []
    for op in source.ops:
        reason = check_op(source, op, rewrites, known)
        if reason is not None:
            problems.append(Problem(op_label(source, op), op.name, reason))
    return problems


def op_label(source: TFLiteFile, op: OpDesc) -> str:
    """``#index`` plus the name of the operator's first output tensor (the first of the names
    the converter fused with ';', at most 48 characters)."""
    out = source.tensors[op.outputs[0]].name.split(";")[0] if op.outputs else "-"
    return f"#{op.index} {out if len(out) <= 48 else '...' + out[-45:]}"


def _known_names() -> list[str]:
    """Operator names the converter translates (a converter built without a model)."""
    converter = BridgeConverter.__new__(BridgeConverter)
    BridgeConverter.__init__(converter, None, None, None, None)
    return [*converter.convert_map, *BUILTIN_CUSTOM.values()]

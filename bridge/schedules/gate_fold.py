"""A per-channel gate folded into the convolution after it, at batch 1 (squeeze-and-excite).

EfficientNet's and MobileNetV3's blocks scale a map by a gate computed from it, one value per
channel (``x * g``, ``g`` of shape ``(1, 1, 1, C)``), and the map's only reader is the block's
projection convolution. Scaling every input channel of a convolution is scaling the matching
input rows of its weights: ``conv2d(x * g, W) == conv2d(x, W * g[ci])`` (padding is zeros, and
``0 * g`` is 0). At batch 1 the gate is one vector, so the weights scaled by it are computed
once per call (``C x O`` products) instead of the map (``H x W x C`` products, written and read
back once more). Done where the map has more pixels than the convolution has output channels
(EfficientNetB0: blocks 1a-5c, where the map is 56x56 to 14x14), in float32 only: the products
associate differently, within float rounding. Integer models keep TFLite's MUL, whose
requantized result the convolution reads.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax

from bridge.schedules.common import static_float32, static_shape, tensor_constant, use_counts

CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
MULTIPLY = tvm.ir.Op.get("relax.multiply")


@tvm.transform.module_pass(opt_level=0, name="bridge.FoldGates")
def fold_gates(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """``conv2d(x * g, W)`` -> ``conv2d(x, W * g)`` for a float32 gate ``g`` of one value per
    channel, constant HWIO weights ``W``, batch 1, and ``x * g`` read by nothing else."""
    rewriter = _FoldGates(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.uses = use_counts(func)
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()


@relax.expr_functor.mutator
class _FoldGates(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.uses: dict = {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not call.op.same_as(CONV2D):
            return call
        folded = self._folded(call)
        return call if folded is None else folded

    def _folded(self, call: relax.Call) -> relax.Expr | None:
        attrs = call.attrs
        data, weights = call.args
        if (
            attrs.data_layout != "NHWC"
            or attrs.kernel_layout != "HWIO"
            or int(attrs.groups) != 1
            or not isinstance(data, relax.Var)
            or self.uses.get(data, 0) != 1
        ):
            return None
        bound = self.lookup_binding(data)
        if not (isinstance(bound, relax.Call) and bound.op.same_as(MULTIPLY)):
            return None
        if not tensor_constant(weights) or not static_float32(weights):
            return None
        split = _map_and_gate(*bound.args)
        if split is None:
            return None
        x, gate = split
        map_shape, outputs = static_shape(x), int(weights.ty.shape.values[3])
        if math.prod(map_shape[1:3]) <= outputs:
            return None  # scaling the weights would cost more than scaling the map
        channels = map_shape[3]
        scale = relax.op.reshape(gate, (1, 1, channels, 1))
        return relax.op.nn.conv2d(
            x,
            relax.op.multiply(weights, scale),
            strides=attrs.strides,
            padding=attrs.padding,
            dilation=attrs.dilation,
            groups=1,
            data_layout="NHWC",
            kernel_layout="HWIO",
            out_layout=attrs.out_layout,
            out_dtype=attrs.out_dtype,
        )


def _map_and_gate(a: relax.Expr, b: relax.Expr) -> tuple[relax.Expr, relax.Expr] | None:
    """``(map, gate)`` of a float32 product of an NHWC map at batch 1 and one value per
    channel, in either order; None for any other product."""
    if not (static_float32(a) and static_float32(b)):
        return None
    shapes = [static_shape(a), static_shape(b)]
    for (x, gate), (x_shape, g_shape) in (((a, b), shapes), ((b, a), shapes[::-1])):
        if len(x_shape) == 4 and x_shape[0] == 1 and g_shape == (1, 1, 1, x_shape[3]):
            return x, gate
    return None

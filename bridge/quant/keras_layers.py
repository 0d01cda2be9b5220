"""Keras layers on integer kernels: each emitter takes a :class:`Site` (the call, its int8
inputs, what it absorbs) and returns its outputs as :class:`QValue` s, or a string saying why it
stays float (the walk then runs the float converter with dequantized inputs).

Weights are quantized here: per-channel symmetric int8 (scale ``max|w| / 127`` per output
channel), biases int32 at ``input_scale * weight_scale``; a BatchNormalization the plan absorbed
is folded into the weights first. The products and epilogues are :mod:`bridge.quant.kernels`,
:mod:`bridge.quant.fixed_point` and :mod:`bridge.quant.elementwise`, as for TFLite files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.context import static_shape
from bridge.convert.spatial import channels_first, ntuple, paddings
from bridge.keras.graph import Layer
from bridge.quant import elementwise, fixed_point, kernels
from bridge.quant.calibrate import quantization
from bridge.quant.plan import (
    CLAMPS,
    DEPTHWISE_PART,
    activation_name,
    call_key,
    clamp_of,
    split_activation,
)

if TYPE_CHECKING:
    from bridge.quant.keras import QuantWalker

INT8 = "int8"
ROUNDING = "double_up"  # LiteRT's x86 rounding for convolutions and fully connected layers


@dataclass(eq=False)
class QValue:
    """A tensor of the integer walk: its float form, its int8 form (with ``scale`` and
    ``zero_point``), or both; ``key`` names its observed range."""

    key: str | None
    real: relax.Expr | None = None
    q: relax.Expr | None = None
    scale: float = 1.0
    zero_point: int = 0

    @property
    def operand(self) -> elementwise.Operand:
        return self.q, (self.scale, self.zero_point)

    @property
    def ty(self):
        """The tensor type (``static_shape`` reads it; both forms have the same shape)."""
        return (self.q if self.q is not None else self.real).ty


@dataclass
class Site:
    """One layer call of the integer walk."""

    walker: QuantWalker
    layer: Layer
    path: str
    index: int
    occurrence: int
    inputs: list[QValue]
    followers: list[tuple[str, int, Layer]] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.layer.config

    def get(self, key: str, default: Any = None) -> Any:
        value = self.config.get(key, default)
        return default if value is None else value

    def weight(self, name: str) -> np.ndarray | None:
        return self.weight_of(self.path, name)

    def weight_of(self, path: str, name: str) -> np.ndarray | None:
        value = self.walker.params.get(f"{path}/{name}")
        return None if value is None else np.asarray(value, np.float64)

    def emit(self, expr: relax.Expr) -> relax.Expr:
        return self.walker.bb.emit(expr)

    def int_inputs(self) -> list[QValue] | str:
        values = [self.walker.integer(v) for v in self.inputs]
        if any(v is None for v in values):
            return "an input has no observed range (not a float tensor?)"
        return values

    def key(self, part: str = "") -> str:
        """The key of this call's (or, with absorbed layers, the last one's) output."""
        if self.followers:
            path, index, _ = self.followers[-1]
            return call_key(path, index, self.walker.seen.get((path, index), 0), 0, part)
        return call_key(self.path, self.index, self.occurrence, 0, part)

    def out_quant(self, part: str = "") -> tuple[float, int] | None:
        found = self.walker.ranges.get(self.key(part))
        return None if found is None else quantization(*found)

    def clamp(self) -> str:
        """The activation clamp fused into this call's requantization."""
        own = CLAMPS.get(activation_name(self.config.get("activation")), "NONE")
        for _, _, layer in self.followers:
            own = clamp_of(layer) or own
        return own

    def batch_norm(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(scale, shift) per channel of an absorbed BatchNormalization."""
        for path, _, layer in self.followers:
            if layer.class_name == "BatchNormalization":
                return bn_affine(self, path, layer.config)
        return None

    def result(self, q: relax.Expr, scale: float, zero_point: int, part: str = "") -> QValue:
        return QValue(self.key(part), q=self.emit(q), scale=scale, zero_point=zero_point)


def bn_affine(site: Site, path: str, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization at inference as ``x * scale + shift`` per channel."""
    variance = site.weight_of(path, "moving_variance")
    mean = site.weight_of(path, "moving_mean")
    scale = 1.0 / np.sqrt(variance + float(config.get("epsilon", 1e-3)))
    gamma = site.weight_of(path, "gamma")
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale
    beta = site.weight_of(path, "beta")
    if beta is not None:
        shift = shift + beta
    return scale, shift


def per_channel(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights per channel of the last axis: (int8 weights, scales)."""
    channels = weight.shape[-1]
    largest = np.abs(weight).reshape(-1, channels).max(axis=0)
    scale = np.where(largest > 0, largest / 127.0, 1.0).astype(np.float32).astype(np.float64)
    q = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
    return q, scale


def _bias(bias: np.ndarray | None, scale: np.ndarray, channels: int) -> np.ndarray | str:
    if bias is None:
        return np.zeros(channels, np.int32)
    q = np.round(np.broadcast_to(bias, (channels,)) / scale)
    if np.abs(q).max(initial=0) >= 2**31 - 1:
        return "the bias does not fit int32 at the input and weight scales"
    return q.astype(np.int32)


def _product(
    site: Site,
    x: QValue,
    weight: np.ndarray,
    bias: np.ndarray | None,
    accumulate: Callable[[np.ndarray, np.ndarray], relax.Expr],
    part: str = "",
) -> list[QValue] | str:
    """A product layer: fold BN, quantize weights (channels last) and bias, accumulate with
    ``accumulate(int8 weights, int32 bias)``, requantize with the fused clamp, then any split-off
    activation. ``part``: an inner product of the layer (a SeparableConv2D's depthwise step),
    requantized to that tensor's range with nothing folded or fused."""
    channels = weight.shape[-1]
    folded = None if part else site.batch_norm()
    if folded is not None:
        scale, shift = folded
        weight = weight * scale
        bias = shift + (scale * bias if bias is not None else 0.0)
    q_weight, w_scale = per_channel(weight)
    acc_scale = np.float64(np.float32(x.scale)) * w_scale
    q_bias = _bias(bias, acc_scale, channels)
    if isinstance(q_bias, str):
        return q_bias
    split = None if part else split_activation(site.layer)
    part = part or ("/pre" if split else "")
    out = site.out_quant(part)
    if out is None:
        return "its output has no observed range"
    try:
        acc = accumulate(q_weight, q_bias)
    except ValueError as exc:  # kernels.fold_bias: the folded bias overflows
        return str(exc)
    clamp_name = "NONE" if part == DEPTHWISE_PART else site.clamp()
    clamp = fixed_point.activation_range(clamp_name, out[0], out[1], INT8)
    multiplier = fixed_point.quantize_multiplier(acc_scale / np.float64(out[0]))
    y = fixed_point.requantize(acc, multiplier, out[1], clamp, INT8, ROUNDING)
    value = site.result(y, *out, part)
    if not split:
        return [value]
    return [site.walker.activation(site, value, split)]


def _padding(site: Site, size: tuple[int, int], kernel, strides, dilation) -> tuple | str:
    padding = site.get("padding", "valid")
    if padding not in ("valid", "same"):
        return f"padding={padding!r}"
    befores, afters = paddings(padding, size, kernel, strides, dilation)
    return (befores[0], befores[1], afters[0], afters[1])


def _image(site: Site) -> QValue | str:
    """The call's one int8 input, an NHWC image (channels_last, 2-D)."""
    inputs = site.int_inputs()
    if isinstance(inputs, str):
        return inputs
    if channels_first(site.config) or len(static_shape(inputs[0].q)) != 4:
        return "channels_first or not 2-D"
    return inputs[0]


def _conv_common(site: Site) -> tuple[QValue, tuple, kernels.Window] | str:
    x = _image(site)
    if isinstance(x, str):
        return x
    shape = static_shape(x.q)
    kernel = ntuple(site.get("kernel_size"), 2)
    strides = ntuple(site.get("strides", 1), 2)
    dilation = ntuple(site.get("dilation_rate", 1), 2)
    padding = _padding(site, shape[1:3], kernel, strides, dilation)
    if isinstance(padding, str):
        return padding
    return x, shape, kernels.Window(strides, padding, dilation)


def conv2d(site: Site) -> list[QValue] | str:
    common = _conv_common(site)
    if isinstance(common, str):
        return common
    x, _, window = common
    if int(site.get("groups", 1)) != 1:
        return "grouped convolution"
    kernel = site.weight("kernel")  # HWIO

    def accumulate(q: np.ndarray, bias: np.ndarray) -> relax.Expr:
        ohwi = np.ascontiguousarray(q.transpose(3, 0, 1, 2))
        return kernels.conv2d(x.q, ohwi, bias, x.zero_point, window)

    return _product(site, x, kernel, site.weight("bias"), accumulate)


def _depthwise(site: Site, bias: np.ndarray | None, part: str = "") -> list[QValue] | str:
    """The layer's depthwise product (``depthwise_kernel`` [KH, KW, C, M])."""
    common = _conv_common(site)
    if isinstance(common, str):
        return common
    x, shape, window = common
    kh, kw, channels, multiplier = site.weight("depthwise_kernel").shape
    kernel = site.weight("depthwise_kernel").reshape(kh, kw, channels * multiplier)

    def accumulate(q: np.ndarray, bias: np.ndarray) -> relax.Expr:
        return kernels.depthwise_conv2d(x.q, q[None], bias, x.zero_point, window, int(shape[3]))

    return _product(site, x, kernel, bias, accumulate, part)


def depthwise_conv2d(site: Site) -> list[QValue] | str:
    return _depthwise(site, site.weight("bias"))


def separable_conv2d(site: Site) -> list[QValue] | str:
    """The depthwise step (requantized to its observed range), then the pointwise one."""
    inner = _depthwise(site, None, DEPTHWISE_PART)
    if isinstance(inner, str):
        return inner
    (y,) = inner
    pointwise = site.weight("pointwise_kernel")  # (1, 1, C * M, filters)

    def accumulate(q: np.ndarray, bias: np.ndarray) -> relax.Expr:
        ohwi = np.ascontiguousarray(q.transpose(3, 0, 1, 2))
        return kernels.conv2d(y.q, ohwi, bias, y.zero_point, kernels.Window())

    return _product(site, y, pointwise, site.weight("bias"), accumulate)


def dense(site: Site) -> list[QValue] | str:
    inputs = site.int_inputs()
    if isinstance(inputs, str):
        return inputs
    x = inputs[0]
    shape = static_shape(x.q)
    kernel = site.weight("kernel")  # (K, N)
    depth, units = kernel.shape

    def accumulate(q: np.ndarray, bias: np.ndarray) -> relax.Expr:
        flat = x.q if len(shape) == 2 else R.reshape(x.q, [-1, depth])
        acc = kernels.dense(flat, np.ascontiguousarray(q.T), bias, x.zero_point)
        return acc if len(shape) == 2 else R.reshape(acc, [*shape[:-1], units])

    return _product(site, x, kernel, site.weight("bias"), accumulate)


def batch_normalization(site: Site) -> list[QValue] | str:
    """A BatchNormalization no product absorbed: a per-channel 1x1 depthwise product."""
    inputs = site.int_inputs()
    if isinstance(inputs, str):
        return inputs
    x = inputs[0]
    shape = static_shape(x.q)
    axis = site.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if axis not in (-1, len(shape) - 1):
        return f"axis {axis} is not the last"
    scale, shift = bn_affine(site, site.path, site.config)
    channels = int(shape[-1])

    def accumulate(q: np.ndarray, bias: np.ndarray) -> relax.Expr:
        pixels = R.reshape(x.q, [-1, 1, 1, channels])
        weight = q.reshape(1, 1, 1, channels)
        acc = kernels.depthwise_conv2d(
            pixels, weight, bias, x.zero_point, kernels.Window(), channels
        )
        return R.reshape(acc, list(shape))

    return _product(site, x, scale, shift, accumulate)


def _pool_args(site: Site) -> tuple | str:
    """(input, its shape, window, strides, padding) of a 2-D pooling layer."""
    x = _image(site)
    if isinstance(x, str):
        return x
    shape = static_shape(x.q)
    window = ntuple(site.get("pool_size", 2), 2)
    strides = ntuple(site.get("strides") or window, 2)
    padding = _padding(site, shape[1:3], window, strides, (1, 1))
    return padding if isinstance(padding, str) else (x, shape, window, strides, padding)


def max_pooling2d(site: Site) -> list[QValue] | str:
    args = _pool_args(site)
    if isinstance(args, str):
        return args
    x, _, window, strides, (top, left, bottom, right) = args
    y = R.nn.max_pool2d(x.q, window, strides, padding=[top, left, bottom, right], layout="NHWC")
    return [site.result(y, x.scale, x.zero_point)]


def average_pooling2d(site: Site) -> list[QValue] | str:
    """Each window's integer sum over its pixel count (padding excluded, as Keras), keeping the
    input's quantization (TFLite's integer AVERAGE_POOL_2D)."""
    args = _pool_args(site)
    if isinstance(args, str):
        return args
    x, shape, window, strides, padding = args
    total = kernels.window_sum(x.q, window, strides, padding)
    counts = kernels.window_counts((int(shape[1]), int(shape[2])), window, strides, padding)
    mean = kernels.divide_round_away(total, counts)
    return [site.result(R.astype(R.clip(mean, -128, 127), INT8), x.scale, x.zero_point)]


def global_average_pooling2d(site: Site) -> list[QValue] | str:
    x = _image(site)
    if isinstance(x, str):
        return x
    shape = static_shape(x.q)
    out = site.out_quant()
    if out is None:
        return "its output has no observed range"
    total = kernels.spatial_sum(x.q, x.zero_point)
    real = np.float64(np.float32(x.scale)) / (int(shape[1]) * int(shape[2]) * np.float64(out[0]))
    y = fixed_point.requantize(
        total, fixed_point.quantize_multiplier(real), out[1], (-128, 127), INT8, ROUNDING
    )
    if not site.get("keepdims", False):
        y = R.reshape(y, [shape[0], shape[3]])
    return [site.result(y, *out)]


def global_max_pooling2d(site: Site) -> list[QValue] | str:
    x = _image(site)
    if isinstance(x, str):
        return x
    y = R.max(x.q, axis=[1, 2], keepdims=bool(site.get("keepdims", False)))
    return [site.result(y, x.scale, x.zero_point)]


def _binary(site: Site) -> tuple[QValue, QValue, tuple[float, int]] | str:
    """The two int8 inputs of an Add or Multiply and the output's quantization."""
    inputs = site.int_inputs()
    if isinstance(inputs, str):
        return inputs
    if len(inputs) != 2:
        return f"{len(inputs)} inputs (the integer kernel takes 2)"
    out = site.out_quant()
    if out is None:
        return "its output has no observed range"
    return inputs[0], inputs[1], out


def add(site: Site) -> list[QValue] | str:
    parts = _binary(site)
    if isinstance(parts, str):
        return parts
    a, b, out = parts
    clamp = fixed_point.activation_range(site.clamp(), out[0], out[1], INT8)
    y = elementwise.add(a.operand, b.operand, out, clamp, INT8)
    return [site.result(y, *out)]


def subtract(site: Site) -> list[QValue] | str:
    """``a - b`` as the integer ADD of ``a`` and ``-b``: ``~b = -b - 1`` with zero point
    ``-zp - 1`` is exactly ``-b`` at the same scale (and stays in int8)."""
    parts = _binary(site)
    if isinstance(parts, str):
        return parts
    a, b, out = parts
    negated = (R.bitwise_not(b.q), (b.scale, -b.zero_point - 1))
    y = elementwise.add(a.operand, negated, out, (-128, 127), INT8)
    return [site.result(y, *out)]


def multiply(site: Site) -> list[QValue] | str:
    parts = _binary(site)
    if isinstance(parts, str):
        return parts
    a, b, out = parts
    y = elementwise.multiply(a.operand, b.operand, out, (-128, 127), INT8)
    return [site.result(y, *out)]


def concatenate(site: Site) -> list[QValue] | str:
    """Inputs quantized like the output pass through, others are rescaled by table."""
    inputs = site.int_inputs()
    if isinstance(inputs, str):
        return inputs
    out = site.out_quant()
    if out is None:
        return "its output has no observed range"
    parts = []
    for v in inputs:
        x = v.q
        if (np.float32(v.scale), v.zero_point) != (np.float32(out[0]), out[1]):
            table = fixed_point.rescale_table(v.scale, v.zero_point, INT8, out[0], out[1], INT8)
            x = elementwise.lookup(x, table, -128)
        parts.append(x)
    return [site.result(R.concat(parts, axis=int(site.get("axis", -1))), *out)]


def zero_padding2d(site: Site) -> list[QValue] | str:
    x = _image(site)
    if isinstance(x, str):
        return x
    padding = site.get("padding", 1)
    if isinstance(padding, int):
        (top, bottom), (left, right) = (padding, padding), (padding, padding)
    else:
        rows, cols = padding
        top, bottom = ntuple(rows, 2)
        left, right = ntuple(cols, 2)
    y = R.nn.pad(x.q, [0, 0, top, bottom, left, right, 0, 0], pad_value=float(x.zero_point))
    return [site.result(y, x.scale, x.zero_point)]


def unary(site: Site) -> list[QValue] | str:
    """An elementwise activation layer as a 256-entry table of its float converter."""
    inputs = site.int_inputs()
    if isinstance(inputs, str):
        return inputs
    if site.layer.class_name == "Activation":
        name = activation_name(site.config.get("activation"))
        if name is None or name in ("softmax", "log_softmax", "glu", "sparsemax"):
            return f"activation {name!r} is not elementwise"
    value = site.walker.table(site, inputs[0], site.key(), None)
    return "its output has no observed range" if value is None else [value]


# Layers that move int8 values without arithmetic: their float converter runs on the int8 tensor.
SHAPE_ONLY = frozenset(
    {
        "Flatten",
        "Reshape",
        "Permute",
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Cropping1D",
        "Cropping2D",
        "RepeatVector",
    }
)

EMITTERS: dict[str, Callable[[Site], list[QValue] | str]] = {
    "Conv2D": conv2d,
    "DepthwiseConv2D": depthwise_conv2d,
    "SeparableConv2D": separable_conv2d,
    "Dense": dense,
    "BatchNormalization": batch_normalization,
    "MaxPooling2D": max_pooling2d,
    "AveragePooling2D": average_pooling2d,
    "GlobalAveragePooling2D": global_average_pooling2d,
    "GlobalMaxPooling2D": global_max_pooling2d,
    "Add": add,
    "Subtract": subtract,
    "Multiply": multiply,
    "Concatenate": concatenate,
    "ZeroPadding2D": zero_padding2d,
    "ReLU": unary,
    "LeakyReLU": unary,
    "ELU": unary,
    "ThresholdedReLU": unary,
    "Activation": unary,
}

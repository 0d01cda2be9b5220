"""Convolutions: Conv1D/2D/3D, Depthwise/SeparableConv1D/2D, Conv1D/2D/3DTranspose.

Data stays channels_last (NWC/NHWC/NDHWC) and Keras kernels are used in their stored layout
(WIO/HWIO/DHWIO), so no weight is rearranged at run time.
"""

from __future__ import annotations

from typing import Any

from tvm import relax
from tvm.relax import op as R

from bridge.convert.registry import register
from bridge.convert.spatial import (
    DATA_LAYOUT,
    KERNEL_LAYOUT,
    add_bias,
    channels_last_op,
    ntuple,
    paddings,
    to_channels_first,
    to_channels_last,
)

CONV_OPS = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}


def _with_bias(*names: str):
    def weights(config: dict[str, Any]) -> list[str]:
        return [*names, "bias"] if config.get("use_bias", True) else list(names)

    return weights


def _check_conv(config: dict[str, Any]) -> list[str]:
    padding = config.get("padding", "valid")
    if padding not in ("valid", "same", "causal"):
        return [f"padding={padding!r} is not supported"]
    return []


def _spatial(ctx, x: relax.Expr) -> tuple[int, ...]:
    return ctx.shape(x)[1:-1]


def conv_nd(
    ctx,
    x: relax.Expr,
    kernel: relax.Expr,
    kernel_size: tuple[int, ...],
    groups: int = 1,
    strides: tuple[int, ...] | None = None,
) -> relax.Expr:
    """A channels_last convolution with the layer's padding/strides/dilation."""
    n = len(kernel_size)
    strides = strides or ntuple(ctx.get("strides", 1), n)
    dilation = ntuple(ctx.get("dilation_rate", 1), n)
    befores, afters = paddings(
        ctx.get("padding", "valid"), _spatial(ctx, x), kernel_size, strides, dilation
    )
    return ctx.emit(
        CONV_OPS[n](
            x,
            kernel,
            strides=strides,
            padding=befores + afters,
            dilation=dilation,
            groups=groups,
            data_layout=DATA_LAYOUT[n],
            kernel_layout=KERNEL_LAYOUT[n],
        )
    )


@register(
    "Conv1D", "Conv2D", "Conv3D", weights=_with_bias("kernel"), check=_check_conv, activation=True
)
def convolution(ctx, inputs):
    def body(x):
        n = len(ctx.shape(x)) - 2
        size = ntuple(ctx.get("kernel_size"), n)
        groups = int(ctx.get("groups", 1))
        kernel = ctx.weight("kernel", (*size, ctx.shape(x)[-1] // groups, ctx.get("filters")))
        return add_bias(ctx, conv_nd(ctx, x, kernel, size, groups))

    return channels_last_op(ctx, inputs[0], body)


def _depthwise(ctx, x: relax.Expr) -> relax.Expr:
    n = len(ctx.shape(x)) - 2
    size = ntuple(ctx.get("kernel_size"), n)
    channels = ctx.shape(x)[-1]
    multiplier = int(ctx.get("depth_multiplier", 1))
    kernel = ctx.weight("depthwise_kernel", (*size, channels, multiplier))
    # (k..., C, M) -> (k..., 1, C*M): output channel c*M + m, as Keras orders them.
    kernel = ctx.emit(R.reshape(kernel, (*size, 1, channels * multiplier)))
    return conv_nd(ctx, x, kernel, size, groups=channels)


@register(
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    weights=_with_bias("depthwise_kernel"),
    check=_check_conv,
    activation=True,
)
def depthwise_conv(ctx, inputs):
    return channels_last_op(ctx, inputs[0], lambda x: add_bias(ctx, _depthwise(ctx, x)))


@register(
    "SeparableConv1D",
    "SeparableConv2D",
    weights=_with_bias("depthwise_kernel", "pointwise_kernel"),
    check=_check_conv,
    activation=True,
)
def separable_conv(ctx, inputs):
    def body(x):
        n = len(ctx.shape(x)) - 2
        y = _depthwise(ctx, x)
        kernel = ctx.weight("pointwise_kernel", (*(1,) * n, ctx.shape(y)[-1], ctx.get("filters")))
        y = ctx.emit(
            CONV_OPS[n](y, kernel, data_layout=DATA_LAYOUT[n], kernel_layout=KERNEL_LAYOUT[n])
        )
        return add_bias(ctx, y)

    return channels_last_op(ctx, inputs[0], body)


def transpose_padding(
    kernel: int, stride: int, dilation: int, padding: str, output_padding: int | None
) -> tuple[int, int, int]:
    """(crop_before, crop_after, extra_after) of a transposed conv, matching Keras' semantics."""
    effective = (kernel - 1) * dilation + 1
    if padding == "valid":
        extra = max(effective, stride) - effective if output_padding is None else output_padding
        left, right = effective - 1, effective - 1 + extra
    else:
        total = stride + effective - 2 + (0 if output_padding is None else output_padding)
        left = min(total // 2 + total % 2, effective - 1)
        right = total - left
    # Keras pads the stride-dilated input by (left, right); a TVM transposed conv instead crops
    # its full output, so convert, turning a negative crop into output padding.
    crop_after = effective - 1 - right
    return effective - 1 - left, max(crop_after, 0), max(-crop_after, 0)


TRANSPOSE_OPS = {
    1: (R.nn.conv1d_transpose, "NCW", "IOW"),
    2: (R.nn.conv2d_transpose, "NCHW", "IOHW"),
    3: (R.nn.conv3d_transpose, "NCDHW", "IODHW"),
}


@register(
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    weights=_with_bias("kernel"),
    check=_check_conv,
    activation=True,
)
def conv_transpose(ctx, inputs):
    def body(x):
        n = len(ctx.shape(x)) - 2
        size = ntuple(ctx.get("kernel_size"), n)
        strides = ntuple(ctx.get("strides", 1), n)
        dilation = ntuple(ctx.get("dilation_rate", 1), n)
        out_pad = ctx.config.get("output_padding")
        out_pad = ntuple(out_pad, n) if out_pad is not None else (None,) * n
        pads = [
            transpose_padding(k, s, d, ctx.get("padding", "valid"), p)
            for k, s, d, p in zip(size, strides, dilation, out_pad)
        ]
        kernel = ctx.weight("kernel", (*size, ctx.get("filters"), ctx.shape(x)[-1]))
        # TVM lowers transposed convs only as channels_first data with IO... kernels.
        kernel = ctx.emit(R.permute_dims(kernel, [n + 1, n, *range(n)]))
        op, data_layout, kernel_layout = TRANSPOSE_OPS[n]
        y = ctx.emit(
            op(
                to_channels_first(ctx, x),
                kernel,
                strides=strides,
                padding=[p[0] for p in pads] + [p[1] for p in pads],
                output_padding=[p[2] for p in pads],
                dilation=dilation,
                data_layout=data_layout,
                kernel_layout=kernel_layout,
            )
        )
        return add_bias(ctx, to_channels_last(ctx, y))

    return channels_last_op(ctx, inputs[0], body)

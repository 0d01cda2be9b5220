"""Image resizing as Keras computes it, for static sizes: one weight matrix per spatial axis.

Keras 3 (JAX backend) resizes with ``jax.image.resize`` and tf.keras 2 with ``tf.image.resize``;
for the methods both offer, half-pixel centers and the renormalization of weights at the borders
make them agree, so one formulation serves both: ``out = W @ in`` along each resized axis, with
``W`` computed here in numpy (a port of the published scale-and-translate definition, not code)
and applied as a matmul. Nearest neighbour is a gather instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax
from tvm.relax import op as R


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - x)


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (TensorFlow's and JAX's bicubic)."""
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return np.where(x >= 2.0, 0.0, np.where(x >= 1.0, far, near))


def _lanczos(radius: int) -> Callable[[np.ndarray], np.ndarray]:
    def kernel(x: np.ndarray) -> np.ndarray:
        y = radius * np.sin(np.pi * x) * np.sin(np.pi * x / radius)
        safe = np.where(x != 0, np.pi**2 * x**2, 1.0)
        out = np.where(x > 1e-3, y / safe, 1.0)
        return np.where(x > radius, 0.0, out)

    return kernel


def _gaussian(x: np.ndarray) -> np.ndarray:
    """TensorFlow's gaussian kernel: sigma 0.5, radius 1.5."""
    return np.where(x < 1.5, np.exp(-(x**2) / (2 * 0.5**2)), 0.0)


def _mitchell(x: np.ndarray) -> np.ndarray:
    """TensorFlow's Mitchell-Netravali cubic (B = C = 1/3)."""
    near = (7.0 / 6.0) * x**3 - 2.0 * x**2 + 8.0 / 9.0
    far = -(7.0 / 18.0) * x**3 + 2.0 * x**2 - (10.0 / 3.0) * x + 16.0 / 9.0
    return np.where(x >= 2.0, 0.0, np.where(x >= 1.0, far, near))


KERNELS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "bilinear": _triangle,
    "bicubic": _keys_cubic,
    "lanczos3": _lanczos(3),
    "lanczos5": _lanczos(5),
    "gaussian": _gaussian,
    "mitchellcubic": _mitchell,
}
# Methods each Keras version's Resizing accepts (Keras 3 on JAX has no "area", "gaussian" or
# "mitchellcubic"; tf.keras 2 has no "lanczos" antialias switch: its kernels never widen).
METHODS = {
    3: ("nearest", "bilinear", "bicubic", "lanczos3", "lanczos5"),
    2: (
        "nearest",
        "bilinear",
        "bicubic",
        "area",
        "lanczos3",
        "lanczos5",
        "gaussian",
        "mitchellcubic",
    ),
}


TF_TABLE_SIZE = 1024


def _tf_bicubic(in_size: int, out_size: int) -> np.ndarray:
    """tf.image.resize's bicubic (``ResizeBicubic``, half-pixel centers): Keys' kernel read from
    a 1024-entry table at the rounded fractional offset, out-of-image taps dropped and the
    rest renormalized. The table quantization is why it differs from JAX's (~1e-3)."""
    a = -0.5
    grid = np.arange(TF_TABLE_SIZE + 1, dtype="float64") / TF_TABLE_SIZE
    near = (((a + 2) * grid - (a + 3)) * grid * grid + 1).astype("float32")
    far_x = grid + 1.0
    far = (((a * far_x - 5 * a) * far_x + 8 * a) * far_x - 4 * a).astype("float32")
    scale = np.float32(in_size / out_size)
    matrix = np.zeros((out_size, in_size), dtype="float32")
    for out in range(out_size):
        position = (np.float32(out) + np.float32(0.5)) * scale - np.float32(0.5)
        base = int(np.floor(position))
        offset = int(np.rint((position - np.float32(base)) * TF_TABLE_SIZE))
        taps = (
            far[offset],
            near[offset],
            near[TF_TABLE_SIZE - offset],
            far[TF_TABLE_SIZE - offset],
        )
        kept = [(base - 1 + k, w) for k, w in enumerate(taps) if 0 <= base - 1 + k < in_size]
        total = np.float32(sum(w for _, w in kept))
        for index, w in kept:
            matrix[out, index] += w / total if abs(total) >= 1000 * np.finfo("float32").tiny else w
    return matrix


def weight_matrix(
    in_size: int, out_size: int, method: str, antialias: bool, keras_major: int = 3
) -> np.ndarray:
    """(out_size, in_size) float32: output pixel i = sum_j W[i, j] * input pixel j."""
    if method == "bicubic" and keras_major < 3 and not antialias:
        return _tf_bicubic(in_size, out_size)
    scale = out_size / in_size
    if method == "area":  # tf.image.resize's box filter: overlap lengths, normalized
        left = np.arange(out_size, dtype="float64")[:, None] / scale
        right = left + 1.0 / scale
        pixels = np.arange(in_size, dtype="float64")[None, :]
        overlap = np.maximum(0.0, np.minimum(right, pixels + 1) - np.maximum(left, pixels))
        return (overlap / overlap.sum(axis=1, keepdims=True)).astype("float32")
    kernel_scale = max(1.0 / scale, 1.0) if antialias else 1.0
    centers = (np.arange(out_size, dtype="float64") + 0.5) / scale - 0.5
    distance = np.abs(centers[:, None] - np.arange(in_size, dtype="float64")[None, :])
    weights = KERNELS[method](distance / kernel_scale)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.where(
        np.abs(total) > 1000.0 * np.finfo(np.float32).eps,
        weights / np.where(total != 0, total, 1.0),
        0.0,
    )
    inside = (centers >= -0.5) & (centers <= in_size - 0.5)
    return np.where(inside[:, None], weights, 0.0).astype("float32")


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """floor((i + 0.5) * in / out), clamped: half-pixel nearest neighbour (JAX and TF)."""
    offsets = (np.arange(out_size, dtype="float32") + 0.5) * np.float32(in_size / out_size)
    return np.minimum(np.floor(offsets), in_size - 1).astype("int32")


def resize_axis(ctx, x: relax.Expr, axis: int, size: int, method: str, antialias: bool):
    """Resize one axis of ``x`` to ``size``; an axis already that size is left alone."""
    shape = ctx.shape(x)
    if shape[axis] == size:
        return x
    if method == "nearest":
        indices = relax.const(nearest_indices(shape[axis], size))
        return ctx.emit(R.take(x, indices, axis=axis))
    return apply_matrix(
        ctx, x, axis, weight_matrix(shape[axis], size, method, antialias, ctx.keras_major)
    )


def apply_matrix(ctx, x: relax.Expr, axis: int, matrix: np.ndarray) -> relax.Expr:
    """``y[..., i, ...] = sum_j matrix[i, j] * x[..., j, ...]`` along ``axis`` (one matmul)."""
    rank = len(ctx.shape(x))
    order = [a for a in range(rank) if a != axis] + [axis]  # the axis last
    moved = ctx.emit(R.permute_dims(x, order)) if order != list(range(rank)) else x
    y = ctx.emit(R.matmul(moved, relax.const(np.ascontiguousarray(matrix.T, dtype="float32"))))
    back = [order.index(a) for a in range(rank)]
    return ctx.emit(R.permute_dims(y, back)) if order != list(range(rank)) else y


def crop_box(height: int, width: int, target: tuple[int, int]) -> tuple[int, int, int, int]:
    """Keras' ``crop_to_aspect_ratio``: (top, left, height, width) of the centered crop."""
    crop_height = max(min(height, int(float(width * target[0]) / target[1])), 1)
    crop_width = max(min(width, int(float(height * target[1]) / target[0])), 1)
    return (
        int(float(height - crop_height) / 2),
        int(float(width - crop_width) / 2),
        crop_height,
        crop_width,
    )


def pad_box(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """Keras 3's ``pad_to_aspect_ratio``: rows and columns added on *each* side (one is 0)."""
    pad_height = max(height, int(float(width * target[0]) / target[1]))
    pad_width = max(width, int(float(height * target[1]) / target[0]))
    top = int(float(pad_height - height) / 2)
    return (top, 0) if top > 0 else (0, int(float(pad_width - width) / 2))


def resize_images(
    ctx,
    x: relax.Expr,
    size: tuple[int, int],
    method: str = "bilinear",
    *,
    antialias: bool = False,
    crop_to_aspect_ratio: bool = False,
    pad_to_aspect_ratio: bool = False,
    fill_value: float = 0.0,
) -> relax.Expr:
    """Keras' image resize of channels_last ``x`` (rank 4 NHWC, or rank 3 HWC)."""
    h_axis = len(ctx.shape(x)) - 3
    height, width = ctx.shape(x)[h_axis : h_axis + 2]
    if crop_to_aspect_ratio:
        top, left, crop_h, crop_w = crop_box(height, width, size)
        x = ctx.emit(
            R.strided_slice(x, [h_axis, h_axis + 1], [top, left], [top + crop_h, left + crop_w])
        )
    elif pad_to_aspect_ratio:
        rows, cols = pad_box(height, width, size)
        pads = [0, 0] * len(ctx.shape(x))
        pads[2 * h_axis : 2 * h_axis + 4] = [rows, rows, cols, cols]
        x = ctx.emit(R.nn.pad(x, pads, pad_value=float(fill_value)))
    x = resize_axis(ctx, x, h_axis, size[0], method, antialias)
    return resize_axis(ctx, x, h_axis + 1, size[1], method, antialias)

"""Image resizing as Keras computes it, for static sizes: one resampling per spatial axis.

Keras 3 (JAX backend) resizes with ``jax.image.resize`` and tf.keras 2 with ``tf.image.resize``;
for the methods both offer, half-pixel centers and the renormalization of weights at the borders
make them agree, so one formulation serves both: ``out = W @ in`` along each resized axis, with
``W`` computed here in numpy (a port of the published scale-and-translate definition, not code)
and applied as a matmul. Each output pixel has only a few nonzero taps, so ``W`` is computed as a
:class:`Band` (taps and weights per output pixel); a large axis (an ``(out, in)`` matrix over
``DENSE_LIMIT`` entries) gathers its taps instead of multiplying by the matrix, and sizes that
would need more than ``MAX_TAPS`` taps are refused before anything is allocated. Nearest
neighbour is a gather.
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
# Kernel half-widths in input pixels (before antialias widening): taps farther away weigh 0.
RADII = {
    "bilinear": 1.0, "bicubic": 2.0, "lanczos3": 3.0, "lanczos5": 5.0,
    "gaussian": 1.5, "mitchellcubic": 2.0,
}  # fmt: skip
# A resize whose (out, in) matrix holds at most this many entries is one matmul; a larger one
# (a very wide or tall output) gathers its few taps per output pixel instead.
DENSE_LIMIT = 1 << 22
# Largest number of filter taps (output pixels x taps each) one resized axis may need: the
# constants of a larger one would not fit in memory (a hostile config, not a real model).
MAX_TAPS = 1 << 24


class Band:
    """A resize along one axis as ``taps`` (out, k) input indices and ``weights`` (out, k):
    output pixel i = sum_t weights[i, t] * input pixel taps[i, t] (a weight is 0 where a tap
    falls outside the image)."""

    def __init__(self, taps: np.ndarray, weights: np.ndarray, in_size: int) -> None:
        self.taps, self.weights, self.in_size = taps, weights, in_size

    def dense(self) -> np.ndarray:
        """(out, in) float32 matrix."""
        out = self.taps.shape[0]
        matrix = np.zeros((out, self.in_size), dtype="float32")
        rows = np.broadcast_to(np.arange(out)[:, None], self.taps.shape)
        np.add.at(matrix, (rows, self.taps), self.weights)
        return matrix


def _check_taps(in_size: int, out_size: int, per_output: int) -> None:
    if out_size * per_output > MAX_TAPS:
        raise ValueError(
            f"resizing an axis from {in_size} to {out_size} pixels needs "
            f"{out_size * per_output} filter taps, over the {MAX_TAPS} bridge supports"
        )


def _window(first: np.ndarray, width: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``first[i] + t`` for t < width, clipped into the image, and where they are inside."""
    index = first[:, None] + np.arange(width)[None, :]
    inside = (index >= 0) & (index < in_size)
    return np.clip(index, 0, in_size - 1), inside


def _tf_bicubic(in_size: int, out_size: int) -> Band:
    """tf.image.resize's bicubic (``ResizeBicubic``, half-pixel centers): Keys' kernel read from
    a 1024-entry table at the rounded fractional offset, out-of-image taps dropped and the
    rest renormalized. The table quantization is why it differs from JAX's (~1e-3)."""
    _check_taps(in_size, out_size, 4)
    a = -0.5
    grid = np.arange(TF_TABLE_SIZE + 1, dtype="float64") / TF_TABLE_SIZE
    near = (((a + 2) * grid - (a + 3)) * grid * grid + 1).astype("float32")
    far_x = grid + 1.0
    far = (((a * far_x - 5 * a) * far_x + 8 * a) * far_x - 4 * a).astype("float32")
    scale = np.float32(in_size / out_size)
    position = (np.arange(out_size, dtype="float32") + np.float32(0.5)) * scale - np.float32(0.5)
    base = np.floor(position).astype("int64")
    offset = np.rint((position - base.astype("float32")) * TF_TABLE_SIZE).astype("int64")
    table = np.stack(
        [far[offset], near[offset], near[TF_TABLE_SIZE - offset], far[TF_TABLE_SIZE - offset]],
        axis=1,
    )
    taps, inside = _window(base - 1, 4, in_size)
    kept = np.where(inside, table, np.float32(0.0))
    total = np.zeros(out_size, dtype="float32")
    for t in range(4):  # in tap order, in float32, as TensorFlow sums them
        total = total + kept[:, t]
    scaled = np.abs(total) >= 1000 * np.finfo("float32").tiny
    safe = np.where(scaled, total, np.float32(1.0))
    weights = np.where(scaled[:, None], kept / safe[:, None], kept).astype("float32")
    return Band(taps, weights, in_size)


def _area(in_size: int, out_size: int) -> Band:
    """tf.image.resize's box filter: overlap lengths, normalized."""
    scale = out_size / in_size
    width = int(np.ceil(1.0 / scale)) + 1
    _check_taps(in_size, out_size, width)
    left = np.arange(out_size, dtype="float64") / scale
    right = left + 1.0 / scale
    taps, inside = _window(np.floor(left).astype("int64"), width, in_size)
    overlap = np.minimum(right[:, None], taps + 1) - np.maximum(left[:, None], taps)
    overlap = np.maximum(0.0, overlap)
    overlap = np.where(inside, overlap, 0.0)
    return Band(taps, (overlap / overlap.sum(axis=1, keepdims=True)).astype("float32"), in_size)


def band(in_size: int, out_size: int, method: str, antialias: bool, keras_major: int = 3) -> Band:
    """The taps and weights of resizing ``in_size`` pixels to ``out_size`` with ``method``."""
    if method == "bicubic" and keras_major < 3 and not antialias:
        return _tf_bicubic(in_size, out_size)
    if method == "area":
        return _area(in_size, out_size)
    scale = out_size / in_size
    kernel_scale = max(1.0 / scale, 1.0) if antialias else 1.0
    reach = RADII[method] * kernel_scale
    width = min(int(np.ceil(2 * reach)) + 2, in_size)
    _check_taps(in_size, out_size, width)
    centers = (np.arange(out_size, dtype="float64") + 0.5) / scale - 0.5
    first = np.clip(np.floor(centers - reach).astype("int64"), 0, max(in_size - width, 0))
    taps, _ = _window(first, width, in_size)
    weights = KERNELS[method](np.abs(centers[:, None] - taps) / kernel_scale)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.where(
        np.abs(total) > 1000.0 * np.finfo(np.float32).eps,
        weights / np.where(total != 0, total, 1.0),
        0.0,
    )
    inside = (centers >= -0.5) & (centers <= in_size - 0.5)
    return Band(taps, np.where(inside[:, None], weights, 0.0).astype("float32"), in_size)


def weight_matrix(
    in_size: int, out_size: int, method: str, antialias: bool, keras_major: int = 3
) -> np.ndarray:
    """(out_size, in_size) float32: output pixel i = sum_j W[i, j] * input pixel j."""
    return band(in_size, out_size, method, antialias, keras_major).dense()


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """floor((i + 0.5) * in / out), clamped: half-pixel nearest neighbour (JAX and TF)."""
    _check_taps(in_size, out_size, 1)
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
    taps = band(shape[axis], size, method, antialias, ctx.keras_major)
    if size * shape[axis] <= DENSE_LIMIT:
        return apply_matrix(ctx, x, axis, taps.dense())
    return _apply_band(ctx, x, axis, taps)


def _axis_last(ctx, x: relax.Expr, axis: int, fn) -> relax.Expr:
    """``fn`` applied with ``axis`` moved last, then moved back."""
    rank = len(ctx.shape(x))
    order = [a for a in range(rank) if a != axis] + [axis]
    if order == list(range(rank)):
        return fn(x)
    y = fn(ctx.emit(R.permute_dims(x, order)))
    return ctx.emit(R.permute_dims(y, [order.index(a) for a in range(rank)]))


def apply_matrix(ctx, x: relax.Expr, axis: int, matrix: np.ndarray) -> relax.Expr:
    """``y[..., i, ...] = sum_j matrix[i, j] * x[..., j, ...]`` along ``axis`` (one matmul)."""
    check_matrix(*matrix.shape)
    weights = relax.const(np.ascontiguousarray(matrix.T, dtype="float32"))
    return _axis_last(ctx, x, axis, lambda v: ctx.emit(R.matmul(v, weights)))


def check_matrix(out_size: int, in_size: int) -> None:
    """Refuse an (out, in) resampling matrix too large to hold (a hostile config)."""
    if out_size * in_size > MAX_TAPS:
        raise ValueError(
            f"mapping an axis of {in_size} to {out_size} needs a {out_size}x{in_size} matrix, "
            f"over the {MAX_TAPS} entries bridge supports"
        )


def _apply_band(ctx, x: relax.Expr, axis: int, taps: Band) -> relax.Expr:
    """The banded resize: gather each output's taps, weigh them, sum."""
    indices = relax.const(taps.taps.astype("int32"))
    weights = relax.const(np.ascontiguousarray(taps.weights, dtype="float32"))

    def body(v: relax.Expr) -> relax.Expr:
        gathered = ctx.emit(R.take(v, indices, axis=len(ctx.shape(v)) - 1))
        return ctx.emit(R.sum(ctx.emit(R.multiply(gathered, weights)), axis=[-1]))

    return _axis_last(ctx, x, axis, body)


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

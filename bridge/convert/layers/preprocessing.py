"""Preprocessing layers with inference semantics: Rescaling, Normalization, Resizing, CenterCrop,
CategoryEncoding, Discretization, IntegerLookup (vocabulary in the config; ``invert`` too)."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.context import dtype_of
from bridge.convert.layers.normalization import broadcast_param
from bridge.convert.registry import register
from bridge.convert.resize import METHODS, resize_images
from bridge.convert.spatial import channels_last_op

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(), the floor of Normalization's std


@register("Rescaling", masks="keep")
def rescaling(ctx, inputs):
    scale = np.asarray(ctx.get("scale", 1.0), dtype="float32")
    offset = np.asarray(ctx.get("offset", 0.0), dtype="float32")
    y = ctx.emit(R.multiply(inputs[0], relax.const(scale)))
    return ctx.emit(R.add(y, relax.const(offset)))


def _normalization_weights(config: dict[str, Any]) -> list[str]:
    return [] if config.get("mean") is not None else ["mean", "variance", "count"]


def _keep_axes(axis: Any, rank: int) -> list[int]:
    if axis is None:
        return []
    axes = [axis] if isinstance(axis, int) else list(axis)
    return sorted(int(a) % rank for a in axes)


def _config_stat(value: Any, target: list[int]) -> np.ndarray:
    """A mean/variance given in the config (scalar or per-channel), shaped to broadcast."""
    array = np.asarray(value, dtype="float32")
    if array.size == int(np.prod(target)):
        return array.reshape(target)
    return np.broadcast_to(array, target).copy()


@register("Normalization", weights=_normalization_weights, masks="keep")
def normalization(ctx, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    axes = _keep_axes(ctx.config.get("axis", -1), len(shape))
    params = tuple(shape[a] for a in axes)
    if ctx.config.get("mean") is not None:
        target = [shape[i] if i in axes else 1 for i in range(len(shape))]
        mean = relax.const(_config_stat(ctx.config["mean"], target))
        variance = relax.const(_config_stat(ctx.config["variance"], target))
    else:
        mean = broadcast_param(ctx, ctx.weight("mean", params), axes, shape)
        variance = broadcast_param(ctx, ctx.weight("variance", params), axes, shape)
    std = ctx.emit(R.maximum(ctx.emit(R.sqrt(variance)), relax.const(KERAS_EPSILON, "float32")))
    if ctx.get("invert", False):
        return ctx.emit(R.add(ctx.emit(R.multiply(x, std)), mean))
    return ctx.emit(R.divide(ctx.emit(R.subtract(x, mean)), std))


# --- image resizing and cropping ----------------------------------------------------------------


def _check_resizing(config: dict[str, Any]) -> list[str]:
    method = config.get("interpolation", "bilinear")
    if method not in set(METHODS[2]) | set(METHODS[3]):
        return [f"interpolation={method!r} is not supported"]
    if config.get("fill_mode", "constant") != "constant":
        return [
            f"fill_mode={config.get('fill_mode')!r} is not supported (Keras allows only 'constant')"
        ]
    return []


def _size(ctx) -> tuple[int, int]:
    return int(ctx.get("height")), int(ctx.get("width"))


@register("Resizing", check=_check_resizing)
def resizing(ctx, inputs):
    """Every interpolation Keras offers (Keras 3: nearest, bilinear, bicubic, lanczos3/5 with
    ``antialias``; tf.keras 2 also area, gaussian, mitchellcubic); ``crop_to_aspect_ratio``,
    ``pad_to_aspect_ratio`` (with ``fill_value``)."""

    def body(x):
        return resize_images(
            ctx,
            x,
            _size(ctx),
            ctx.get("interpolation", "bilinear"),
            antialias=bool(ctx.get("antialias", False)),
            crop_to_aspect_ratio=bool(ctx.get("crop_to_aspect_ratio", False)),
            pad_to_aspect_ratio=bool(ctx.get("pad_to_aspect_ratio", False)),
            fill_value=float(ctx.get("fill_value", 0.0)),
        )

    return channels_last_op(ctx, inputs[0], body)


def center_crop_or_resize(ctx, x: relax.Expr, size: tuple[int, int]) -> relax.Expr:
    """Keras' CenterCrop: the centered window if the image is large enough, else the largest
    centered window of the target aspect ratio resized bilinearly (``smart_resize``)."""
    h_axis = len(ctx.shape(x)) - 3
    height, width = ctx.shape(x)[h_axis : h_axis + 2]
    if height >= size[0] and width >= size[1]:
        top, left = (height - size[0]) // 2, (width - size[1]) // 2
        axes = [h_axis, h_axis + 1]
        return ctx.emit(R.strided_slice(x, axes, [top, left], [top + size[0], left + size[1]]))
    return resize_images(ctx, x, size, "bilinear", crop_to_aspect_ratio=True)


@register("CenterCrop")
def center_crop(ctx, inputs):
    return channels_last_op(ctx, inputs[0], lambda x: center_crop_or_resize(ctx, x, _size(ctx)))


# --- categorical encodings ----------------------------------------------------------------------

ENCODINGS = ("int", "one_hot", "multi_hot", "count")


def encode(ctx, indices: relax.Expr, mode: str, depth: int) -> relax.Expr:
    """Integer ``indices`` as Keras' ``output_mode``: ``int`` (as is), ``one_hot`` (a new last
    axis; a trailing axis of 1 is replaced), ``multi_hot``/``count`` (over the last axis)."""
    if mode == "int":
        return indices
    shape = ctx.shape(indices)
    if mode == "one_hot" and len(shape) > 1 and shape[-1] == 1:
        indices = ctx.emit(R.squeeze(indices, [-1]))
    if mode != "one_hot" and len(shape) == 1:
        indices = ctx.emit(R.expand_dims(indices, -1))
    tokens = relax.const(np.arange(depth), dtype_of(indices))
    hot = ctx.emit(
        R.astype(ctx.emit(R.equal(ctx.emit(R.expand_dims(indices, -1)), tokens)), "float32")
    )
    if mode == "one_hot":
        return hot
    reduce = R.max if mode == "multi_hot" else R.sum
    return ctx.emit(reduce(hot, axis=[-2]))


def _check_encoding(config: dict[str, Any]) -> list[str]:
    reasons = []
    mode = config.get("output_mode", "int")
    if mode not in ENCODINGS:
        reasons.append(f"output_mode={mode!r} is not supported (only {', '.join(ENCODINGS)})")
    if config.get("sparse"):
        reasons.append("sparse=True outputs are not supported")
    return reasons


def _as_int(ctx, x: relax.Expr) -> relax.Expr:
    return x if dtype_of(x).startswith("int") else ctx.emit(R.astype(x, "int64"))


@register("CategoryEncoding", check=_check_encoding)
def category_encoding(ctx, inputs):
    if ctx.call_tensor("count_weights") is not None:
        ctx.fail("count_weights are not supported")
    x = _as_int(ctx, inputs[0])
    return encode(ctx, x, ctx.get("output_mode", "multi_hot"), int(ctx.get("num_tokens")))


def _check_discretization(config: dict[str, Any]) -> list[str]:
    reasons = _check_encoding(config)
    if not config.get("bin_boundaries"):
        reasons.append("no bin_boundaries in the config (an adapted layer that was never built?)")
    return reasons


@register("Discretization", check=_check_discretization)
def discretization(ctx, inputs):
    """The bucket of each value: how many ``bin_boundaries`` are <= it (``numpy.digitize``)."""
    x = inputs[0]
    bounds = np.asarray(ctx.get("bin_boundaries"), dtype="float32")
    above = ctx.emit(R.greater_equal(ctx.emit(R.expand_dims(x, -1)), relax.const(bounds)))
    buckets = ctx.emit(R.sum(ctx.emit(R.astype(above, "int64")), axis=[-1]))
    return encode(ctx, buckets, ctx.get("output_mode", "int"), len(bounds) + 1)


def _check_integer_lookup(config: dict[str, Any]) -> list[str]:
    reasons = _check_encoding(config)
    vocabulary = config.get("vocabulary")
    if not isinstance(vocabulary, list):
        reasons.append(
            "the vocabulary is not in the config (an adapted layer keeps it in the file's assets); "
            "pass vocabulary=[...] when building the layer"
        )
    if config.get("invert"):
        if config.get("output_mode", "int") != "int":
            reasons.append("invert=True needs output_mode='int'")
        if config.get("oov_token") is None:
            reasons.append("invert=True without an oov_token")
    elif int(config.get("num_oov_indices", 1)) != 1:
        reasons.append("only num_oov_indices=1 is supported")
    return reasons


def _vocabulary(config: dict[str, Any]) -> list[int]:
    """The config's vocabulary less the special tokens it may start with, as Keras strips them:
    the mask token (output_mode int only), then the OOV token once per OOV index."""
    vocabulary = [int(v) for v in config["vocabulary"]]
    mask = config.get("mask_token")
    oov = config.get("oov_token", -1)
    special = [mask] * (mask is not None and config.get("output_mode", "int") == "int")
    special += [oov] * int(config.get("num_oov_indices", 1))
    return vocabulary[len(special) :] if vocabulary[: len(special)] == special else vocabulary


@register("IntegerLookup", check=_check_integer_lookup)
def integer_lookup(ctx, inputs):
    """Index of each value in the config's ``vocabulary`` (after the mask and OOV indices);
    values outside it get the OOV index. ``invert=True`` maps indices back to values."""
    x = _as_int(ctx, inputs[0])
    if ctx.get("invert", False):
        return _inverse_lookup(ctx, x)
    vocabulary = _vocabulary(ctx.config)
    mask = ctx.config.get("mask_token")
    oov = 1 if mask is not None else 0
    first = oov + 1
    tokens = relax.const(np.asarray(vocabulary, dtype=dtype_of(x)), dtype_of(x))
    offsets = relax.const(np.arange(first, first + len(vocabulary)) - oov, "int64")
    hits = ctx.emit(R.astype(ctx.emit(R.equal(ctx.emit(R.expand_dims(x, -1)), tokens)), "int64"))
    index = ctx.emit(
        R.add(
            ctx.emit(R.sum(ctx.emit(R.multiply(hits, offsets)), axis=[-1])),
            relax.const(oov, "int64"),
        )
    )
    if mask is not None:
        is_mask = ctx.emit(R.equal(x, relax.const(int(mask), dtype_of(x))))
        index = ctx.emit(R.where(is_mask, relax.const(0, "int64"), index))
    depth = first + len(vocabulary)
    mode = ctx.get("output_mode", "int")
    if mode != "int" and mask is not None:  # encodings have no mask column: shift it away
        index = ctx.emit(R.subtract(index, relax.const(1, "int64")))
        depth -= 1
    return encode(ctx, index, mode, depth)


def _inverse_lookup(ctx, x: relax.Expr) -> relax.Expr:
    """Index -> value over the table Keras builds: index 0 the mask token (if any), then one
    index per OOV slot, then the vocabulary; OOV slots and indices outside the table give the
    ``oov_token``."""
    mask, oov = ctx.config.get("mask_token"), int(ctx.get("oov_token"))
    table = [int(mask)] if mask is not None else []
    table += [oov] * int(ctx.get("num_oov_indices", 1)) + _vocabulary(ctx.config)
    dtype = str(ctx.get("vocabulary_dtype", "int64"))
    inside = ctx.emit(
        R.logical_and(
            ctx.emit(R.greater_equal(x, relax.const(0, dtype_of(x)))),
            ctx.emit(R.less(x, relax.const(len(table), dtype_of(x)))),
        )
    )
    safe = ctx.emit(R.where(inside, x, ctx.emit(R.zeros_like(x))))
    values = ctx.emit(R.take(relax.const(np.asarray(table, dtype=dtype), dtype), safe, axis=0))
    return ctx.emit(R.where(inside, values, relax.const(oov, dtype)))

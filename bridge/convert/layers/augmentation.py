"""Image augmentation layers. The random ones are identities at inference, each checked against
Keras 3.15 (``model.predict``) and tf.keras 2.15 (``training=False``); RandomCrop differs by
version: Keras 3 passes the image through, tf.keras 2 returns the largest centered window of the
target aspect ratio resized bilinearly (``smart_resize``). AutoContrast is deterministic and
always applied."""

from __future__ import annotations

from tvm import relax
from tvm.relax import op as R

from bridge.convert.registry import register
from bridge.convert.resize import resize_images
from bridge.convert.spatial import channels_last_op

# Keras 3 classes, then tf.keras 2's RandomHeight and RandomWidth (removed in Keras 3).
IDENTITY_AT_INFERENCE = (
    "AugMix",
    "CutMix",
    "MixUp",
    "RandAugment",
    "RandomBrightness",
    "RandomColorDegeneration",
    "RandomColorJitter",
    "RandomContrast",
    "RandomElasticTransform",
    "RandomErasing",
    "RandomFlip",
    "RandomGaussianBlur",
    "RandomGrayscale",
    "RandomHue",
    "RandomInvert",
    "RandomPerspective",
    "RandomPosterization",
    "RandomRotation",
    "RandomSaturation",
    "RandomSharpness",
    "RandomShear",
    "RandomTranslation",
    "RandomZoom",
    "Solarization",
    "MaxNumBoundingBoxes",  # limits bounding boxes; images pass through
    "RandomHeight",
    "RandomWidth",
)


@register(*IDENTITY_AT_INFERENCE)
def identity_at_inference(ctx, inputs):
    return inputs[0]


@register("RandomCrop")
def random_crop(ctx, inputs):
    x = inputs[0]
    if ctx.keras_major >= 3:
        return x
    size = (int(ctx.get("height")), int(ctx.get("width")))
    return channels_last_op(
        ctx, x, lambda image: resize_images(ctx, image, size, crop_to_aspect_ratio=True)
    )


def _c(value: float) -> relax.Constant:
    return relax.const(float(value), "float32")


def _rescale(ctx, x: relax.Expr, source: tuple[float, float], target: tuple[float, float]):
    """Keras' ``_transform_value_range``: map ``source`` linearly onto ``target``."""
    if tuple(source) == tuple(target):
        return x
    unit = ctx.emit(R.divide(ctx.emit(R.subtract(x, _c(source[0]))), _c(source[1] - source[0])))
    return ctx.emit(R.add(ctx.emit(R.multiply(unit, _c(target[1] - target[0]))), _c(target[0])))


@register("AutoContrast")
def auto_contrast(ctx, inputs):
    """Stretch each image's channels to the full ``value_range`` (per-channel min and max)."""

    def body(x):
        value_range = tuple(float(v) for v in ctx.get("value_range", (0, 255)))
        images = _rescale(ctx, x, value_range, (0.0, 255.0))
        axes = [len(ctx.shape(x)) - 3, len(ctx.shape(x)) - 2]
        low = ctx.emit(R.min(images, axis=axes, keepdims=True))
        high = ctx.emit(R.max(images, axis=axes, keepdims=True))
        scale = ctx.emit(R.divide(_c(255.0), ctx.emit(R.subtract(high, low))))
        offset = ctx.emit(R.negative(ctx.emit(R.multiply(low, scale))))
        stretched = ctx.emit(R.add(ctx.emit(R.multiply(images, scale)), offset))
        result = _rescale(ctx, ctx.emit(R.clip(stretched, 0.0, 255.0)), (0.0, 255.0), value_range)
        return ctx.emit(R.where(ctx.emit(R.isnan(result)), x, result))

    return channels_last_op(ctx, inputs[0], body)

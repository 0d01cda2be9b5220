"""The converter registry: Keras class name -> converter, filled by the layer family modules.

A leaf: it imports no other bridge module. Importing :mod:`bridge.convert.layers` loads every
family (filling :data:`REGISTRY`) and gives the lookups (``converter_for``, ``all_converters``);
:mod:`bridge.convert.support` builds the support table from them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.keras.graph import Layer

# Weight names Keras creates as non-trainable (they come last in the legacy nested-model order).
NON_TRAINABLE = frozenset({"moving_mean", "moving_variance", "mean", "variance", "count"})

WeightNames = Callable[[dict[str, Any]], list[str]]
ConfigCheck = Callable[[dict[str, Any]], list[str]]
SublayerGroups = Callable[[dict[str, Any]], list[str]]


@dataclass(frozen=True)
class Converter:
    """How one Keras layer class becomes Relax.

    ``fn(ctx, inputs)`` emits the layer and returns its output(s); ``weights(config)`` names the
    weights Keras stores for that config, in order; ``check(config)`` returns reasons a config is
    unsupported; ``activation`` says the config's ``activation`` is fused and applied centrally.
    ``masks`` says how the layer treats Keras masks (the per-step booleans that
    ``Embedding(mask_zero=True)`` and ``Masking`` attach to their output): ``"keep"`` passes the
    first input's mask on to every output without reading it (Keras' default ``compute_mask``);
    ``"custom"``: the converter reads ``ctx.mask()`` and sets ``ctx.set_masks()``; ``None``: the
    layer does not support masking, so Keras drops the mask (Keras 2 refuses to build the model).
    ``sublayers(config)`` names, in weight order, the sub-layer groups where Keras 3's layout
    keeps the layer's variables after its own ``vars`` (an RNN's ``cell``, a wrapper's
    ``layer``); the weights reader is handed them (it never imports converters).
    """

    class_name: str
    fn: Callable[..., Any]
    family: str
    weights: WeightNames
    check: ConfigCheck | None
    activation: bool
    masks: str | None = None
    sublayers: SublayerGroups | None = None

    def weight_names(self, config: dict[str, Any]) -> list[str]:
        return self.weights(config)

    def sublayer_groups(self, config: dict[str, Any]) -> list[str]:
        return list(self.sublayers(config)) if self.sublayers else []

    def problems(self, config: dict[str, Any]) -> list[str]:
        return self.check(config) if self.check else []


REGISTRY: dict[str, Converter] = {}
MASK_MODES = (None, "keep", "custom")
# Keras classes that only occur inside another layer's config and are converted as part of it
# (RNN cells inside an RNN): class name -> the layer that converts them.
PARTS: dict[str, str] = {}

# Keras classes bridge deliberately does not convert, and why (``bridge layers`` prints these).
UNSUPPORTED: dict[str, str] = {
    "Lambda": "holds Python code (bytecode), which bridge never executes from a model file; "
    "rewrite it with built-in Keras layers, or supply a converter (`custom_layers=`)",
    "StringLookup": "string tensors: TVM has no string type or string ops",
    "TextVectorization": "string tensors (splitting, n-grams, vocabulary lookup of strings)",
    "TFSMLayer": "wraps a TensorFlow SavedModel, which only TensorFlow can run",
    "TorchModuleWrapper": "wraps a PyTorch module, stored as pickled Python",
    "JaxLayer": "wraps Python JAX functions, not stored in the file",
    "FlaxLayer": "wraps a Python Flax module, not stored in the file",
    "Hashing": "hashes each value's string form (FarmHash64, or SipHash with a salt): needs "
    "string formatting and hashing kernels that TVM does not have",
    "HashedCrossing": "hashes string-formatted feature crosses (FarmHash64), as Hashing",
    "Equalization": "histogram equalization (per-image histograms, cumulative lookup tables) "
    "is not implemented",
    "ContrastLimitedAdaptiveHistogramEqualization": "per-tile clipped histograms and "
    "interpolated lookup tables are not implemented",
    "MelSpectrogram": "audio front-end (STFT, mel filter bank) not implemented yet",
    "STFTSpectrogram": "audio front-end (framed STFT) not implemented yet",
    "TensorFlowOpLayer": "TF <= 2.3 files store a raw TensorFlow NodeDef; re-save the model "
    "with TF >= 2.4, which records TFOpLambda layers (supported)",
    "Layer": "the base class: a saved model holding it directly holds a custom layer",
    "Wrapper": "an abstract base class (its subclasses TimeDistributed, Bidirectional, "
    "SpectralNormalization are supported)",
}
# Other names keras.layers exports for the same classes; files always hold the class's own name.
ALIASES: dict[str, str] = {
    **{f"AvgPool{n}D": f"AveragePooling{n}D" for n in (1, 2, 3)},
    **{f"MaxPool{n}D": f"MaxPooling{n}D" for n in (1, 2, 3)},
    **{f"GlobalAvgPool{n}D": f"GlobalAveragePooling{n}D" for n in (1, 2, 3)},
    **{f"GlobalMaxPool{n}D": f"GlobalMaxPooling{n}D" for n in (1, 2, 3)},
    **{f"Convolution{n}D": f"Conv{n}D" for n in (1, 2, 3)},
    **{f"Convolution{n}DTranspose": f"Conv{n}DTranspose" for n in (1, 2, 3)},
    **{f"SeparableConvolution{n}D": f"SeparableConv{n}D" for n in (1, 2)},
}


def no_weights(config: dict[str, Any]) -> list[str]:
    return []


def register(
    *class_names: str,
    weights: WeightNames = no_weights,
    check: ConfigCheck | None = None,
    activation: bool = False,
    masks: str | None = None,
    sublayers: tuple[str, ...] | SublayerGroups = (),
):
    """Register ``fn`` as the converter of the given Keras class names (duplicates refused).
    ``sublayers``: the groups of sub-layer variables (a tuple, or a function of the config)."""

    if masks not in MASK_MODES:
        raise ValueError(f"masks={masks!r}: expected one of {MASK_MODES}")
    groups = sublayers if callable(sublayers) else (lambda config, g=list(sublayers): list(g))

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        family = fn.__module__.rsplit(".", 1)[-1]
        for name in class_names:
            if name in REGISTRY:
                raise RuntimeError(f"converter for {name!r} registered twice")
            REGISTRY[name] = Converter(
                name, fn, family, weights, check, activation, masks, groups if sublayers else None
            )
        return fn

    return decorate


def register_parts(*class_names: str, within: str) -> None:
    """Record classes converted as part of the layer ``within`` (they have no converter)."""
    for name in class_names:
        PARTS[name] = within


def registry_key(class_name: str, module: str | None = None) -> str:
    """Layers register by class name; Keras 3 operations recorded in functional graphs (the
    ``keras.src.ops.numpy.Add`` of ``x + 3.0``) by ``ops.<module>.<Class>``, since their class
    names clash with layers'."""
    if module and module.startswith("keras.src.ops."):
        return f"{module.removeprefix('keras.src.')}.{class_name}"
    return class_name


def registered(class_name: str, module: str | None = None) -> Converter | None:
    """The converter registered for a class, if its family module is loaded (converters that
    look up others at translation time, such as wrappers, run after every family has loaded)."""
    return REGISTRY.get(registry_key(class_name, module))


# --- converters supplied by the user (``custom_layers=``) -------------------------------------

# Layer classes whose behaviour is Python code in the file; a user converter is found by layer name.
CODE_CLASSES = frozenset({"Lambda"})
CustomLayers = Mapping[str, Converter]


def converter(
    fn: Callable[..., Any] | None = None,
    *,
    weights: list[str] | tuple[str, ...] | WeightNames = (),
    check: ConfigCheck | None = None,
    activation: bool = False,
):
    """Make a user converter with the interface of the built-in ones (``bridge.converter``).

    ``fn(ctx, inputs)`` emits Relax through ``ctx`` (a :class:`LayerContext`); ``weights`` names
    the layer's stored weights in order (a list, or a function of the config); ``check(config)``
    returns reasons a config is unsupported; ``activation=True`` applies the config's fused
    ``activation``. Works as a decorator too: ``@bridge.converter(weights=["scale"])``.
    """

    def make(function: Callable[..., Any]) -> Converter:
        names = weights if callable(weights) else (lambda config, n=list(weights): list(n))
        name = getattr(function, "__name__", "custom")
        return Converter(name, function, "custom", names, check, activation)

    return make if fn is None else make(fn)


def as_custom_layers(custom: Mapping[str, Any] | None) -> dict[str, Converter]:
    """Validate ``custom_layers=``: keys are strings, values converters or plain functions."""
    table: dict[str, Converter] = {}
    for key, value in (custom or {}).items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"custom_layers keys must be non-empty strings, got {key!r}")
        if isinstance(value, Converter):
            table[key] = value
        elif callable(value):
            table[key] = converter(value)
        else:
            raise TypeError(
                f"custom_layers[{key!r}] must be a function fn(ctx, inputs) or made by "
                f"bridge.converter(...), got {type(value).__name__}"
            )
    return table


def custom_keys(layer: Layer) -> list[str]:
    """The ``custom_layers`` keys that name ``layer``, most specific first: a Lambda's layer name,
    the registered name (Keras 3 ``"package>Name"``), then the class name (Keras 2 files store
    a registered class as ``"package>Name"`` there)."""
    keys = [layer.name] if layer.class_name in CODE_CLASSES else []
    if layer.registered_name:
        keys.append(layer.registered_name)
    return [*keys, layer.class_name]

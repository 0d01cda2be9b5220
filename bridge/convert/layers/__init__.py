"""One module per Keras layer family; importing this package registers every converter.

Look converters up here (:func:`converter_for`, :func:`lookup`, :func:`all_converters`): importing
this package guarantees every family has registered, which the leaf registry cannot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.convert.layers import (  # noqa: F401
    activations,
    applications,
    attention,
    augmentation,
    conv,
    core,
    merging,
    normalization,
    ops,
    pooling,
    preprocessing,
    recurrent,
    regularization,
    reshaping,
    tfops,
    wrappers,
)
from bridge.convert.registry import REGISTRY, Converter, CustomLayers, custom_keys, registered

if TYPE_CHECKING:
    from bridge.keras.graph import Layer


def lookup(class_name: str, module: str | None = None) -> Converter | None:
    """The built-in converter of a Keras class (``module`` tells Keras 3 operations apart)."""
    return registered(class_name, module)


def converter_for(layer: Layer, custom: CustomLayers | None = None) -> Converter | None:
    """The converter of a (non-model) layer: a user's by :func:`custom_keys`, else built in."""
    for key in custom_keys(layer) if custom else ():
        if key in custom:
            return custom[key]
    return lookup(layer.class_name, layer.module)


def all_converters() -> dict[str, Converter]:
    """Every built-in converter by registry key."""
    return dict(REGISTRY)

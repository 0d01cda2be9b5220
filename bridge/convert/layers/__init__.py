"""One module per Keras layer family; importing them registers their converters."""

from bridge.convert.layers import (  # noqa: F401
    activations,
    conv,
    core,
    merging,
    normalization,
    pooling,
    preprocessing,
    regularization,
    reshaping,
)

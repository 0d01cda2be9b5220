"""One module per Keras layer family; importing them registers their converters."""

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

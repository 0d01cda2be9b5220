"""Reading Keras files (configs and weights) with json, zipfile, h5py and numpy; no TVM."""

from bridge.keras.files import KerasSource, open_model
from bridge.keras.graph import Call, Layer, ModelGraph, TensorRef, parse_model

__all__ = ["Call", "KerasSource", "Layer", "ModelGraph", "TensorRef", "open_model", "parse_model"]

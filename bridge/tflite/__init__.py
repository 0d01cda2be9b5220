"""TFLite flatbuffers in: reading and checking (``reader``), weight rewrites (``weights``),
operator support and custom operators (``ops``), translation through TVM's Relax TFLite
frontend (``translate``). Needs the ``tflite`` schema package, never TensorFlow or LiteRT."""

from bridge.tflite.reader import TFLiteFile, is_tflite, read_tflite
from bridge.tflite.translate import translate

__all__ = ["TFLiteFile", "is_tflite", "read_tflite", "translate"]

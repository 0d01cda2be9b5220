"""TFLite flatbuffers in: reading and checking (``reader``), weight rewrites (``weights``),
operator support and custom operators (``ops``), translation through TVM's Relax TFLite
frontend (``translate``). Needs the ``tflite`` schema package, never TensorFlow or LiteRT.

Importing the package loads no module: the reader needs no TVM, so import the submodule you use.
"""

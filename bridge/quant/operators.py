"""The quantized TFLite operators bridge computes in integers (:mod:`bridge.quant.tflite`).

A leaf module (no TVM): the converters' table, the tests and the fixture generators that record
LiteRT's tensors around these operators all read this one list.
"""

from __future__ import annotations

# Operators with an integer converter (each may still decline a case it does not cover, which
# then goes to TVM's converter).
INTEGER_OPS = frozenset(
    {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "MEAN",
        "AVERAGE_POOL_2D",
        "MAX_POOL_2D",
        "ADD",
        "SUB",
        "MUL",
        "LOGISTIC",
        "TANH",
        "HARD_SWISH",
        "GELU",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "LEAKY_RELU",
        "PRELU",
        "SOFTMAX",
        "BATCH_MATMUL",
        "RESIZE_BILINEAR",
        "QUANTIZE",
        "CONCATENATION",
        "REDUCE_PROD",
        "SQUARED_DIFFERENCE",
    }
)
# Of those, the ones TVM's converter refuses when quantized: preflight accepts them because
# bridge's converter computes them (and names the operator if a case is beyond it).
INTEGER_ONLY = frozenset({"GELU", "PRELU", "BATCH_MATMUL"})

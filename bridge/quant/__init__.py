"""Integer inference for quantized models: int8/uint8 x int8 -> int32 products with the input
zero point folded into the bias (:mod:`bridge.quant.kernels`), TFLite's fixed-point
requantization as a fused epilogue and its tables (:mod:`bridge.quant.fixed_point`),
elementwise integer operators (:mod:`bridge.quant.elementwise`), all emitted as Relax
operators by the TFLite converter's integer paths (:mod:`bridge.quant.tflite`).

Keras models are quantized by ``bridge.build(..., quantize="int8", calibration=...)``
(:mod:`bridge.quant.build`): the samples are checked and the activation ranges observed
(:mod:`bridge.quant.calibrate`) with a float walk of the graph, then an integer walk
(:mod:`bridge.quant.keras`, fusions from :mod:`bridge.quant.plan`) emits each layer through
:mod:`bridge.quant.keras_layers` on the same kernels, or in float where none applies."""

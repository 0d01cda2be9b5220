"""Integer inference for quantized models: int8/uint8 x int8 -> int32 kernels with TFLite's
fixed-point requantization (:mod:`bridge.quant.fixed_point`), emitted as Relax operators
(:mod:`bridge.quant.kernels`) by the TFLite converter's integer paths
(:mod:`bridge.quant.tflite`)."""

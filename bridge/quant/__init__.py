"""Integer inference for quantized models: int8/uint8 x int8 -> int32 products with the input
zero point folded into the bias (:mod:`bridge.quant.kernels`), TFLite's fixed-point
requantization as a fused epilogue and its tables (:mod:`bridge.quant.fixed_point`),
elementwise integer operators (:mod:`bridge.quant.elementwise`), all emitted as Relax
operators by the TFLite converter's integer paths (:mod:`bridge.quant.tflite`)."""

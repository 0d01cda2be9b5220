"""bridge's own schedules: what makes the default (untuned) build fast."""

from bridge.schedules import fastmath, high_multiply
from bridge.schedules.high_multiply import tir_pipeline
from bridge.schedules.pipeline import compile_options, relax_pipeline

fastmath.register()  # exp on CPUs as vector arithmetic, not one libm call per lane
high_multiply.register()  # the TIR pipeline with the requantization's even/odd products

__all__ = ["compile_options", "relax_pipeline", "tir_pipeline"]

"""bridge's own schedules: what makes the default (untuned) build fast."""

from bridge.schedules import fastmath
from bridge.schedules.pipeline import relax_pipeline

fastmath.register()  # exp on CPUs as vector arithmetic, not one libm call per lane

__all__ = ["relax_pipeline"]

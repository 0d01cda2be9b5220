"""bridge's own schedules: what makes the default (untuned) build fast."""

from bridge.schedules.pipeline import relax_pipeline

__all__ = ["relax_pipeline"]

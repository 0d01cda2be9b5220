"""Tuning: MetaSchedule search for faster kernels, numerically checked, stored per target.

``bridge.build(..., tune="20m")`` and ``bridge tune`` use :func:`tune`; every build applies the
kernels found for its target (``bridge.tuning.database``).
"""

from bridge.tuning.database import database_dir, existing_database
from bridge.tuning.session import Budget, Remote, TuningReport, tune

__all__ = ["Budget", "Remote", "TuningReport", "database_dir", "existing_database", "tune"]

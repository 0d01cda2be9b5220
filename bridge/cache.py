"""bridge's cache directory (runtime libraries, runners, the CUDA stub, tuning databases)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bridge``, by default ``~/.cache/bridge``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bridge"

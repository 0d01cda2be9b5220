"""How many CPU cores bridge uses: one answer for the runtime's thread pool and for tuning."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under ``taskset`` or a container
    CPU set), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_pool_size() -> int:
    """Threads in TVM's CPU pool: ``TVM_NUM_THREADS`` (which ``import bridge`` defaults to
    :func:`usable_cores`)."""
    return int(os.environ.get("TVM_NUM_THREADS", "0")) or usable_cores()

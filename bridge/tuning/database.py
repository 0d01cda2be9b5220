"""Where tuned kernels live: one MetaSchedule JSON database per target, under the cache.

``~/.cache/bridge/tuning/<target-key>/`` holds ``database_workload.json`` and
``database_tuning_record.json`` (MetaSchedule's own format, appended to as records are found)
and ``tuned.json``, bridge's ledger of workloads already tuned (also those where no candidate
beat the default schedule), so that tuning a model twice does not tune again. Only kernels that
passed the numeric check are ever stored. ``BRIDGE_TUNING_DB`` overrides the folder (``off``
disables tuned kernels in builds).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import tvm
from tvm.s_tir import meta_schedule as ms

from bridge.cache import cache_dir

LEDGER = "tuned.json"


def target_key(target: tvm.target.Target) -> str:
    """A short, stable name for a target's database: kind, cpu/arch, and a hash of the rest."""
    from bridge.targets import target_json

    spec = target_json(target)
    head = spec.get("arch") or spec.get("mcpu") or "generic"
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"{spec.get('kind', 'target')}-{head}-{digest}"


def database_dir(target: tvm.target.Target, root: str | Path | None = None) -> Path | None:
    """The database folder for ``target`` (None when disabled by ``BRIDGE_TUNING_DB=off``)."""
    if root is None:
        env = os.environ.get("BRIDGE_TUNING_DB")
        if env and env.lower() in ("off", "0", "none"):
            return None
        root = Path(env) if env else cache_dir() / "tuning"
    return Path(root) / target_key(target)


def open_database(folder: Path) -> ms.database.JSONDatabase:
    """The database in ``folder`` (created if missing), with the tensor intrinsics its records
    may name registered (tuned int8 kernels tensorize with bridge's)."""
    from bridge.tuning.intrinsics import register_int8_dot_intrinsics

    register_int8_dot_intrinsics()
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(folder), module_equality="structural")


def existing_database(folder: Path | None) -> ms.database.JSONDatabase | None:
    """The database in ``folder`` if it holds tuned kernels, else None (builds skip it)."""
    if folder is None or not (folder / "database_tuning_record.json").is_file():
        return None
    if (folder / "database_tuning_record.json").stat().st_size == 0:
        return None
    return open_database(folder)


def workload_key(mod: tvm.IRModule) -> str:
    """The structural hash MetaSchedule files a workload under."""
    return str(ms.database.Workload(mod).as_json()[0])


class Ledger:
    """``tuned.json``: workload key -> what tuning found (trials, latencies, outcome)."""

    def __init__(self, folder: Path):
        self.path = folder / LEDGER
        try:
            self.entries: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def record(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` and write the ledger at once (a cut-off run keeps what it found)."""
        self.entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".part")
        partial.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        partial.replace(self.path)

"""Compilation targets: names, tags and dicts -> ``tvm.target.Target``."""

from __future__ import annotations

import json
from typing import Any

from bridge.errors import TargetError


def host_cpu() -> str:
    import tvm.target

    return str(tvm.target.codegen.llvm_get_system_cpu())


def target_dict(target: str | dict[str, Any]) -> dict[str, Any] | str:
    """Normalize a user target to a TVM target dict (or a TVM tag string).

    ``"llvm"`` and ``"native"`` mean this machine's CPU with all its features (AVX-512 where
    present); a dict or a JSON string is a TVM target config; other strings are TVM tags.
    """
    if isinstance(target, dict):
        return dict(target)
    if not isinstance(target, str) or not target:
        raise TargetError(f"target must be a name, a TVM tag or a dict, got {target!r}")
    if target in ("llvm", "native"):
        return {"kind": "llvm", "mcpu": host_cpu()}
    if target.lstrip().startswith("{"):
        try:
            return json.loads(target)
        except json.JSONDecodeError as exc:
            raise TargetError(f"target JSON is invalid: {exc}") from exc
    return target


def resolve(target: str | dict[str, Any]):
    """A ``tvm.target.Target`` for ``target``; raises TargetError naming what was wrong."""
    import tvm

    spec = target_dict(target)
    try:
        return tvm.target.Target(spec)
    except Exception as exc:  # TVM raises its own error types for unknown kinds/tags
        known = "'llvm', 'native', a TVM target dict, or a TVM tag such as 'arm/rasp4b64'"
        raise TargetError(f"unknown target {target!r} ({exc}); use {known}") from exc


def _plain(value: Any) -> Any:
    """TVM FFI containers (Map, Array) -> plain JSON-able Python values."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "__iter__"):
        return [_plain(v) for v in value]
    return str(value)


def target_json(target: Any) -> dict[str, Any]:
    """A compiled-for target as a plain dict (for metadata and summaries)."""
    return _plain(target.export())

"""Compilation targets: presets from ``targets/*.json``, TVM tags and TVM target dicts.

A preset names the TVM target (and host, for GPUs), the CPU architecture the library runs on,
the device it computes on, and the cross compiler that links it when that is not this machine.
"""

from __future__ import annotations

import difflib
import functools
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import TargetError

CROSS_COMPILERS = {"aarch64": "aarch64-linux-gnu-g++"}
# Instruction set extensions worth naming when a library relies on them (LLVM's names).
NOTABLE_FEATURES = (
    "sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
    "avx512bf16", "avx512fp16", "amx-int8", "amx-bf16",
    "neon", "fullfp16", "dotprod", "i8mm", "bf16", "sve", "sve2",
)  # fmt: skip
# SIMD extensions /proc/cpuinfo may list (its spelling -> LLVM's) that ``mcpu: native`` takes
# from the CPU itself rather than from LLVM's model of the CPU it names: a virtual machine may
# report an older model than it runs on (an Intel Xeon with AMX named "rocketlake") or mask an
# extension its model has.
X86_HOST_FEATURES = {
    "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
    "avx512vl": "avx512vl", "avx512dq": "avx512dq", "avx512_vnni": "avx512vnni",
    "avx_vnni": "avxvnni", "avx512_bf16": "avx512bf16", "avx512_fp16": "avx512fp16",
    "amx_tile": "amx-tile", "amx_int8": "amx-int8", "amx_bf16": "amx-bf16",
}  # fmt: skip
PORTABLE = {
    "x86_64": "--target x86-64 (any x86-64 CPU) or --target x86-64-v3 (AVX2, most since 2015)",
    "aarch64": "--target aarch64 (any 64-bit ARM CPU)",
}


def preset_dirs() -> list[Path]:
    """Where presets live: the source tree's ``targets/``, or the installed data files."""
    return [
        Path(__file__).resolve().parent.parent / "targets",
        Path(sys.prefix) / "share" / "bridge" / "targets",
    ]


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def host_cpu() -> str:
    import tvm.target

    return str(tvm.target.codegen.llvm_get_system_cpu())


@dataclass(frozen=True)
class TargetSpec:
    """Everything bridge needs to know about where a model will run."""

    name: str
    target: dict[str, Any] | str
    arch: str = "x86_64"
    device: str = "cpu"
    host: dict[str, Any] | None = None
    cross_compiler: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_native(self) -> bool:
        """True when the library is built for this exact CPU (``mcpu: native``)."""
        return any(
            isinstance(t, dict) and t.get("mcpu") == "native" for t in (self.target, self.host)
        )

    @property
    def is_cross(self) -> bool:
        """True when the library cannot run on this machine's CPU."""
        return self.arch != host_arch()

    def tvm_target(self):
        """The ``tvm.target.Target`` (with its host for GPU targets)."""
        import tvm

        check_cpu(self.name, self.target)
        check_cpu(self.name, self.host)
        try:
            host = _native(self.host) if self.host else None
            return tvm.target.Target(_native(self.target), host=host)
        except Exception as exc:  # TVM raises its own error types for bad kinds/attributes
            raise TargetError(f"target {self.name!r} is not a valid TVM target: {exc}") from exc


def _native(target: dict[str, Any] | str) -> dict[str, Any] | str:
    """Replace ``mcpu: native`` with this machine's CPU name, and the SIMD extensions LLVM's
    model of that CPU misstates with the CPU's own (:func:`host_mattr`)."""
    if isinstance(target, dict) and target.get("mcpu") == "native":
        cpu = host_cpu()
        mattr = [*target.get("mattr", []), *host_mattr(cpu)]
        return target | {"mcpu": cpu} | ({"mattr": mattr} if mattr else {})
    return target


@functools.cache
def cpuinfo_flags() -> frozenset[str] | None:
    """This x86 Linux machine's CPU flags (/proc/cpuinfo's spelling), or None elsewhere; read
    once per process."""
    if host_arch() != "x86_64":
        return None
    try:
        with open("/proc/cpuinfo") as info:
            line = next((row for row in info if row.startswith("flags")), None)
    except OSError:
        return None
    return frozenset(line.split(":", 1)[1].split()) if line else None


def host_mattr(cpu: str) -> list[str]:
    """``+feature`` for each SIMD extension of :data:`X86_HOST_FEATURES` this CPU has and
    LLVM's ``cpu`` lacks, ``-feature`` for each it lacks and ``cpu`` has (what clang's
    ``-march=native`` does from the CPU's own feature bits); empty off x86 Linux."""
    flags = cpuinfo_flags()
    if flags is None:
        return []
    import tvm
    from tvm.target import codegen

    named = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": cpu})
    modelled = set(map(str, codegen.llvm_get_cpu_features(named)))
    added = [f"+{llvm}" for flag, llvm in X86_HOST_FEATURES.items() if flag in flags]
    removed = [f"-{llvm}" for flag, llvm in X86_HOST_FEATURES.items() if flag not in flags]
    return [f for f in added if f[1:] not in modelled] + [f for f in removed if f[1:] in modelled]


def _llvm_cpu(target: Any) -> tuple[str, str] | None:
    """(mcpu, mtriple) of an LLVM target dict (TVM 0.27 takes no "llvm -mcpu=..." strings),
    or None when it names no CPU."""
    if not isinstance(target, dict) or target.get("kind") != "llvm":
        return None
    cpu, triple = target.get("mcpu"), target.get("mtriple")
    return (str(cpu), str(triple or "")) if cpu and cpu != "native" else None


def check_cpu(name: str, target: Any) -> None:
    """Refuse an LLVM ``mcpu`` that TVM's LLVM does not know for the triple (LLVM would log an
    error per kernel and quietly build for a generic CPU), naming the closest known CPUs."""
    found = _llvm_cpu(target)
    if found is None:
        return
    import tvm
    from tvm.target import codegen

    cpu, triple = found
    triple = triple or str(codegen.llvm_get_system_triple())
    if codegen.llvm_is_valid_cpu(cpu, triple):
        return
    known = sorted(map(str, codegen.llvm_get_cpu_archlist(tvm.target.Target(
        {"kind": "llvm", "mtriple": triple}
    ))))  # fmt: skip
    close = difflib.get_close_matches(cpu, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise TargetError(
        f"target {name!r}: the LLVM in TVM (LLVM {codegen.llvm_version_major()}) does not know "
        f"the CPU {cpu!r} for {triple}.{hint} Known CPUs: {', '.join(known)}"
    )


def cpu_features(spec: TargetSpec) -> list[str]:
    """The notable instruction set extensions (AVX2, AVX-512, NEON, SVE ...) a CPU target's
    library may use: LLVM's features for its mcpu and mattr."""
    from tvm.target import codegen

    target = spec.tvm_target()
    cpu = target.host if spec.device == "cuda" and target.host is not None else target
    features = set(map(str, codegen.llvm_get_cpu_features(cpu)))
    return [name for name in NOTABLE_FEATURES if name in features]


def portable_hint(arch: str) -> str:
    """Which preset builds a library for every CPU of ``arch``."""
    return PORTABLE.get(arch, "a preset for the target's CPU family (see 'bridge targets')")


def presets() -> dict[str, TargetSpec]:
    """All presets by name (file stem), first directory wins."""
    found: dict[str, TargetSpec] = {}
    for folder in preset_dirs():
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if path.stem not in found:
                data = json.loads(path.read_text())
                found[path.stem] = TargetSpec(
                    name=path.stem,
                    target=data["target"],
                    arch=data.get("arch", "x86_64"),
                    device=data.get("device", "cpu"),
                    host=data.get("host"),
                    cross_compiler=data.get("cross_compiler"),
                    description=data.get("description", ""),
                )
    return found


def _from_tvm(name: str, target: dict[str, Any] | str) -> TargetSpec:
    """A spec for a TVM tag or dict: architecture and device read off the TVM target."""
    import tvm

    check_cpu(name, target)
    try:
        parsed = tvm.target.Target(_native(target))
    except Exception as exc:
        known = ", ".join(sorted(presets()))
        close = difflib.get_close_matches(name, list(presets()), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TargetError(
            f"unknown target {name!r}.{hint} Presets: {known}; or a TVM tag "
            f"(e.g. 'arm/rasp4b64') or a TVM target dict ({exc})"
        ) from exc
    cpu = parsed.host if parsed.kind.name != "llvm" and parsed.host is not None else parsed
    triple = str(cpu.attrs.get("mtriple", "")) if cpu.kind.name == "llvm" else ""
    arch = (
        "aarch64"
        if triple.startswith(("aarch64", "arm64"))
        else ("x86_64" if not triple or triple.startswith("x86_64") else triple.split("-")[0])
    )
    device = "cuda" if parsed.kind.name == "cuda" else "cpu"
    host = {"kind": "llvm"} if device == "cuda" and parsed.host is None else None
    return TargetSpec(
        name=name,
        target=target,
        arch=arch,
        device=device,
        host=host,
        cross_compiler=CROSS_COMPILERS.get(arch) if arch != host_arch() else None,
    )


def resolve(target: str | dict[str, Any] | TargetSpec) -> TargetSpec:
    """A preset name, ``"llvm"``/``"native"``/``"cuda"``, a TVM tag, a dict or JSON -> spec.

    ``"llvm"`` and ``"native"`` compile for this machine's CPU with all its features (AVX-512
    where present); ``"cuda"`` is the ``cuda-sm80`` preset (runs on sm_80, 86, 87 and 89).
    """
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, str):
        table = presets()
        alias = {"llvm": "native", "cuda": "cuda-sm80"}.get(target, target)
        if alias in table:
            return table[alias]
        if target.lstrip().startswith("{"):
            try:
                target = json.loads(target)
            except json.JSONDecodeError as exc:
                raise TargetError(f"target JSON is invalid: {exc}") from exc
    if isinstance(target, dict):
        return _from_tvm(target.get("kind", "target"), target)
    if not isinstance(target, str) or not target:
        raise TargetError(f"target must be a preset name, a TVM tag or a dict, got {target!r}")
    return _from_tvm(target, target)


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

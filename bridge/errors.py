"""Typed errors. Every failure bridge reports is one of these, naming the file and layer."""

from __future__ import annotations

from dataclasses import dataclass


class BridgeError(Exception):
    """Base class of every error bridge raises on purpose."""


class ModelFileError(BridgeError):
    """A model or weights file is missing, of the wrong kind, corrupt, or not a Keras model."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Problem:
    """One reason a layer cannot be translated."""

    layer: str
    class_name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.layer} ({self.class_name}): {self.reason}"


class UnsupportedModelError(BridgeError):
    """Preflight found layers or configs bridge cannot translate; lists all, in model order."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{source}: {len(self.problems)} problem(s) found before translation:\n{lines}"
        )


class WeightsError(UnsupportedModelError):
    """The weights file does not match the architecture (missing or mis-shaped weights)."""


class CompileError(BridgeError):
    """TVM failed to compile the translated model."""


class ArtifactError(BridgeError):
    """An exported artifact (library or its metadata sidecar) cannot be loaded."""


class DeviceError(BridgeError):
    """The model cannot run here (another CPU architecture, or no GPU); run it on its target."""


class InputError(BridgeError, ValueError):
    """Arguments passed to a compiled model do not match its inputs."""


class TargetError(BridgeError, ValueError):
    """An unknown or malformed compilation target."""


class TuningError(BridgeError):
    """Tuning cannot run as asked: a bad budget or tracker address, missing extras, no database."""


class CalibrationError(InputError):
    """Calibration samples for ``quantize=`` do not fit the model (names, shapes, dtypes or
    values)."""

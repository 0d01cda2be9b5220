"""Model sources: the one place that chooses between a Keras model and a TFLite flatbuffer.

:func:`open_source` reads the files (by content, :mod:`bridge.formats`) and returns a source with
the same interface for both: ``kind``, ``describe()`` (the artifact's metadata about the source),
``translate(...)`` (a :class:`~bridge.translation.Translation`) and ``inspect_rows(...)`` (the rows
of ``bridge inspect``, never raising for unsupported layers). No TVM at import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bridge.errors import ModelFileError, Problem, UnsupportedModelError
from bridge.formats import file_kind

if TYPE_CHECKING:
    from bridge.keras.files import KerasSource
    from bridge.tflite.reader import TFLiteFile
    from bridge.translation import InputShapes, Translation

PathLike = str | Path
Report = Callable[[str], None]
# (path, class or operator, output shapes, weight elements, "ok" or why not)
Row = tuple[str, str, "list | None", int, str]
NEEDS_WEIGHTS = (
    "this architecture needs a weights file (e.g. model.weights.h5): pass it as the second argument"
)


def _quiet(stage: str) -> None:
    pass


class ModelSource(Protocol):
    kind: str  # "keras" or "tflite"
    name: str

    def describe(self) -> dict[str, Any]: ...

    def translate(
        self,
        batch_size: int | None = 1,
        outputs: list[str] | None = None,
        device: str = "cpu",
        report: Report = _quiet,
        input_shapes: InputShapes = None,
    ) -> Translation: ...

    def inspect_rows(
        self, batch_size: int | None = 1, input_shapes: InputShapes = None
    ) -> tuple[str, str, list[Row]]: ...

    def notes(self) -> list[str]: ...


@dataclass
class KerasModel:
    """A Keras model with its stored weights assigned to layers (and any assignment problems)."""

    source: KerasSource
    weights: dict[str, list[np.ndarray]]
    problems: list[Problem] = field(default_factory=list)
    custom: dict = field(default_factory=dict)  # validated custom_layers
    kind: str = "keras"

    @property
    def name(self) -> str:
        return self.source.graph.name

    @property
    def weights_label(self) -> str:
        path = self.source.weights_path or (self.source.model_path if self.source.weights else None)
        return str(path) if path else "(no weights file)"

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.source.graph.name,
            "model_type": self.source.graph.kind,
            "keras_version": self.source.keras_version,
            "files": self.source.files,
        }

    def missing_weights(self) -> Problem | None:
        """One problem when the model has no weights at all but some layer needs them."""
        from bridge.convert.layers import converter_for

        if self.source.weights is not None:
            return None
        for _, layer in self.source.graph.walk_layers():
            converter = converter_for(layer, self.custom) if layer.model is None else None
            try:
                if converter is not None and converter.weight_names(layer.config):
                    return Problem(self.source.graph.name, "weights", NEEDS_WEIGHTS)
            except Exception:  # a malformed config: preflight names the layer
                continue
        return None

    def translate(
        self,
        batch_size: int | None = 1,
        outputs: list[str] | None = None,
        device: str = "cpu",
        report: Report = _quiet,
        input_shapes: InputShapes = None,
        walker_class: type | None = None,
    ) -> Translation:
        """The Relax translation; ``walker_class`` replaces the graph walker (bridge.quant's
        calibration and integer walks) with the same checks and problems."""
        from bridge.convert.walk import translate

        missing = self.missing_weights()
        count = sum(1 for _ in self.source.graph.walk_layers())
        report(f"translating {count} layers to Relax")
        return translate(
            self.source.graph,
            self.weights,
            self.source.label,
            self.weights_label,
            batch_size=batch_size,
            outputs=outputs,
            extra_problems=[missing, *self.problems] if missing else self.problems,
            device=device,
            custom=self.custom,
            require_weights=missing is None,
            input_shapes=input_shapes,
            walker_class=walker_class,
        )

    def notes(self) -> list[str]:
        """What ``bridge inspect`` says about the model as a whole."""
        missing = self.missing_weights()
        return [f"no shapes or parameters: {missing.reason}"] if missing else []

    def inspect_rows(
        self, batch_size: int | None = 1, input_shapes: InputShapes = None
    ) -> tuple[str, str, list[Row]]:
        """(model kind, Keras version, rows). Without a weights file, layers are checked for
        everything else and translation is skipped (shapes unknown)."""
        from bridge.convert.preflight import check_layer

        graph = self.source.graph
        unweighted = self.missing_weights() is not None
        problems: dict[str, list[str]] = {}
        for path, layer in graph.walk_layers():
            if layer.model is None:
                checked = check_layer(
                    path, layer, self.weights, self.weights_label, self.custom, not unweighted
                )
                for p in checked:
                    problems.setdefault(path, []).append(p.reason)
        for p in self.problems:
            problems.setdefault(p.layer, []).append(p.reason)
        shapes: dict[str, list[tuple[int, ...]]] = {}
        if not problems and not unweighted:
            try:
                shapes = self.translate(batch_size, input_shapes=input_shapes).layer_shapes
            except UnsupportedModelError as exc:
                for p in exc.problems:
                    problems.setdefault(p.layer, []).append(p.reason)
        rows = [
            (
                path,
                layer.class_name,
                shapes.get(path),
                sum(int(a.size) for a in self.weights.get(path, [])),
                "; ".join(problems.get(path, [])) or "ok",
            )
            for path, layer in graph.walk_layers()
        ]
        return graph.kind, self.source.keras_version, rows


@dataclass
class TFLiteModel:
    """A checked TFLite flatbuffer (it holds its own weights)."""

    file: TFLiteFile
    kind: str = "tflite"

    @property
    def name(self) -> str:
        return self.file.name

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.file.name,
            "model_type": "tflite",
            "keras_version": "",
            "files": [self.file.path],
        }

    def translate(
        self,
        batch_size: int | None = 1,
        outputs: list[str] | None = None,
        device: str = "cpu",
        report: Report = _quiet,
        input_shapes: InputShapes = None,
    ) -> Translation:
        from bridge.tflite.translate import translate

        report(f"translating {len(self.file.ops)} TFLite operators to Relax")
        return translate(
            self.file, batch_size=batch_size, outputs=outputs, input_shapes=input_shapes
        )

    def notes(self) -> list[str]:
        return []

    def inspect_rows(
        self, batch_size: int | None = 1, input_shapes: InputShapes = None
    ) -> tuple[str, str, list[Row]]:
        from bridge.tflite.translate import report_rows

        return "tflite", "", report_rows(self.file, input_shapes)


def open_keras(
    model: PathLike, weights: PathLike | None = None, custom_layers: Mapping[str, Any] | None = None
) -> KerasModel:
    """Open Keras files and assign the stored weights to layers."""
    from bridge.convert.layers import converter_for
    from bridge.convert.registry import NON_TRAINABLE, as_custom_layers
    from bridge.keras.files import open_model

    custom = as_custom_layers(custom_layers)

    def flags(layer, trainable: bool) -> list[bool] | None:
        converter = converter_for(layer, custom)
        try:
            names = converter.weight_names(layer.config) if converter else None
        except Exception:  # a malformed config: preflight reports it, naming the layer
            return None
        return None if names is None else [trainable and n not in NON_TRAINABLE for n in names]

    def sublayers(layer) -> list[str]:
        converter = converter_for(layer, custom)
        try:
            return converter.sublayer_groups(layer.config) if converter else []
        except Exception:  # a malformed config: preflight reports it, naming the layer
            return []

    source = open_model(model, weights)
    if source.weights is None:
        return KerasModel(source, {}, custom=custom)
    assigned, problems = source.weights.assign(source.graph, flags, sublayers)
    return KerasModel(source, assigned, problems, custom)


def open_source(
    model: PathLike,
    weights: PathLike | None = None,
    custom_layers: Mapping[str, Any] | None = None,
) -> KerasModel | TFLiteModel:
    """Read any supported model file (its kind from its content)."""
    if file_kind(model) != "tflite":
        return open_keras(model, weights, custom_layers)
    if weights is not None:
        raise ModelFileError(weights, "a .tflite model holds its weights; pass no weights file")
    from bridge.tflite.reader import read_tflite

    return TFLiteModel(read_tflite(model))

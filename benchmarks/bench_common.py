"""What make_models.py and run.py share: the model list, file names, and the benchmark inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS_DIR = HERE / "models"
WORK_DIR = HERE / "work"
RESULTS_DIR = HERE / "results"

SEED = 20240601  # weights and inputs; change it and every file is regenerated
INPUT_SHAPE = (224, 224, 3)


@dataclass(frozen=True)
class Spec:
    name: str  # the keras.applications constructor, or a model of make_models.SEQUENCE_MODELS
    low: float  # benchmark inputs are uniform(low, high): what the model's first layer expects
    high: float  # (integers in [low, high) for an int32 input: token ids)
    note: str
    input_shape: tuple[int, ...] = INPUT_SHAPE
    dtype: str = "float32"
    application: bool = True  # a keras.applications model (else built by make_models.py)
    int8: bool = True  # whether a LiteRT full-integer file is made and timed


MODELS: dict[str, Spec] = {
    s.name: s
    for s in [
        Spec("MobileNetV2", -1.0, 1.0, "expects inputs in [-1, 1] (no preprocessing layer)"),
        Spec("ResNet50", -1.0, 1.0, "no preprocessing layer; inputs in [-1, 1]"),
        Spec("EfficientNetB0", 0.0, 255.0, "Rescaling + Normalization inside; inputs in [0, 255]"),
        Spec("MobileNetV3Small", 0.0, 255.0, "Rescaling inside; inputs in [0, 255]"),
        Spec(
            "LSTMTextClassifier",
            0,
            2000,
            "Embedding(2000, 64) -> LSTM(128, sequences) -> LSTM(128) -> Dense(4); token ids",
            input_shape=(128,),
            dtype="int32",
            application=False,
            int8=False,
        ),
        Spec(
            "TransformerEncoder",
            -1.0,
            1.0,
            "one encoder block: MultiHeadAttention(4 heads, key_dim 32) + residual + "
            "LayerNormalization, FFN 512 (relu) -> 128 + residual + LayerNormalization",
            input_shape=(128, 128),
            application=False,
            int8=False,
        ),
    ]
}
QUICK_MODEL = "MobileNetV3Small"


def paths(name: str, batch: int | None = None) -> dict[str, Path]:
    """The files make_models.py writes for one model (and, given ``batch``, that batch's)."""
    files = {
        "keras": MODELS_DIR / f"{name}.keras",
        "reference": MODELS_DIR / f"{name}.reference.npz",
        "manifest": MODELS_DIR / f"{name}.manifest.json",
    }
    if MODELS[name].int8:
        files["calibration"] = MODELS_DIR / f"{name}.calibration.npz"
    if batch is not None:
        files |= {
            "tflite_fp32": MODELS_DIR / f"{name}.b{batch}.fp32.tflite",
            "tflite_int8": MODELS_DIR / f"{name}.b{batch}.int8.tflite",
            "onnx": MODELS_DIR / f"{name}.b{batch}.onnx",
        }
        if not MODELS[name].int8:
            del files["tflite_int8"]
    return files


def bench_input(name: str, batch: int) -> np.ndarray:
    """The input every runtime gets for (model, batch): fixed, seeded, in the model's range."""
    spec = MODELS[name]
    rng = np.random.default_rng([SEED, batch, 7])
    size = (batch, *spec.input_shape)
    if spec.dtype.startswith("int"):
        return rng.integers(int(spec.low), int(spec.high), size=size).astype(spec.dtype)
    return rng.uniform(spec.low, spec.high, size=size).astype(spec.dtype)


CALIBRATION_IMAGES = 32  # the representative dataset of the int8 .tflite files


def calibration_batches(name: str, batch: int) -> list[np.ndarray]:
    """The representative dataset make_models.py gives TFLiteConverter for (model, batch):
    ``CALIBRATION_IMAGES // batch`` seeded arrays of shape (batch, ...) (deterministic)."""
    spec = MODELS[name]
    rng = np.random.default_rng([SEED, 99, batch])
    return [
        rng.uniform(spec.low, spec.high, size=(batch, *spec.input_shape)).astype("float32")
        for _ in range(max(1, CALIBRATION_IMAGES // batch))
    ]


def read_calibration(name: str, batch: int) -> np.ndarray | None:
    """The calibration images saved for (model, batch), stacked (N, ...), or None."""
    path = paths(name).get("calibration")
    if path is None or not path.is_file():
        return None
    with np.load(path) as data:
        key = f"c{batch}"
        return np.asarray(data[key]) if key in data.files else None


def read_manifest(name: str) -> dict | None:
    path = paths(name)["manifest"]
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def models_ready(name: str, batches: list[int], calibration: bool = True) -> bool:
    """Whether make_models.py has produced a complete, current set of files for ``name``
    (``calibration=False``: the saved calibration images aside)."""
    manifest = read_manifest(name)
    if manifest is None or manifest.get("seed") != SEED or not manifest.get("complete"):
        return False
    if not set(batches) <= {int(b) for b in manifest.get("batches", {})}:
        return False
    files = {k: p for b in batches for k, p in paths(name, b).items()}
    if not calibration:
        files.pop("calibration", None)
    return all(p.is_file() for p in files.values())

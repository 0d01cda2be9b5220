"""Build the benchmark models and every peer's file from the same weights.

For each model (keras.applications, 224x224x3, weights=None, classifier_activation=None so the
outputs are logits; or one of the sequence models built here: an LSTM text classifier and a
Transformer encoder block, with Keras' own seeded initial weights): seeded random weights, then

  models/<name>.keras                  bridge's input and the Keras/JAX peer's
  models/<name>.b<N>.fp32.tflite       LiteRT float32 (TFLiteConverter), one file per batch size
  models/<name>.b<N>.int8.tflite       LiteRT full-integer int8 (random representative dataset;
                                       float32 input/output, every op in int8)
  models/<name>.b<N>.onnx              ONNX (tf2onnx, opset 17)
  models/<name>.reference.npz          Keras outputs on the benchmark inputs (x<N>, y<N>)
  models/<name>.calibration.npz        the int8 file's representative dataset (c<N>: 32 images
                                       for batch N; seeded, so rewritten alone when missing)
  models/<name>.manifest.json          seed, versions, conversion times, fp32 agreement checks

Runs in the benchmark venv with the TensorFlow backend (the peers' converters need TensorFlow;
the .keras file itself is backend-independent). Files are cached: a model whose manifest is
complete for the current seed and batch sizes is skipped unless --force.

    benchmarks/.venv/bin/python benchmarks/make_models.py [--models A,B] [--batch 1,8] [--force]
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    INPUT_SHAPE,
    MODELS,
    MODELS_DIR,
    SEED,
    Spec,
    bench_input,
    calibration_batches,
    models_ready,
    paths,
    read_manifest,
)

warnings.filterwarnings("ignore", message="Statistics for quantized inputs")

KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")
FP32_TOLERANCE = 1e-4  # max |peer - keras| / max |keras| for the float32 files
ONNX_OPSET = 17
PEER_FILES = ("tflite_fp32", "tflite_int8", "onnx")


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------- weights
def init_rule(variable, initial: np.ndarray, kernel_scale: float) -> tuple:
    """How one variable is filled: kernels like Keras' own initializer (same std), BN statistics
    away from the identity so that every part of the layer matters."""
    base = variable.name
    if not np.issubdtype(np.dtype(variable.dtype), np.floating):
        return ("keep",)
    if base in KERNELS:
        std = float(np.std(initial))
        if std == 0.0:
            fan_in = int(np.prod(initial.shape[:-1])) or 1
            std = (2.0 / fan_in) ** 0.5
        return ("normal", 0.0, float(f"{std:.3g}") * kernel_scale)
    if base == "gamma":
        return ("uniform", 0.8, 1.2)
    if base in ("moving_variance", "variance"):
        return ("uniform", 0.5, 1.5)
    if base in ("beta", "bias", "moving_mean", "mean"):
        return ("normal", 0.0, 0.1)
    raise ValueError(f"no init rule for variable {variable.path}")


def seeded_weights(model, initial: list[np.ndarray], kernel_scale: float) -> list[np.ndarray]:
    values = []
    for i, (variable, start) in enumerate(zip(model.weights, initial)):
        rule = init_rule(variable, start, kernel_scale)
        rng = np.random.default_rng([SEED, i])
        if rule[0] == "normal":
            values.append(rng.normal(rule[1], rule[2], size=start.shape).astype(start.dtype))
        elif rule[0] == "uniform":
            values.append(rng.uniform(rule[1], rule[2], size=start.shape).astype(start.dtype))
        else:
            values.append(start)
    return values


def lstm_text_classifier(spec):
    """Token ids -> Embedding -> LSTM (sequences) -> LSTM -> Dense logits."""
    import keras
    from keras import layers

    ids = keras.Input(spec.input_shape, dtype="int32", name="input")
    x = layers.Embedding(int(spec.high), 64)(ids)
    x = layers.LSTM(128, return_sequences=True)(x)
    x = layers.LSTM(128)(x)
    return keras.Model(ids, layers.Dense(4)(x), name=spec.name)


def transformer_encoder(spec):
    """One post-norm Transformer encoder block, d_model 128, 4 heads, FFN 512."""
    import keras
    from keras import layers

    inputs = keras.Input(spec.input_shape, name="input")
    d_model = spec.input_shape[-1]
    attended = layers.MultiHeadAttention(num_heads=4, key_dim=d_model // 4)(inputs, inputs)
    x = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([inputs, attended]))
    hidden = layers.Dense(4 * d_model, activation="relu")(x)
    x = layers.Add()([x, layers.Dense(d_model)(hidden)])
    return keras.Model(inputs, layers.LayerNormalization(epsilon=1e-6)(x), name=spec.name)


SEQUENCE_MODELS = {
    "LSTMTextClassifier": lstm_text_classifier,
    "TransformerEncoder": transformer_encoder,
}


def build_keras(name: str):
    """The application with seeded weights whose logits are neither vanishing nor exploding
    (a sequence model: Keras' initial weights, seeded)."""
    import keras

    keras.utils.set_random_seed(SEED)
    spec = MODELS[name]
    if not spec.application:
        model = SEQUENCE_MODELS[name](spec)
        y = np.asarray(model(bench_input(name, 1), training=False))
        return model, 1.0, float(y.std())
    model = getattr(keras.applications, name)(
        weights=None, input_shape=INPUT_SHAPE, classifier_activation=None
    )
    initial = [np.asarray(v.numpy()) for v in model.weights]
    x = bench_input(name, 1)
    kernel_scale = 1.0
    for _ in range(8):
        model.set_weights(seeded_weights(model, initial, kernel_scale))
        y = np.asarray(model(x, training=False))
        std = float(y.std())
        if np.isfinite(y).all() and 1e-2 < std < 1e3:
            break
        log(f"  logits std {std:.3g} with kernel scale {kernel_scale:g}; adjusting")
        kernel_scale *= 2.0 if (np.isfinite(y).all() and std <= 1e-2) else 0.5
    return model, kernel_scale, std


# ------------------------------------------------------------------------------- converters
def _spec_of(model):
    """The sequence models are named after their spec; applications use the image shape."""
    if model.name in MODELS and not MODELS[model.name].application:
        return MODELS[model.name]
    return Spec("application", 0.0, 1.0, "")


def concrete_function(model, batch: int):
    import tensorflow as tf

    spec = _spec_of(model)
    shape, dtype = spec.input_shape, tf.as_dtype(spec.dtype)

    @tf.function(input_signature=[tf.TensorSpec((batch, *shape), dtype, name="input")])
    def serve(x):
        return model(x, training=False)

    return serve, serve.get_concrete_function()


def frozen_function(model, batch: int):
    """The forward pass with every variable folded to a constant. TFLiteConverter otherwise
    keeps Keras 3's resource variables (READ_VARIABLE ops), which the int8 calibrator cannot
    run."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    return convert_variables_to_constants_v2(concrete_function(model, batch)[1])


@contextlib.contextmanager
def quiet():
    """TensorFlow and tf2onnx print pages of progress and deprecation notes, some of it from C++
    straight to the file descriptors; keep all of it out unless the conversion fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    levels = {n: logging.getLogger(n).level for n in ("tensorflow", "tf2onnx", "absl")}
    for n in levels:
        logging.getLogger(n).setLevel(logging.ERROR)
    saved = [os.dup(1), os.dup(2)]
    failed = True
    with tempfile.TemporaryFile(mode="w+", errors="replace") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read()[-8000:])


def to_tflite(model, batch: int, path: Path, int8_calibration: list[np.ndarray] | None) -> float:
    import tensorflow as tf

    started = time.perf_counter()
    with quiet():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen_function(model, batch)])
        if int8_calibration is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([x] for x in int8_calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        data = converter.convert()
    path.write_bytes(data)
    return time.perf_counter() - started


def to_onnx(model, batch: int, path: Path) -> float:
    """tf2onnx on the frozen graph: from_function would leave tensors that Keras 3 captures
    outside variables (e.g. Normalization's mean and variance) as extra graph inputs. The
    sequence models go through from_function: their frozen LSTM loops come out of tf2onnx with
    untyped tensors that ONNX Runtime refuses ("Invalid tensor data type 0")."""
    import tf2onnx

    started = time.perf_counter()
    if not _spec_of(model).application:
        serve, concrete = concrete_function(model, batch)
        with quiet():
            tf2onnx.convert.from_function(
                serve,
                input_signature=concrete.structured_input_signature[0],
                opset=ONNX_OPSET,
                output_path=str(path),
            )
        return time.perf_counter() - started
    frozen = frozen_function(model, batch)
    with quiet():
        tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(),
            input_names=[t.name for t in frozen.inputs],
            output_names=[t.name for t in frozen.outputs],
            opset=ONNX_OPSET,
            output_path=str(path),
        )
    return time.perf_counter() - started


# ------------------------------------------------------------------------------- checks
def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def agreement(y: np.ndarray, ref: np.ndarray) -> dict:
    diff = float(np.max(np.abs(y.astype(np.float64) - ref)))
    return {"max_abs": diff, "rel": diff / max(float(np.max(np.abs(ref))), 1e-30)}


# ------------------------------------------------------------------------------- main
def save_calibration(name: str, batches: list[int]) -> None:
    """models/<name>.calibration.npz: c<N> = the (32, ...) images of batch N's int8 file."""
    sets = {f"c{b}": np.concatenate(calibration_batches(name, b)) for b in batches}
    np.savez(paths(name)["calibration"], **sets)


def make(name: str, batches: list[int], force: bool) -> dict:
    import keras
    import tensorflow as tf
    import tf2onnx

    if not force and models_ready(name, batches):
        log(f"{name}: cached")
        return read_manifest(name)
    if not force and models_ready(name, batches, calibration=False):
        # made before the calibration images were saved: seeded, so these are the ones used
        manifest = read_manifest(name)
        save_calibration(name, sorted(int(b) for b in manifest["batches"]))
        log(f"{name}: cached; wrote {paths(name)['calibration'].name}")
        return manifest
    previous = read_manifest(name) or {}
    if previous.get("seed") == SEED:  # keep the batch sizes made before (the files are rewritten)
        batches = sorted(set(batches) | {int(b) for b in previous.get("batches", {})})

    log(f"{name}: building Keras model with seeded weights")
    started = time.perf_counter()
    model, kernel_scale, std = build_keras(name)
    keras_path = MODELS_DIR / f"{name}.keras"
    model.save(keras_path)
    spec = MODELS[name]
    if not spec.application:
        constructor = f"make_models.{SEQUENCE_MODELS[name].__name__}: {spec.note}"
    else:
        constructor = (
            f"keras.applications.{name}(weights=None, input_shape={INPUT_SHAPE}, "
            "classifier_activation=None)"
        )
    manifest = {
        "model": name,
        "constructor": constructor,
        "seed": SEED,
        "kernel_scale": kernel_scale,
        "logits_std": std,
        "input_range": [MODELS[name].low, MODELS[name].high],
        "weight_bytes": int(sum(np.asarray(v.numpy()).nbytes for v in model.weights)),
        "parameters": int(model.count_params()),
        "keras_file_bytes": keras_path.stat().st_size,
        "versions": {
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
            "tf2onnx": tf2onnx.__version__,
        },
        "build_seconds": round(time.perf_counter() - started, 2),
        "batches": {},
        "complete": False,
    }
    reference = {}
    for batch in batches:
        files = {k: v for k, v in paths(name, batch).items() if k in PEER_FILES}
        x = bench_input(name, batch)
        y = np.asarray(model(x, training=False), dtype=np.float64)
        reference[f"x{batch}"], reference[f"y{batch}"] = x, y.astype(np.float32)
        entry = {}
        log(f"  batch {batch}: TFLite fp32")
        entry["tflite_fp32_seconds"] = round(to_tflite(model, batch, files["tflite_fp32"], None), 2)
        if spec.int8:
            calibration = calibration_batches(name, batch)
            log(f"  batch {batch}: TFLite int8 ({len(calibration) * batch} calibration images)")
            entry["tflite_int8_seconds"] = round(
                to_tflite(model, batch, files["tflite_int8"], calibration), 2
            )
        log(f"  batch {batch}: ONNX (tf2onnx, opset {ONNX_OPSET})")
        entry["onnx_seconds"] = round(to_onnx(model, batch, files["onnx"]), 2)
        entry["check"] = {
            "tflite_fp32": agreement(run_tflite(files["tflite_fp32"], x), y),
            "onnx": agreement(run_onnx(files["onnx"], x), y),
        }
        if spec.int8:
            entry["check"]["tflite_int8"] = agreement(run_tflite(files["tflite_int8"], x), y)
        entry["bytes"] = {k: p.stat().st_size for k, p in files.items()}
        for peer in ("tflite_fp32", "onnx"):
            rel = entry["check"][peer]["rel"]
            status = "ok" if rel <= FP32_TOLERANCE else f"ABOVE {FP32_TOLERANCE:g}"
            log(
                f"    {peer} vs Keras: max abs {entry['check'][peer]['max_abs']:.3g}, "
                f"relative {rel:.2g} ({status})"
            )
        if spec.int8:
            log(f"    tflite_int8 vs Keras: relative {entry['check']['tflite_int8']['rel']:.2g}")
        manifest["batches"][str(batch)] = entry
    np.savez(MODELS_DIR / f"{name}.reference.npz", **reference)
    if spec.int8:
        save_calibration(name, batches)
    manifest["fp32_agreement_ok"] = all(
        e["check"][p]["rel"] <= FP32_TOLERANCE
        for e in manifest["batches"].values()
        for p in ("tflite_fp32", "onnx")
    )
    manifest["complete"] = True
    manifest["total_seconds"] = round(time.perf_counter() - started, 1)
    (MODELS_DIR / f"{name}.manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"{name}: done in {manifest['total_seconds']:.0f}s")
    keras.backend.clear_session()
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--force", action="store_true", help="regenerate even if cached")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    batches = sorted({int(b) for b in args.batch.split(",")})
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    bad = []
    for name in names:
        manifest = make(name, batches, args.force)
        if not manifest.get("fp32_agreement_ok", False):
            bad.append(name)
    if bad:
        log(
            f"warning: float32 peer files disagree with Keras above {FP32_TOLERANCE:g} "
            f"(relative) for {bad}; see the manifests"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

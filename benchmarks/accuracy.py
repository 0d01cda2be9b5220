"""Trained-model accuracy, float32 against int8, on held-out data.

    benchmarks/.venv/bin/python benchmarks/accuracy.py [--calibration 256] [--out results/accuracy]

The digits CNN of examples/ (examples/digits/digits_cnn.keras, trained by
examples/train_digits.py) classifies the 450 held-out images of its test split
(tests/fixtures/quant/digits.npz, which also holds the first 256 training images, the calibration
set). Rows:

  Keras fp32               the .keras file in Keras (TensorFlow backend), when importable
  bridge fp32              bridge.build(model.keras, batch_size=None)
  bridge int8 (quantize=)  bridge.build(model.keras, quantize="int8", calibration=<images>)
  LiteRT int8              TFLiteConverter full-integer int8 (TFLITE_BUILTINS_INT8, float input and
                           output; representative dataset = the same calibration images, one
                           per sample), run by ai_edge_litert; needs TensorFlow
  bridge int8 (tflite)     bridge.build(<that LiteRT int8 file>)

For each: accuracy on the held-out labels, top-1 agreement with bridge fp32 and the largest
probability difference from it. Prints a markdown table and writes STEM.md and STEM.json.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "tensorflow"  # the converter's backend (the .keras is portable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS_DIR, ROOT, WORK_DIR

MODEL = ROOT / "examples" / "digits" / "digits_cnn.keras"
DATA = ROOT / "tests" / "fixtures" / "quant" / "digits.npz"
FP32 = "bridge fp32"
Predict = Callable[[np.ndarray], np.ndarray]


def log(msg: str) -> None:
    print(msg, flush=True)


def digits(kind: str) -> np.ndarray:
    """``test`` or ``calibration`` images as the model takes them: (N, 8, 8, 1), pixels / 16."""
    with np.load(DATA) as data:
        return data[f"{kind}_pixels"][..., None].astype(np.float32) / 16.0


def per_image(call: Callable[[np.ndarray], np.ndarray]) -> Predict:
    """A batch-1 runtime applied to every image in turn."""
    return lambda images: np.concatenate([np.asarray(call(image[None])) for image in images])


# ------------------------------------------------------------------------------- runtimes
def keras_fp32() -> Predict:
    import keras

    model = keras.saving.load_model(MODEL, compile=False)
    return lambda images: np.asarray(model.predict(images, batch_size=64, verbose=0))


def bridge_fp32() -> Predict:
    import bridge

    return bridge.build(MODEL, batch_size=None)


def bridge_quantize(calibration: np.ndarray) -> Predict:
    import bridge

    return bridge.build(MODEL, batch_size=None, quantize="int8", calibration=calibration)


def litert_int8_file(calibration: np.ndarray, path: Path) -> Path:
    """TFLiteConverter full-integer int8 of the .keras file, batch 1, float input and output,
    calibrated on ``calibration`` (as make_models.py converts the benchmark models)."""
    import keras
    import tensorflow as tf
    from make_models import quiet
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    model = keras.saving.load_model(MODEL, compile=False)

    @tf.function(input_signature=[tf.TensorSpec((1, *calibration.shape[1:]), tf.float32)])
    def serve(x):
        return model(x, training=False)

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    with quiet():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        data = converter.convert()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def litert(path: Path) -> Predict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def call(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return per_image(call)


def bridge_tflite(path: Path) -> Predict:
    import bridge

    return per_image(bridge.build(path))


# ------------------------------------------------------------------------------- report
def runtimes(calibration: np.ndarray) -> dict[str, Callable[[], Predict]]:
    """The rows this environment can run, in order, as constructors."""
    have = {m: importlib.util.find_spec(m) is not None for m in ("keras", "tensorflow")}
    have["litert"] = importlib.util.find_spec("ai_edge_litert") is not None
    rows: dict[str, Callable[[], Predict]] = {}
    if have["keras"] and have["tensorflow"]:
        rows["Keras fp32"] = keras_fp32
    rows[FP32] = bridge_fp32
    rows["bridge int8 (quantize=)"] = lambda: bridge_quantize(calibration)
    if have["keras"] and have["tensorflow"] and have["litert"]:
        tflite = WORK_DIR / "accuracy" / f"digits_cnn.int8.c{len(calibration)}.tflite"
        rows["LiteRT int8"] = lambda: litert(litert_int8_file(calibration, tflite))
        rows["bridge int8 (tflite)"] = lambda: bridge_tflite(tflite)
    else:
        log("no TensorFlow/LiteRT here: LiteRT int8 rows skipped")
    return rows


def measure(calibration: np.ndarray) -> dict:
    images = digits("test")
    with np.load(DATA) as data:
        labels = data["test_labels"].astype(np.int64)
    outputs: dict[str, np.ndarray] = {}
    rows = []
    for name, make in runtimes(calibration).items():
        log(f"{name}: building and classifying {len(images)} images")
        started = time.perf_counter()
        try:
            outputs[name] = np.asarray(make()(images), np.float64)
        except Exception as exc:  # reported in its row; the other rows still run
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            rows.append({"runtime": name, "error": error})
            log(f"  failed: {error}")
            continue
        rows.append({"runtime": name, "seconds": round(time.perf_counter() - started, 2)})
    if FP32 not in outputs:
        raise SystemExit(f"{FP32} failed: nothing to compare the int8 rows with")
    reference = outputs[FP32]
    for row in rows:
        if "error" in row:
            continue
        y = outputs[row["runtime"]]
        row |= {
            "correct": int((y.argmax(1) == labels).sum()),
            "accuracy": float((y.argmax(1) == labels).mean()),
            "top1_agreement_fp32": float((y.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_diff_fp32": float(np.abs(y - reference).max()),
        }
    return {
        "model": str(MODEL.relative_to(ROOT)),
        "data": str(DATA.relative_to(ROOT)),
        "test_images": len(images),
        "calibration_images": len(calibration),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rows": rows,
    }


def markdown(results: dict) -> str:
    out = [
        f"Accuracy of `{results['model']}` (softmax over 10 digits) on the "
        f"{results['test_images']} held-out images of `{results['data']}`; int8 rows calibrated "
        f"on the same {results['calibration_images']} training images. Agreement and max "
        f"|diff| are against bridge fp32 (probabilities). Measured {results['date']}.",
        "",
        "| runtime | accuracy | correct | top-1 agreement with fp32 | max abs diff vs fp32 |",
        "|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        if "error" in r:
            out.append(f"| {r['runtime']} | failed: {r['error'].replace('|', '/')} | | | |")
            continue
        out.append(
            f"| {r['runtime']} | {100 * r['accuracy']:.2f}% | {r['correct']}/"
            f"{results['test_images']} | {100 * r['top1_agreement_fp32']:.2f}% | "
            f"{r['max_abs_diff_fp32']:.2e} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--calibration", type=int, default=256, help="training images to calibrate on (<= 256)"
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "accuracy"), help="results path stem")
    args = parser.parse_args(argv)
    available = digits("calibration")
    if not 1 <= args.calibration <= len(available):
        parser.error(f"--calibration must be 1..{len(available)}")
    results = measure(available[: args.calibration])
    table = markdown(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(table)
    log("")
    log(table)
    log(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Sweep: Keras models -> TensorFlow's TFLite converter -> bridge, compared with LiteRT.

    benchmarks/.venv/bin/python scripts/tflite_sweep.py --set fixtures
    nice -n 19 benchmarks/.venv/bin/python scripts/tflite_sweep.py --set apps --jsonl apps.jsonl
    benchmarks/.venv/bin/python scripts/tflite_sweep.py --table /tmp/apps.jsonl   # print only

Models: ``fixtures`` (tests/fixtures/keras3/models/*.keras and keras2/models/*.keras or .h5
where Keras 3 loads them; float16/bfloat16/mixed-precision ones widened to float32 first),
``apps`` (every keras.applications model, weights=None, at the smallest square input it
accepts, smallest models first, returning logits: ``classifier_activation=None``), ``layers``
(the Keras 3 layer cases, tests/fixtures/keras3/layers: select with ``--only``). Variants,
each converted with ``TFLiteConverter``:

- ``keras``: ``from_keras_model`` (float32);
- ``dynbatch``: ``model.export`` (a SavedModel whose signature has batch None) then
  ``from_saved_model``; the file stores batch 1 with ``shape_signature`` -1;
- ``float16``: float16 weights;
- ``int8``: full integer (``TFLITE_BUILTINS_INT8``, int8 inputs and outputs) calibrated on 4
  random samples.

Each model runs in its own process (a crash or a hang is one row). Every variant's outputs
from ``bridge.build(target="llvm")`` are compared with LiteRT's builtin kernels on the same
seeded input: float outputs as max|bridge - LiteRT| / max(1, max|LiteRT|), integer outputs in
quantization steps. A row is ``ok`` within 1e-4 (float) or 0 steps (int8), ``mismatch``
otherwise, or the failure's class: ``convert`` (TensorFlow refused), ``litert`` (LiteRT could
not run the file), ``refused`` (bridge's preflight, with the operators), ``translate``,
``build`` or ``run``. Results are appended to ``--jsonl`` (models already there are skipped,
so a sweep can be resumed) and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
VARIANTS = ["keras", "dynbatch", "float16", "int8"]
FLOAT_TOLERANCE = 1e-4


# --- models ---------------------------------------------------------------------------------


def layer_models() -> list[str]:
    """The Keras 3 layer cases (tests/fixtures/keras3/layers): one layer each."""
    return [f"layers/{p.stem}" for p in sorted((FIXTURES / "keras3" / "layers").glob("*.keras"))]


def fixture_models() -> list[str]:
    names = [f"keras3/{p.stem}" for p in sorted((FIXTURES / "keras3" / "models").glob("*.keras"))]
    names += [f"keras2/{p.stem}" for p in sorted((FIXTURES / "keras2" / "models").glob("*.keras"))]
    return names


APP_INPUT = {  # the smallest input keras.applications accepts (default: 32)
    "InceptionV3": 75,
    "InceptionResNetV2": 75,
    "Xception": 71,
    "NASNetMobile": 32,
    "NASNetLarge": 32,
}


# keras.applications by parameter count (millions, at 224 x 224): the sweep runs small first.
APP_ORDER = [
    "MobileNetV3Small", "MobileNet", "MobileNetV2", "MobileNetV3Large", "EfficientNetB0",
    "NASNetMobile", "EfficientNetV2B0", "EfficientNetB1", "DenseNet121", "EfficientNetV2B1",
    "EfficientNetB2", "EfficientNetV2B2", "EfficientNetB3", "DenseNet169", "EfficientNetV2B3",
    "EfficientNetB4", "DenseNet201", "EfficientNetV2S", "Xception", "InceptionV3", "ResNet50",
    "ResNet50V2", "ConvNeXtTiny", "EfficientNetB5", "EfficientNetB6", "ResNet101", "ResNet101V2",
    "ConvNeXtSmall", "EfficientNetV2M", "InceptionResNetV2", "ResNet152", "ResNet152V2",
    "EfficientNetB7", "ConvNeXtBase", "NASNetLarge", "EfficientNetV2L", "VGG16", "VGG19",
    "ConvNeXtLarge", "ConvNeXtXLarge",
]  # fmt: skip


def app_models() -> list[str]:
    import keras

    names = [n for n in dir(keras.applications) if n[0].isupper()]
    rank = {n: i for i, n in enumerate(APP_ORDER)}
    return [f"apps/{n}" for n in sorted(names, key=lambda n: (rank.get(n, len(rank)), n))]


def load(name: str):
    import keras

    group, stem = name.split("/", 1)
    if group == "apps":
        side = APP_INPUT.get(stem, 32)
        make = getattr(keras.applications, stem)
        try:  # logits: with random weights a softmax is nearly uniform and hides differences
            return make(weights=None, input_shape=(side, side, 3), classifier_activation=None)
        except TypeError:
            return make(weights=None, input_shape=(side, side, 3))
    if group == "layers":
        return as_float32(keras.saving.load_model(FIXTURES / "keras3" / "layers" / f"{stem}.keras"))
    folder = FIXTURES / group / "models"
    errors = []
    for suffix in (".keras", ".h5"):
        try:
            return as_float32(keras.saving.load_model(folder / f"{stem}{suffix}", compile=False))
        except Exception as exc:  # an older format Keras 3 does not read
            errors.append(f"{suffix}: {type(exc).__name__}")
    raise RuntimeError("not loadable by Keras 3 (" + ", ".join(errors) + ")")


def as_float32(model):
    """A float16/bfloat16/mixed-precision model as float32 (same layers, weights widened):
    TensorFlow's converter has no float16 builtins, so this is how such models reach TFLite."""
    import keras

    text = model.to_json()
    wide = re.sub(r'"(mixed_)?b?float16"', '"float32"', text)
    if wide == text:
        return model
    clone = keras.models.model_from_json(wide)
    clone.set_weights([w.astype("float32") for w in model.get_weights()])
    return clone


# --- one model ------------------------------------------------------------------------------


def seed(text: str) -> int:
    return zlib.crc32(text.encode())


def sample(model, rng):

    values = []
    for i in model.inputs:  # the declared batch (1 if None); unknown other dimensions: 8
        shape = (i.shape[0] or 1, *[d or 8 for d in i.shape[1:]])
        if "int" in str(i.dtype) or "bool" in str(i.dtype):  # token ids, masks
            values.append(rng.integers(0, 2, shape).astype(str(i.dtype)))
        else:
            values.append(rng.standard_normal(shape).astype("float32"))
    return values


def convert(model, variant: str, work: Path) -> bytes:
    """The variant's file; a recurrent layer's TensorList needs a static batch, so a model the
    converter refuses for that is converted again at batch 1 (except ``dynbatch``): its loop
    becomes a TFLite ``WHILE``."""
    try:
        return convert_as(model, variant, work, batch=None)
    except Exception as exc:
        if variant == "dynbatch" or "TensorList" not in str(exc):
            raise
        return convert_as(model, variant, work, batch=1)


def convert_as(model, variant: str, work: Path, batch: int | None) -> bytes:
    import numpy as np
    import tensorflow as tf

    if variant == "dynbatch" or batch is not None:
        saved = work / f"saved_{batch}"
        options = {}
        if batch is not None:  # Keras' own signature otherwise (batch None)
            spec = [tf.TensorSpec((batch, *i.shape[1:]), i.dtype, i.name) for i in model.inputs]
            options["input_signature"] = spec
        model.export(str(saved), format="tf_saved_model", verbose=False, **options)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        rng = np.random.default_rng(seed(model.name) + 2)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        names = [i.name for i in model.inputs]
        converter.representative_dataset = lambda: (
            dict(zip(names, sample(model, rng))) if len(names) > 1 else sample(model, rng)
            for _ in range(4)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def by_detail(details: list[dict], names: list[str], values: list) -> list:
    """``values`` (in ``names`` order) in the order of LiteRT's ``details``: by name (the
    converter prefixes the signature's), else by index."""
    ordered = []
    for i, detail in enumerate(details):
        hits = [k for k, n in enumerate(names) if n and f"_{n}:" in detail["name"] + ":"]
        hits = hits or [k for k, n in enumerate(names) if n and n in detail["name"]]
        ordered.append(values[hits[0] if len(hits) == 1 else i])
    return ordered


def litert(data: bytes, values: list, names: list[str]) -> tuple[list[dict], list]:
    """LiteRT's outputs for ``values`` (float samples in ``names`` order, quantized for integer
    inputs)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=data,
        num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    fed = []
    for detail, value in zip(details, by_detail(details, names, values)):
        value = value.reshape(detail["shape"])
        scale, zero_point = detail["quantization"]
        if scale and value.dtype.kind == "f" and detail["dtype"] != np.float32:  # quantize
            info = np.iinfo(detail["dtype"])
            value = np.clip(np.round(value / scale) + zero_point, info.min, info.max)
        value = value.astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], value)
        fed.append(value)
    interpreter.invoke()
    outputs = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    return [{"name": d["name"], "value": v} for d, v in zip(details, fed)], outputs


def failure_class(exc: Exception) -> tuple[str, str]:
    from bridge.errors import CompileError, UnsupportedModelError

    if isinstance(exc, UnsupportedModelError):
        reasons = sorted({f"{p.class_name}: {short(p.reason)}" for p in exc.problems})
        kind = "refused" if "before translation" in str(exc) else "translate"
        if any("translation failed" in p.reason for p in exc.problems):
            kind = "translate"
        return kind, "; ".join(reasons)
    if isinstance(exc, CompileError):
        return "build", short(str(exc))
    return "build", f"{type(exc).__name__}: {short(str(exc))}"


def converter_reason(exc: Exception) -> str:
    """The first MLIR error of a ConverterError (what it refused), else its last line."""
    for line in str(exc).splitlines():
        if "error:" in line:
            return f"{type(exc).__name__}: {short(line.rsplit('): ', 1)[-1])}"
    return f"{type(exc).__name__}: {short(str(exc))}"


def short(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip().splitlines()[-1] if text.strip() else "")
    text = re.sub(r"0x[0-9a-f]+|\d{3,}", "N", text)
    return text[:140]


def compare(got: list, expected: list) -> tuple[str, float]:
    import numpy as np

    steps, relative = 0.0, 0.0
    for g, e in zip(got, expected):
        if g.shape != e.shape:
            return "mismatch", float("inf")
        if e.dtype.kind in "iub":
            steps = max(steps, float(np.abs(g.astype(np.int64) - e.astype(np.int64)).max()))
        else:
            scale = max(1.0, float(np.abs(e).max()))
            relative = max(relative, float(np.abs(g.astype(np.float64) - e).max()) / scale)
    ok = steps == 0 and relative <= FLOAT_TOLERANCE
    return ("ok" if ok else "mismatch"), steps if steps else relative


def run_variant(model, name: str, variant: str, work: Path) -> dict:
    import numpy as np

    import bridge

    row = {"model": name, "variant": variant}
    started = time.time()
    try:
        data = convert(model, variant, work)
    except Exception as exc:
        return {**row, "status": "convert", "detail": converter_reason(exc)}
    path = work / f"{variant}.tflite"
    path.write_bytes(data)
    values = sample(model, np.random.default_rng(seed(name)))
    try:
        fed, expected = litert(data, values, [i.name for i in model.inputs])
    except Exception as exc:
        return {**row, "status": "litert", "detail": f"{type(exc).__name__}: {short(str(exc))}"}
    try:
        built = bridge.build(path, target="llvm")
    except Exception as exc:
        status, detail = failure_class(exc)
        return {**row, "status": status, "detail": detail}
    try:
        by_name = {f["name"]: f["value"] for f in fed}
        args = [by_name.get(i.name, f["value"]) for i, f in zip(built.inputs, fed)]
        got = built(*args)
        got = got if isinstance(got, list) else [got]
    except Exception as exc:
        return {**row, "status": "run", "detail": f"{type(exc).__name__}: {short(str(exc))}"}
    status, error = compare(got, expected)
    return {
        **row,
        "status": status,
        "error": error,
        "seconds": round(time.time() - started, 1),
        "bytes": len(data),
    }


def one(name: str, variants: list[str]) -> None:
    """Child process: every variant of one model, one JSON line each."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("BRIDGE_TUNING_DB", "off")
    try:
        model = load(name)
    except Exception as exc:
        for variant in variants:
            row = {"model": name, "variant": variant, "status": "load", "detail": short(str(exc))}
            print("ROW " + json.dumps(row), flush=True)
        return
    for variant in variants:
        with tempfile.TemporaryDirectory() as tmp:
            print("ROW " + json.dumps(run_variant(model, name, variant, Path(tmp))), flush=True)


# --- driver ---------------------------------------------------------------------------------


def sweep(names: list[str], variants: list[str], jsonl: Path, timeout: int) -> None:
    done = {(r["model"], r["variant"]) for r in read_rows(jsonl)}
    for name in names:
        todo = [v for v in variants if (name, v) not in done]
        if not todo:
            continue
        started = time.time()
        command = [sys.executable, __file__, "--one", name, "--variants", ",".join(todo)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            lines = [ln[4:] for ln in result.stdout.splitlines() if ln.startswith("ROW ")]
            rows = [json.loads(ln) for ln in lines]
            if not rows or len(rows) < len(todo):
                seen = {r["variant"] for r in rows}
                tail = short(result.stderr or f"exit {result.returncode}")
                rows += [
                    {"model": name, "variant": v, "status": "crash", "detail": tail}
                    for v in todo
                    if v not in seen
                ]
        except subprocess.TimeoutExpired:
            rows = [{"model": name, "variant": v, "status": "timeout"} for v in todo]
        with jsonl.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        summary = ", ".join(f"{r['variant']}={r['status']}" for r in rows)
        print(f"{name} ({time.time() - started:.0f} s): {summary}", flush=True)


def read_rows(jsonl: Path) -> list[dict]:
    if not jsonl.exists():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def table(rows: list[dict], variants: list[str]) -> str:
    cells: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["status"] in ("ok", "mismatch"):
            unit = "steps" if r["variant"] == "int8" else "rel"
            cell = f"{r['status']} {r['error']:.1e} {unit}".replace("0.0e+00", "0")
        else:
            cell = r["status"] + (f": {r['detail']}" if r.get("detail") else "")
        cells.setdefault(r["model"], {})[r["variant"]] = cell.replace("|", "/")
    lines = ["| model | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for model, by_variant in cells.items():
        lines.append(f"| {model} | " + " | ".join(by_variant.get(v, "-") for v in variants) + " |")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append("")
    lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["fixtures", "apps", "layers"], default="fixtures")
    parser.add_argument("--only", help="regex on model names (e.g. 'MobileNet|seq_')")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--jsonl", type=Path, help="results file (appended; resumes)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--table", type=Path, help="only print the table of this results file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    variants = args.variants.split(",")
    if args.one:
        one(args.one, variants)
        return
    if args.table:
        print(table(read_rows(args.table), variants))
        return
    names = {"fixtures": fixture_models, "apps": app_models, "layers": layer_models}[args.set]()
    if args.only:
        names = [n for n in names if re.search(args.only, n)]
    jsonl = args.jsonl or Path(tempfile.gettempdir()) / f"tflite_sweep_{args.set}.jsonl"
    sweep(names, variants, jsonl, args.timeout)
    print(table([r for r in read_rows(jsonl) if r["model"] in names], variants))


if __name__ == "__main__":
    main()

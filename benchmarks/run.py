"""bridge against LiteRT, ONNX Runtime and Keras 3/JAX: same models, same inputs, each timed alone.

    benchmarks/.venv/bin/python benchmarks/run.py                  # every model, batch 1 and 8
    benchmarks/.venv/bin/python benchmarks/run.py --quick          # smoke test: one small model
    benchmarks/.venv/bin/python benchmarks/run.py --models ResNet50 --batch 1 --time-budget 30

For each model and batch size:
  1. every runtime is built or loaded once in its own subprocess (a "probe"), which records the
     build/convert time, load time, first-call time and the process's peak RSS (VmHWM);
     bridge's probe compiles with bridge.build and exports the library;
  2. this process then loads every runtime (bridge from the probe's library) and checks each
     output against the Keras reference on the same input;
  3. each runtime is timed alone in a fresh subprocess (--timing alone, the default), in
     --passes passes (2 by default; runtimes in order, then in reverse, and so on; an equal
     share of the calls and time budget each) so drift hits all alike (on a machine whose
     speed changes from minute to minute, more passes spread each runtime over the run):
     runtimes sharing a process slow each other (one's thread pool still spinning, or pinned,
     takes a core from the next: measured 1.6-2x on LiteRT and ONNX Runtime next to TVM).
     --timing interleaved times them in this process in rounds instead: round r calls each
     runtime once, in an order rotated by r.
     A runtime stops after --rounds calls, or once its timed calls add up to --time-budget
     seconds (and it has at least --min-rounds), whichever comes first.
Writes results/latest.json, results/latest.md and results/latest.png (see README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    HERE,
    MODELS,
    QUICK_MODEL,
    RESULTS_DIR,
    WORK_DIR,
    bench_input,
    models_ready,
    paths,
    read_calibration,
    read_manifest,
)

RUNTIMES = {
    "bridge": "bridge untuned (llvm)",
    "bridge-tuned": "bridge tuned (llvm)",
    "litert-fp32": "LiteRT fp32 (XNNPACK)",
    "litert-int8": "LiteRT int8 (XNNPACK)",
    "bridge-int8-tflite": "bridge int8 (tflite)",
    "bridge-int8-quantize": "bridge int8 (quantize=)",
    "onnxruntime": "ONNX Runtime (CPU EP)",
    "keras-jax": "Keras 3 / JAX (jit)",
}
BASELINE = "litert-fp32"
INT8_REFERENCE = "litert-int8"  # the int8 rows are also compared with its output
INT8_RUNTIMES = ("litert-int8", "bridge-int8-tflite", "bridge-int8-quantize")
# what bridge builds for each bridge row: the source file and whether it quantizes itself
BRIDGE_LIBRARY_SUFFIX = {
    "bridge": "",
    "bridge-tuned": ".tuned",
    "bridge-int8-tflite": ".int8-tflite",
    "bridge-int8-quantize": ".int8-quantize",
}
TUNE_NA = "n/a (tuning not implemented yet)"
INT8_NA = "n/a (no LiteRT int8 file for this model)"
CALIBRATION_NA = "n/a (no calibration images: make_models.py writes models/<model>.calibration.npz)"
MB = 1024 * 1024
# max |y - keras| / max |keras| above which a row is flagged as wrong (int8 is approximate)
FP32_TOLERANCE = 1e-3
INT8_TOLERANCE = 0.1


def log(msg: str) -> None:
    print(msg, flush=True)


def set_thread_env(threads: int) -> None:
    """Before any runtime is imported: the thread counts that must come from the environment."""
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over fork and exec, so
    a probe would report the (bigger) parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_tune(value: str):
    """--tune is passed to bridge.build(tune=...): a number if it is one, else the string."""
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def bridge_accepts(function, name: str) -> bool:
    return name in inspect.signature(function).parameters


def bridge_library(model: str, batch: int, key: str) -> Path:
    return WORK_DIR / "bridge" / f"{model}.b{batch}{BRIDGE_LIBRARY_SUFFIX[key]}.so"


# ---------------------------------------------------------------------------------- runtimes
class Runtime:
    """One loaded runtime: ``call(x)`` runs it and returns the output as numpy."""

    def __init__(self, key: str, call, close=None):
        self.key, self.call, self._close = key, call, close

    def close(self) -> None:
        if self._close:
            self._close()


def load_litert(path: Path, batch: int, threads: int) -> Runtime:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    if int(inp["shape"][0]) != batch:
        raise RuntimeError(f"{path.name}: input batch {inp['shape'][0]}, expected {batch}")

    def call(x):
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return Runtime("litert", call)


def load_onnxruntime(path: Path, threads: int) -> Runtime:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ONNX Runtime's threads spin after each call by default, taking the cores from whichever
    # runtime is timed next in the round (measured: bridge's next call 5x slower).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return Runtime("onnxruntime", lambda x: session.run(None, {name: x})[0])


def load_keras_jax(path: Path) -> Runtime:
    """model.stateless_call under jax.jit: Keras 3's fastest inference path on JAX."""
    import jax
    import keras

    model = keras.saving.load_model(str(path), compile=False)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def forward(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    return Runtime("keras-jax", lambda x: np.asarray(forward(trainable, non_trainable, x)))


def load_bridge_library(library: Path, threads: int) -> Runtime:
    import bridge

    kwargs = {"num_threads": threads} if bridge_accepts(bridge.load, "num_threads") else {}
    model = bridge.load(library, **kwargs)
    return Runtime("bridge", model)


def build_bridge(key: str, model: str, batch: int, threads: int, tune) -> tuple[object, float]:
    """One bridge row's build: the .keras file (``bridge``, ``bridge-tuned``), the LiteRT int8
    file (``bridge-int8-tflite``), or the .keras file quantized by bridge on the int8 file's
    calibration images (``bridge-int8-quantize``); all for target llvm."""
    import bridge

    source = paths(model)["keras"]
    kwargs = {"target": "llvm", "batch_size": batch}
    if key == "bridge-int8-tflite":
        source = paths(model, batch)["tflite_int8"]  # batch_size = the file's batch
    elif key == "bridge-int8-quantize":
        calibration = read_calibration(model, batch)
        if calibration is None:
            raise FileNotFoundError(f"{paths(model)['calibration'].name}: no c{batch} images")
        kwargs |= {"quantize": "int8", "calibration": calibration}
    if bridge_accepts(bridge.build, "num_threads"):
        kwargs["num_threads"] = threads
    if tune is not None:
        kwargs["tune"] = tune  # kernels tuned before (bridge tune, any model) are reused
    else:
        os.environ["BRIDGE_TUNING_DB"] = "off"  # untuned: bridge's default schedules only
    started = time.perf_counter()
    built = bridge.build(source, **kwargs)
    return built, time.perf_counter() - started


def load_runtime(key: str, model: str, batch: int, threads: int) -> Runtime:
    files = paths(model, batch)
    if key in BRIDGE_LIBRARY_SUFFIX:
        return load_bridge_library(bridge_library(model, batch, key), threads)
    if key == "litert-fp32":
        return load_litert(files["tflite_fp32"], batch, threads)
    if key == "litert-int8":
        return load_litert(files["tflite_int8"], batch, threads)
    if key == "onnxruntime":
        return load_onnxruntime(files["onnx"], threads)
    if key == "keras-jax":
        return load_keras_jax(files["keras"])
    raise ValueError(key)


# ---------------------------------------------------------------------------------- probe
def probe(args) -> int:
    """Subprocess: build/load one runtime from scratch, call it once, report time and memory."""
    set_thread_env(args.threads)
    key, model, batch = args.probe, args.model, args.batch
    result = {"runtime": key, "model": model, "batch": batch}
    try:
        started = time.perf_counter()
        if key.startswith("bridge"):
            import bridge  # noqa: F401  (the import is part of the baseline)
        elif key.startswith("litert"):
            import ai_edge_litert.interpreter  # noqa: F401
        elif key == "onnxruntime":
            import onnxruntime  # noqa: F401
        elif key == "keras-jax":
            import jax  # noqa: F401
            import keras  # noqa: F401
        result["import_s"] = time.perf_counter() - started
        result["rss_after_import_mb"] = rss_mb()
        x = bench_input(model, batch)
        if key.startswith("bridge"):
            tune = parse_tune(args.tune) if key == "bridge-tuned" else None
            built, result["build_s"] = build_bridge(key, model, batch, args.threads, tune)
            quantization = built.metadata.get("quantization")
            if quantization:  # bridge's own check against the float model on the calibration
                result["quantization"] = {
                    k: quantization.get(k)
                    for k in ("calibration_samples", "integer_layers", "agreement")
                } | {"float_layers": [f["layer"] for f in quantization.get("float_layers", [])]}
            library = bridge_library(model, batch, key)
            started = time.perf_counter()
            built.export(library)
            result["export_s"] = time.perf_counter() - started
            result["library"] = str(library)
            result["library_bytes"] = library.stat().st_size
            del built
            gc.collect()
        started = time.perf_counter()
        runtime = load_runtime(key, model, batch, args.threads)
        result["load_s"] = time.perf_counter() - started
        started = time.perf_counter()
        runtime.call(x)
        result["first_call_s"] = time.perf_counter() - started
        result["ok"] = True
    except Exception as exc:  # reported in the row, never fatal to the whole run
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    result["peak_rss_mb"] = peak_rss_mb()
    Path(args.probe_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def run_probe(key: str, model: str, batch: int, args, timeout: float) -> dict:
    out = WORK_DIR / "probes" / f"{model}.b{batch}.{key}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--probe",
        key,
        "--model",
        model,
        "--batch",
        str(batch),
        "--threads",
        str(args.threads),
        "--probe-out",
        str(out),
        "--tune",
        args.tune,
    ]
    started = time.perf_counter()
    try:
        failure = run_logged(command, out, timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"build/load timed out after {timeout:.0f}s"}
    if failure:
        return {"ok": False, "error": "probe crashed: " + failure}
    result = json.loads(out.read_text())
    result["probe_wall_s"] = time.perf_counter() - started
    return result


def run_logged(command: list[str], out: Path, timeout: float | None = None) -> str | None:
    """Run a subprocess of this script with its output in ``out``'s ``.log``; None once it
    wrote ``out``, else the log's last lines."""
    log_path = out.with_suffix(".log")
    with open(log_path, "w") as log_file:
        subprocess.run(
            command, stdout=log_file, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if out.is_file():
        return None
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    return " | ".join(tail)[-300:]


# ---------------------------------------------------------------------------------- timing
TIMING_PASSES = 2  # default --passes: each runtime's subprocess runs, every other in reverse


def time_alone(args) -> int:
    """Subprocess: load one runtime, warm it up and time it with no other runtime loaded."""
    set_thread_env(args.threads)
    key, model, batch = args.time_alone, args.model, int(args.batch)
    x = bench_input(model, batch)
    runtime = load_runtime(key, model, batch, args.threads)
    runtime.call(x)  # the first warmup call, as the output check is in interleaved timing
    samples = measure({key: runtime}, x, args)[key]
    Path(args.probe_out).write_text(json.dumps(samples) + "\n")
    return 0


def run_alone(key: str, model: str, batch: int, args, passes: int) -> list[float]:
    """One pass of :func:`time_alone` for ``key``: its share of the rounds and time budget."""
    out = WORK_DIR / "probes" / f"{model}.b{batch}.{key}.times.json"
    out.unlink(missing_ok=True)
    limits = {
        "--rounds": max(1, -(-args.rounds // passes)),
        "--min-rounds": max(1, -(-args.min_rounds // passes)),
        "--time-budget": args.time_budget / passes,
        "--max-time": args.max_time / passes,
        "--warmup": args.warmup,
        "--pause": args.pause,
        "--threads": args.threads,
    }
    command = [sys.executable, str(Path(__file__).resolve()), "--time-alone", key]
    command += ["--model", model, "--batch", str(batch), "--probe-out", str(out)]
    command += [str(v) for item in limits.items() for v in item]
    failure = run_logged(command, out)
    if failure:
        raise RuntimeError("timing subprocess failed: " + failure)
    return json.loads(out.read_text())


def measure_alone(
    keys: list[str], model: str, batch: int, args
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Every runtime timed in its own subprocesses, ``args.passes`` passes (every other one in
    reverse order); returns the times and, per runtime whose subprocess failed (it then leaves
    the passes), why. One runtime's failure does not end the others' timing."""
    times: dict[str, list[float]] = {k: [] for k in keys}
    failures: dict[str, str] = {}
    passes = getattr(args, "passes", TIMING_PASSES)
    for index in range(passes):
        for key in keys if index % 2 == 0 else keys[::-1]:
            if key in failures:
                continue
            try:
                times[key] += run_alone(key, model, batch, args, passes)
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                failures[key] = str(exc)
                log(f"    {key}: {exc}")
    return {k: v for k, v in times.items() if k not in failures}, failures


def measure(runtimes: dict[str, Runtime], x: np.ndarray, args) -> dict[str, list[float]]:
    """Warm up, then interleaved rounds with a rotating order; per-runtime stop rules.

    The output check before this already called every runtime once, so it counts as the first
    warmup call. A runtime leaves the rotation after ``rounds`` calls, or once its calls add up
    to ``time_budget`` (and it has ``min_rounds``), or to ``max_time`` (whatever its count)."""
    for key, runtime in runtimes.items():
        spent, count = 0.0, 1
        while count < args.warmup and spent < args.time_budget / 4:
            started = time.perf_counter()
            runtime.call(x)
            spent += time.perf_counter() - started
            count += 1
        log(f"    warmup {key}: {count} call(s) including the output check, {spent:.2f}s")
    times: dict[str, list[float]] = {k: [] for k in runtimes}
    active = list(runtimes)
    round_index = 0
    while active:
        shift = round_index % len(active)
        for key in active[shift:] + active[:shift]:
            if args.pause > 0:
                time.sleep(args.pause)  # lets other runtimes' spinning worker threads go idle
            started = time.perf_counter()
            runtimes[key].call(x)
            times[key].append(time.perf_counter() - started)
        round_index += 1
        active = [
            k
            for k in active
            if len(times[k]) < args.rounds
            and not (sum(times[k]) >= args.time_budget and len(times[k]) >= args.min_rounds)
            and sum(times[k]) < args.max_time
        ]
    return times


def stats(samples: list[float], batch: int) -> dict:
    ms = np.asarray(samples) * 1000.0
    median = float(np.median(ms))
    return {
        "n": len(samples),
        "median_ms": median,
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "p10_ms": float(np.percentile(ms, 10)),
        "p25_ms": float(np.percentile(ms, 25)),
        "p75_ms": float(np.percentile(ms, 75)),
        "p90_ms": float(np.percentile(ms, 90)),
        "stdev_ms": float(statistics.pstdev(ms)) if len(ms) > 1 else 0.0,
        "images_per_s": batch / (median / 1000.0),
    }


def error_vs(y: np.ndarray, ref: np.ndarray) -> dict:
    diff = float(np.max(np.abs(np.asarray(y, np.float64) - ref)))
    return {"max_abs_err": diff, "rel_err": diff / max(float(np.max(np.abs(ref))), 1e-30)}


def int8_reference(model: str, batch: int, keys: list[str], x, threads: int):
    """LiteRT int8's output on ``x`` (float64), which the int8 rows are compared with; None
    when no int8 row is measured or the model has no int8 file."""
    if not MODELS[model].int8 or not any(k in INT8_RUNTIMES for k in keys):
        return None
    try:
        runtime = load_litert(paths(model, batch)["tflite_int8"], batch, threads)
        return np.asarray(runtime.call(x), np.float64)
    except Exception as exc:  # the rows still get their error against Keras
        log(f"  LiteRT int8 reference output failed: {type(exc).__name__}: {exc}")
        return None


# ---------------------------------------------------------------------------------- one group
def convert_seconds(manifest: dict, key: str, batch: int) -> float | None:
    entry = (manifest or {}).get("batches", {}).get(str(batch), {})
    field = {"litert-fp32": "tflite_fp32_seconds", "litert-int8": "tflite_int8_seconds"}.get(
        key, "onnx_seconds" if key == "onnxruntime" else None
    )
    return entry.get(field) if field else None


def bench_group(model: str, batch: int, keys: list[str], args, tune_supported: bool) -> list:
    log(f"== {model}, batch {batch}")
    manifest = read_manifest(model)
    reference = np.load(paths(model)["reference"])
    x, ref = reference[f"x{batch}"], reference[f"y{batch}"].astype(np.float64)
    assert np.array_equal(x, bench_input(model, batch)), "reference inputs out of date"
    weight_bytes = manifest.get("weight_bytes") if manifest else None
    rows = {}
    for key in keys:
        row = {"model": model, "batch": batch, "runtime": key, "label": RUNTIMES[key]}
        rows[key] = row
        if key == "bridge-tuned" and not tune_supported:
            row.update(status=TUNE_NA)
            log(f"  {key}: {TUNE_NA}")
            continue
        if key in INT8_RUNTIMES and not MODELS[model].int8:
            row.update(status=INT8_NA)
            log(f"  {key}: {INT8_NA}")
            continue
        if key == "bridge-int8-quantize" and read_calibration(model, batch) is None:
            row.update(status=CALIBRATION_NA)
            log(f"  {key}: {CALIBRATION_NA}")
            continue
        if key.startswith("bridge") and args.reuse_bridge:
            library = bridge_library(model, batch, key)
            old = WORK_DIR / "probes" / f"{model}.b{batch}.{key}.json"
            if library.is_file() and old.is_file() and json.loads(old.read_text()).get("ok"):
                row["probe"] = json.loads(old.read_text()) | {"reused": True}
                log(f"  {key}: reusing {library.name}")
                continue
        timeout = args.build_timeout
        if key == "bridge-tuned":
            from bridge.tuning import Budget

            budget = Budget.parse(parse_tune(args.tune))
            timeout += budget.seconds or 2.0 * budget.trials  # a trial takes ~0.5-2 s here
        log(f"  probe {key}: building/loading in a subprocess")
        result = run_probe(key, model, batch, args, timeout)
        row["probe"] = result
        if not result.get("ok"):
            row["status"] = "error: " + result.get("error", "?")
            log(f"    FAILED: {result.get('error')}")
        else:
            built = f"build {result['build_s']:.1f}s, " if "build_s" in result else ""
            log(
                f"    {built}load {result['load_s']:.2f}s, first call "
                f"{result['first_call_s']:.2f}s, peak RSS {result['peak_rss_mb']:.0f} MB"
            )
    int8_ref = int8_reference(model, batch, keys, x, args.threads)
    loaded: dict[str, Runtime] = {}
    for key, row in rows.items():
        if "status" in row:
            continue
        try:
            runtime = load_runtime(key, model, batch, args.threads)
            y = runtime.call(x)
            row.update(error_vs(y, ref))
            if key in INT8_RUNTIMES and int8_ref is not None:
                vs = error_vs(y, int8_ref)
                row["max_abs_err_vs_litert_int8"] = vs["max_abs_err"]
                row["rel_err_vs_litert_int8"] = vs["rel_err"]
            limit = INT8_TOLERANCE if key in INT8_RUNTIMES else FP32_TOLERANCE
            if row["rel_err"] > limit:
                row["wrong"] = True
                log(f"  {key}: WRONG OUTPUT, max |y - keras| / max |keras| = {row['rel_err']:.3g}")
            if not np.isfinite(y).all():
                row["status"] = "error: non-finite outputs"
                continue
            loaded[key] = runtime
        except Exception as exc:
            row["status"] = f"error: {type(exc).__name__}: {str(exc).strip()[:300]}"
            log(f"  {key}: {row['status']}")
    if loaded:
        log(
            f"  timing {len(loaded)} runtimes {args.timing}: up to {args.rounds} calls, "
            f"{args.time_budget:g}s budget each"
        )
        failures: dict[str, str] = {}
        if args.timing == "alone":
            for runtime in loaded.values():
                runtime.close()
            times, failures = measure_alone(list(loaded), model, batch, args)
        else:
            times = measure(loaded, x, args)
        for key, why in failures.items():
            rows[key]["status"] = f"error: {why[:300]}"
        for key, samples in times.items():
            rows[key].update(
                stats(samples, batch),
                status="ok",
                samples_ms=[round(s * 1000.0, 4) for s in samples],
            )
    base = rows.get(BASELINE, {}).get("median_ms")
    for key, row in rows.items():
        probe_result = row.get("probe", {})
        if row.get("status") == "ok" and base:
            row["ratio_vs_litert_fp32"] = row["median_ms"] / base
        row["build_s"] = probe_result.get("build_s", convert_seconds(manifest, key, batch))
        row["load_s"] = probe_result.get("load_s")
        row["first_call_s"] = probe_result.get("first_call_s")
        row["peak_rss_mb"] = probe_result.get("peak_rss_mb")
        row["rss_after_import_mb"] = probe_result.get("rss_after_import_mb")
        if key.startswith("bridge") and weight_bytes and row["peak_rss_mb"]:
            row["rss_goal_mb"] = 2.5 * weight_bytes / MB + 500
        if row.get("status") == "ok":
            log(
                f"  {key:13s} median {row['median_ms']:9.2f} ms  "
                f"p10-p90 {row['p10_ms']:.2f}-{row['p90_ms']:.2f}  n={row['n']:3d}  "
                f"x{row.get('ratio_vs_litert_fp32', float('nan')):.2f}  "
                f"err {row['max_abs_err']:.2e}"
            )
    for runtime in loaded.values():
        runtime.close()
    loaded.clear()
    gc.collect()
    return list(rows.values())


# ---------------------------------------------------------------------------------- reports
def environment(args) -> dict:
    import importlib.metadata as md

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import bridge

    bridge_path = Path(bridge.__file__).resolve().parent
    git = {}
    with contextlib.suppress(Exception):  # the checkout bridge is imported from

        def git_out(*command: str) -> str:
            return subprocess.run(
                ["git", "-C", str(bridge_path.parent), *command],
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        git["commit"] = git_out("rev-parse", "--short", "HEAD").strip()
        git["bridge_dirty"] = bool(git_out("status", "--porcelain", "--", "bridge").strip())

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "python": platform.python_version(),
        "threads": args.threads,
        "timing": args.timing,
        "passes": args.passes if args.timing == "alone" else None,
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "bridge_path": str(bridge_path),
        "git": git,
        "versions": {
            d: version(d)
            for d in (
                "bridge",
                "apache-tvm",
                "ai-edge-litert",
                "onnxruntime",
                "keras",
                "jax",
                "jaxlib",
                "tensorflow-cpu",
                "tf2onnx",
                "onnx",
                "numpy",
            )
        },
        "settings": {
            "rounds": args.rounds,
            "min_rounds": args.min_rounds,
            "max_time_s": args.max_time,
            "time_budget_s": args.time_budget,
            "warmup": args.warmup,
            "pause_s": args.pause,
            "tune": args.tune,
        },
    }


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def render(results: dict, out: Path) -> str:
    """Write STEM.json, STEM.md and STEM.png; returns the markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    out.with_suffix(".md").write_text(table)
    chart(results, out.with_suffix(".png"))
    return table


TIMING_WORDS = {
    "alone": "each runtime timed alone in its own process",
    "interleaved": "runtimes timed interleaved in one process",
}


def markdown(results: dict) -> str:
    env = results["environment"]
    passes = f", in {env['passes']} passes" if env.get("passes") else ""
    rows = results["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    keys = [k for k in RUNTIMES if any(r["runtime"] == k for r in rows)]
    out = [
        f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores, "
        f"{env['threads']} threads per runtime), bridge {env['git'].get('commit', '?')}"
        f"{' (with uncommitted changes)' if env['git'].get('bridge_dirty') else ''}, "
        f"TVM {env['versions']['apache-tvm']}, LiteRT {env['versions']['ai-edge-litert']}, "
        f"ONNX Runtime {env['versions']['onnxruntime']}, Keras {env['versions']['keras']} / "
        f"JAX {env['versions']['jax']}. Load average (1/5/15 min) at start "
        f"{'/'.join(map(str, env.get('load_average_start', [])))}, at end "
        f"{'/'.join(map(str, env.get('load_average_end', [])))}; this run took "
        f"{env.get('total_seconds', 0) / 60:.0f} min. Median latency per call (ratio to LiteRT "
        f"fp32); {TIMING_WORDS.get(env.get('timing'), 'runtimes timed interleaved')}"
        f"{passes}.",
        "",
    ]
    by = {(r["model"], r["batch"], r["runtime"]): r for r in rows}

    def cell(r: dict | None) -> str:
        if r is None:
            return ""
        if r.get("status") != "ok":
            return "n/a" if r.get("status", "").startswith("n/a") else "failed"
        ms = r["median_ms"]
        text = f"{ms:,.1f} ms" if ms >= 10 else f"{ms:.2f} ms"
        ratio = r.get("ratio_vs_litert_fp32")
        text += f" ({ratio:.2g}x)" if ratio is not None and r["runtime"] != BASELINE else ""
        return text + (" **wrong output**" if r.get("wrong") else "")

    for batch in batches:
        out.append(f"**Batch {batch}**")
        out.append("")
        out.append("| model | " + " | ".join(RUNTIMES[k] for k in keys) + " |")
        out.append("|---|" + "---|" * len(keys))
        for model in models:
            if not any((model, batch, k) in by for k in keys):
                continue
            out.append(
                f"| {model} | " + " | ".join(cell(by.get((model, batch, k))) for k in keys) + " |"
            )
        out.append("")
    goals = [
        f"{r['model']} b{r['batch']} {r['peak_rss_mb']:,.0f} MB (goal {r['rss_goal_mb']:,.0f})"
        for r in rows
        if r["runtime"] == "bridge" and r.get("rss_goal_mb") and r.get("peak_rss_mb")
    ]
    if goals:
        out += [
            "bridge build peak RSS vs the goal 2.5 x weight bytes + 500 MB: "
            + "; ".join(goals)
            + ".",
            "",
        ]
    out += [
        "Details: spread is p10-p90 of the timed calls; build is bridge.build (compile) for "
        "bridge, the converter run for LiteRT/ONNX (make_models.py) and none for Keras; load "
        "includes the first call (JIT compilation for JAX); peak RSS is the probe subprocess's "
        "VmHWM while building/loading and calling once (import baseline in brackets); error "
        "is max |output - Keras| on the same input.",
        "",
        "| model | batch | runtime | median ms | p10-p90 ms | n | x LiteRT fp32 | img/s | "
        "build s | load s | peak RSS MB | max abs err | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = r.get("status") == "ok"
        rss = r.get("peak_rss_mb")
        rss_text = "-" if rss is None else f"{rss:,.0f} ({r.get('rss_after_import_mb') or 0:,.0f})"
        out.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    str(r["batch"]),
                    r["label"],
                    fmt(r.get("median_ms") if ok else None, ",.2f"),
                    f"{r['p10_ms']:,.2f}-{r['p90_ms']:,.2f}" if ok else "-",
                    str(r.get("n", "-")),
                    fmt(r.get("ratio_vs_litert_fp32"), ".2f"),
                    fmt(r.get("images_per_s") if ok else None, ",.1f"),
                    fmt(r.get("build_s"), ".1f"),
                    fmt(r.get("load_s"), ".2f"),
                    rss_text,
                    fmt(r.get("max_abs_err"), ".1e"),
                    r.get("status", "?").replace("|", "/")
                    + (f", WRONG (rel err {r['rel_err']:.2g})" if r.get("wrong") else ""),
                ]
            )
            + " |"
        )
    out += int8_table(rows)
    return "\n".join(out) + "\n"


def int8_table(rows: list[dict]) -> list[str]:
    """Markdown lines: each int8 row's output error against Keras fp32 and LiteRT int8."""
    int8 = [r for r in rows if r["runtime"] in INT8_RUNTIMES and "max_abs_err" in r]
    if not int8:
        return []
    out = [
        "",
        "int8 rows: max |output - reference| on the benchmark input, against Keras fp32 (the "
        "float model) and against LiteRT int8 (same int8 file for `bridge int8 (tflite)`; "
        "same 32 calibration images for `bridge int8 (quantize=)`); rel = max abs / max "
        "|reference|. Layers: integer / float layers of bridge's own quantization.",
        "",
        "| model | batch | runtime | vs Keras fp32 | rel | vs LiteRT int8 | rel | layers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in int8:
        quantization = (r.get("probe") or {}).get("quantization") or {}
        layers = (
            f"{quantization.get('integer_layers')} / {len(quantization.get('float_layers', []))}"
            if quantization
            else "-"
        )
        cells = [
            r["model"],
            str(r["batch"]),
            r["label"],
            fmt(r.get("max_abs_err"), ".2e"),
            fmt(r.get("rel_err"), ".2e"),
            fmt(r.get("max_abs_err_vs_litert_int8"), ".2e"),
            fmt(r.get("rel_err_vs_litert_int8"), ".2e"),
            layers,
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def chart(results: dict, path: Path) -> None:
    """Grouped bars of median latency / LiteRT fp32, log scale, one panel per batch size.
    Hatched bars: outputs that disagree with Keras."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r.get("ratio_vs_litert_fp32")]
    if not rows:
        return
    batches = sorted({r["batch"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = [k for k in RUNTIMES if any(r["runtime"] == k for r in rows)]
    by = {(r["model"], r["batch"], r["runtime"]): r for r in rows}
    ratios = [r["ratio_vs_litert_fp32"] for r in rows]
    low, high = min(min(ratios), 1.0) / 2, max(max(ratios), 1.0) * 2.5
    fig, axes = plt.subplots(
        1,
        len(batches),
        figsize=(max(9.0, 1.9 * len(models) * len(batches) + 1.0), 5.6),
        squeeze=False,
    )
    width = 0.8 / len(keys)
    colors = plt.get_cmap("tab10")
    for ax, batch in zip(axes[0], batches):
        for i, key in enumerate(keys):
            xs, ys, wrong = [], [], []
            for m, model in enumerate(models):
                r = by.get((model, batch, key))
                if r and r.get("ratio_vs_litert_fp32"):
                    xs.append(m + (i - (len(keys) - 1) / 2) * width)
                    ys.append(r["ratio_vs_litert_fp32"])
                    wrong.append(bool(r.get("wrong")))
            bars = ax.bar(
                xs, ys, width, bottom=low, label=RUNTIMES[key], color=colors(i), edgecolor="white"
            )
            for bar, y, bad in zip(bars, ys, wrong):
                bar.set_height(y - low)
                if bad:
                    bar.set_hatch("///")
                ax.annotate(
                    f"{y:.2g}" + ("!" if bad else ""),
                    (bar.get_x() + bar.get_width() / 2, y),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 1),
                    textcoords="offset points",
                )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylim(low, high)
        ax.set_xticks(range(len(models)), models, fontsize=9)
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("median latency / LiteRT fp32 (log scale; lower is faster)")
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(keys), 3), fontsize=8)
    env = results["environment"]
    fig.suptitle(
        f"bridge vs peers: {env['cpu']}, {env['threads']} threads per runtime\n"
        "hatched bars and '!': output disagrees with Keras",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(table: str) -> bool:
    readme = HERE / "README.md"
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    if not readme.is_file():
        return False
    text = readme.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + begin + "\n" + table + end + tail)
    return True


# ---------------------------------------------------------------------------------- main
def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated keys")
    parser.add_argument("--rounds", type=int, default=50, help="most timed calls per runtime")
    parser.add_argument("--min-rounds", type=int, default=5, help="fewest timed calls")
    parser.add_argument(
        "--time-budget", type=float, default=20.0, help="seconds of timed calls per runtime"
    )
    parser.add_argument(
        "--max-time",
        type=float,
        default=None,
        help="hard cap on a runtime's timed seconds, even below --min-rounds "
        "(default 3 x --time-budget)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per runtime")
    parser.add_argument("--threads", type=int, default=2, help="threads for every runtime")
    parser.add_argument(
        "--pause", type=float, default=0.01, help="idle seconds before each timed call"
    )
    parser.add_argument(
        "--timing",
        choices=("alone", "interleaved"),
        default="alone",
        help="each runtime in its own subprocess (default), or all in rounds in this one",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=TIMING_PASSES,
        help="--timing alone: subprocesses per runtime, each with an equal share of the calls "
        "(more spread each runtime over a noisy machine's minutes)",
    )
    parser.add_argument(
        "--tune", default="20m", help="bridge.build(tune=...) for the tuned row: a time or trials"
    )
    parser.add_argument("--build-timeout", type=float, default=1800.0, help="per probe, seconds")
    parser.add_argument(
        "--reuse-bridge", action="store_true", help="reuse bridge libraries of an earlier run"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK_MODEL}, batch 1, 10 rounds, 3s budget",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "latest"), help="results path stem")
    parser.add_argument(
        "--no-readme", action="store_true", help="don't paste the table into README.md"
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="only rewrite the .md/.png (and README table) from a results JSON, measuring nothing",
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--probe-out", help=argparse.SUPPRESS)
    parser.add_argument("--time-alone", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batch = QUICK_MODEL, "1"
        args.rounds, args.time_budget, args.min_rounds, args.warmup = 10, 3.0, 3, 2
    if args.max_time is None:
        args.max_time = 3 * args.time_budget
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        args.batch = int(args.batch)
        return probe(args)
    if args.time_alone:
        return time_alone(args)
    if args.render:
        table = render(json.loads(Path(args.render).read_text()), Path(args.out))
        log(table)
        if not args.no_readme and update_readme(table):
            log("pasted the table into benchmarks/README.md")
        return 0
    set_thread_env(args.threads)
    started = time.perf_counter()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    keys = [k.strip() for k in args.runtimes.split(",") if k.strip()]
    unknown = [n for n in names if n not in MODELS] + [k for k in keys if k not in RUNTIMES]
    if unknown:
        log(
            f"unknown model(s)/runtime(s) {unknown}; models {list(MODELS)}, "
            f"runtimes {list(RUNTIMES)}"
        )
        return 2
    batches = sorted({int(b) for b in args.batch.split(",")})

    missing = [n for n in names if not models_ready(n, batches)]
    if missing:
        log(f"== generating model files for {missing} (make_models.py)")
        subprocess.run(
            [
                sys.executable,
                str(HERE / "make_models.py"),
                "--models",
                ",".join(missing),
                "--batch",
                ",".join(map(str, batches)),
            ],
            check=True,
        )
    import bridge

    tune_supported = bridge_accepts(bridge.build, "tune")
    results = {"environment": environment(args), "rows": []}
    log(
        f"bridge from {results['environment']['bridge_path']}; tuning "
        f"{'supported' if tune_supported else 'not implemented'}"
    )
    out = Path(args.out)
    for model in names:
        for batch in batches:
            results["rows"] += bench_group(model, batch, keys, args, tune_supported)
            render(results, out)  # partial results survive an interrupted run
    results["environment"]["total_seconds"] = round(time.perf_counter() - started, 1)
    results["environment"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]

    table = render(results, out)
    log("")
    log(table)
    log(f"wrote {out.with_suffix('.json')}, .md, .png in {time.perf_counter() - started:.0f}s")
    if not args.quick and not args.no_readme and update_readme(table):
        log("pasted the table into benchmarks/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

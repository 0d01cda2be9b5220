"""Peak memory and size: bridge (bound weights, separate params, the bundle's runner) beside
LiteRT's interpreter and ONNX Runtime, every measurement in a fresh process.

    benchmarks/.venv/bin/python benchmarks/memory.py                 # MobileNetV2, ResNet50; 1, 8
    benchmarks/.venv/bin/python benchmarks/memory.py --models MobileNetV2 --batch 1

The models and the peers' files are make_models.py's (run it first). For each model and batch:

  1. bridge builds two bundles: weights kept out of the library (the default, ``model.params``)
     and bound into it (``separate_params=False``); at batch 1 also libraries with
     ``optimize_for="speed"`` and ``"size"`` (sizes and latency only);
  2. each runtime loads the model and runs it three times in a process of its own. Python
     runtimes (``bridge.load``, LiteRT's Interpreter, ONNX Runtime's InferenceSession) report
     their peak RSS (VmHWM) less the RSS after importing the runtime (the interpreter and the
     runtime's own libraries are not the model's); the bundle's ``run`` reports its whole peak
     (``/usr/bin/time -v``: no Python, the TVM runtime libraries included);
  3. one process loads every bridge variant and times them interleaved (round r calls each
     once, in an order rotated by r): latencies are only compared within that run.

Writes results/memory.json and results/memory.md (the tables README.md carries).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS_DIR, WORK_DIR, bench_input, paths

MB = 1024 * 1024
OUT = WORK_DIR / "memory"
VARIANTS = ("separate", "bound", "speed", "size")  # the last two at batch 1 only
CALLS = 3


def log(msg: str) -> None:
    print(msg, flush=True)


def peak_mb() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would carry the forking parent's over)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


# ------------------------------------------------------------------------------------ probes
def probe(kind: str, path: str, model: str, batch: int, threads: int) -> dict:
    """In a fresh process: import the runtime, load ``path``, run it CALLS times."""
    x = bench_input(model, batch)
    if kind == "bridge":
        import tvm.runtime.vm  # noqa: F401  (the runtime, not the model)

        import bridge

        baseline = rss_mb()
        model_ = bridge.load(path, num_threads=threads)
        run = model_
    elif kind == "litert":
        from ai_edge_litert.interpreter import Interpreter

        baseline = rss_mb()
        interpreter = Interpreter(model_path=path, num_threads=threads)
        interpreter.allocate_tensors()
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

        def run(x):
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])
    else:
        import onnxruntime as ort

        baseline = rss_mb()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x):
            return session.run(None, {name: x})[0]

    for _ in range(CALLS):
        run(x)
    return {"baseline_mb": baseline, "peak_mb": peak_mb(), "model_mb": peak_mb() - baseline}


def run_probe(kind: str, path: Path, model: str, batch: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--probe", kind, str(path), model, str(batch)]
    command += ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(threads))
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1][:200]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def runner_peak(bundle: Path, model: str, batch: int, threads: int) -> dict:
    """The bundle's ``run`` under ``/usr/bin/time -v``: its maximum resident set size."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "in0.npy", bench_input(model, batch))
        command = ["/usr/bin/time", "-v", str(bundle / "run"), "in0.npy", "--out", "out"]
        command += ["--bench", str(CALLS), "--threads", str(threads)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    if result.returncode != 0 or match is None:
        return {"error": result.stderr.strip().splitlines()[-1][:200]}
    return {"peak_mb": int(match.group(1)) / 1024}


def _env(threads: int) -> dict:
    return os.environ | {"TVM_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3"}


# ------------------------------------------------------------------------------------ builds
def build(model: str, batch: int, variant: str) -> Path:
    """A bundle (separate, bound) or a library (speed, size) in work/memory; cached."""
    import bridge

    folder = OUT / f"{model}.b{batch}.{variant}"
    library = folder / "model.so"
    if library.is_file():
        return library
    options = {
        "separate": {},
        "bound": {"separate_params": False},
        "speed": {"optimize_for": "speed"},
        "size": {"optimize_for": "size"},
    }[variant]
    started = time.perf_counter()
    built = bridge.build(paths(model)["keras"], batch_size=batch, **options)
    if variant in ("separate", "bound"):
        built.export(folder, bundle=True)
    else:
        built.export(library)
    log(f"  built {folder.name} in {time.perf_counter() - started:.0f} s")
    return library


def sizes(library: Path) -> dict:
    meta = json.loads(library.with_name("model.meta.json").read_text())
    params = library.with_suffix(".params")
    params_bytes = params.stat().st_size if meta.get("params") and params.is_file() else 0
    return {
        "library_bytes": library.stat().st_size,
        "params_file_bytes": params_bytes,
        "weights_bytes": meta["weights_bytes"],
        "arena_bytes": meta.get("arena_bytes"),
    }


def latencies(libraries: dict[str, Path], model: str, batch: int, threads: int) -> dict:
    """Median ms per call of each library, timed interleaved in one fresh process."""
    command = [sys.executable, __file__, "--time", model, str(batch)]
    command += [f"{k}={v}" for k, v in libraries.items()] + ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(threads))
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1][:200]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def time_interleaved(specs: list[str], model: str, batch: int, threads: int, rounds: int) -> dict:
    import bridge

    loaded = {}
    for spec in specs:
        key, path = spec.split("=", 1)
        loaded[key] = bridge.load(path, num_threads=threads)
    x = bench_input(model, batch)
    outputs = {k: m(x) for k, m in loaded.items()}  # warm-up, and the outputs agree
    first = next(iter(outputs.values()))
    spread = {k: float(np.max(np.abs(v - first))) for k, v in outputs.items()}
    samples: dict[str, list[float]] = {k: [] for k in loaded}
    keys = list(loaded)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            started = time.perf_counter()
            loaded[key](x)
            samples[key].append((time.perf_counter() - started) * 1000)
    return {
        "median_ms": {k: statistics.median(v) for k, v in samples.items()},
        "max_abs_diff": spread,
    }


# ----------------------------------------------------------------------------------- report
def measure(model: str, batch: int, threads: int, rounds: int) -> dict:
    log(f"{model} batch {batch}")
    variants = VARIANTS if batch == 1 else VARIANTS[:2]
    libraries = {v: build(model, batch, v) for v in variants}
    row: dict = {"model": model, "batch": batch, "sizes": {}, "peak": {}}
    for variant, library in libraries.items():
        row["sizes"][variant] = sizes(library)
    for variant in ("separate", "bound"):
        library = libraries[variant]
        row["peak"][f"bridge.load {variant}"] = run_probe("bridge", library, model, batch, threads)
        row["peak"][f"runner {variant}"] = runner_peak(library.parent, model, batch, threads)
    files = paths(model, batch)
    row["peak"]["litert"] = run_probe("litert", files["tflite_fp32"], model, batch, threads)
    row["peak"]["onnxruntime"] = run_probe("onnxruntime", files["onnx"], model, batch, threads)
    row["files"] = {k: files[k].stat().st_size for k in ("tflite_fp32", "onnx")}
    row["latency"] = latencies(libraries, model, batch, threads) if rounds else {}
    log(f"  {json.dumps(row['peak'])}")
    return row


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _peak(row: dict, key: str, field: str = "model_mb") -> float | None:
    entry = row["peak"].get(key, {})
    return entry.get(field, entry.get("peak_mb"))


def _size(row: dict, variant: str) -> str:
    """Library + params in MiB, and over the fp32 weights."""
    entry = row["sizes"].get(variant)
    if entry is None:
        return "-"
    total = entry["library_bytes"] + entry["params_file_bytes"]
    return f"{total / MB:.1f} ({total / entry['weights_bytes']:.2f}x)"


def markdown(rows: list[dict], threads: int) -> str:
    lines = [
        f"Peak RSS in MiB, fresh process each, {threads} thread(s). Python runtimes: peak less the "
        "RSS after importing the runtime (the model's share); `run`: the bundle's whole process "
        "(no Python; TVM runtime libraries included).",
        "",
        "| model | batch | fp32 weights | bridge.load, params | bridge.load, bound | "
        "run, params | run, bound | LiteRT | ONNX Runtime | run / LiteRT |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        weights = row["sizes"]["separate"]["weights_bytes"] / MB
        runner, litert = _peak(row, "runner separate"), _peak(row, "litert")
        ratio = f"{runner / litert:.2f}x" if runner and litert else "-"
        cells = [
            row["model"],
            str(row["batch"]),
            _mb(weights),
            _mb(_peak(row, "bridge.load separate")),
            _mb(_peak(row, "bridge.load bound")),
            _mb(runner),
            _mb(_peak(row, "runner bound")),
            _mb(litert),
            _mb(_peak(row, "onnxruntime")),
            ratio,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Size on disk in MiB (library + `.params`; x: over the fp32 weights) and the activation "
        "arena (VM storage per call after static memory planning), by `optimize_for`:",
        "",
        "| model | batch | balanced (default) | speed | size | bound library | arena | "
        ".tflite | .onnx |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        arena = row["sizes"]["separate"]["arena_bytes"]
        cells = [
            row["model"],
            str(row["batch"]),
            _size(row, "separate"),
            _size(row, "speed"),
            _size(row, "size"),
            _size(row, "bound"),
            _mb(arena / MB if arena is not None else None),
            _mb(row["files"]["tflite_fp32"] / MB),
            _mb(row["files"]["onnx"] / MB),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Latency, median ms per call, the variants timed interleaved in one process (compare "
        "within a row only: the machine is shared):",
        "",
        "| model | batch | params (balanced) | bound | bound / params | speed | size |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ms = row["latency"].get("median_ms", {})
        if not ms:
            continue
        cell = lambda key: f"{ms[key]:.1f}" if key in ms else "-"  # noqa: E731, B023
        ratio = f"{ms['bound'] / ms['separate']:.3f}" if "bound" in ms else "-"
        cells = [row["model"], str(row["batch"]), cell("separate"), cell("bound"), ratio]
        cells += [cell("speed"), cell("size")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="MobileNetV2,ResNet50")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per variant (0: none)")
    parser.add_argument("--probe", nargs=4, metavar=("KIND", "PATH", "MODEL", "BATCH"))
    parser.add_argument("--time", nargs="+", metavar="MODEL BATCH KEY=LIBRARY")
    args = parser.parse_args(argv)
    if args.probe:
        kind, path, model, batch = args.probe
        print(json.dumps(probe(kind, path, model, int(batch), args.threads)))
        return 0
    if args.time:
        model, batch, *specs = args.time
        print(json.dumps(time_interleaved(specs, model, int(batch), args.threads, args.rounds)))
        return 0
    rows = []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            rows.append(measure(model, batch, args.threads, args.rounds))
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "memory.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows, args.threads)
    (RESULTS_DIR / "memory.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU execution check for CUDA artifacts, in two steps (the GPU machine has no TVM compiler).

    python scripts/cuda_check.py prepare [--target cuda-sm90] [--out gpu_check]   # here
    python3 scripts/cuda_check.py verify [--out gpu_check]                         # on the GPU

``prepare`` builds CUDA bundles (fixture models from real Keras, with their reference inputs and
outputs) and checks they carry compiled device code. ``verify`` needs only numpy: it runs each
bundle's native ``run`` on the GPU and compares with the Keras outputs (rtol=atol=1e-4, scaled).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "seq_cnn": ROOT / "tests/fixtures/keras3/models/seq_cnn",
    "func_multi_io": ROOT / "tests/fixtures/keras3/models/func_multi_io",
    "digits_cnn": ROOT / "examples/digits/digits_cnn",
}
# Optional: a full-size model from benchmarks/ (benchmarks/make_models.py), timed at batch 8.
BENCH_MODEL = ROOT / "benchmarks/models/MobileNetV2"


def _reference(name: str, stem: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if name == "mobilenetv2_224":
        reference = np.load(stem.parent / f"{stem.name}.reference.npz")
        return [reference["x8"]], [reference["y8"]]
    path = stem.parent / (f"{stem.name}.npz" if name != "digits_cnn" else "sample.npz")
    reference = np.load(path)
    inputs = [reference[k] for k in sorted(reference.files) if k.startswith("input_")]
    outputs = [reference[k] for k in sorted(reference.files) if k.startswith("output_")]
    return inputs, outputs


def prepare(target: str, out: Path) -> None:
    import bridge
    from bridge.cuda import device_code

    shutil.rmtree(out, ignore_errors=True)
    models = dict(MODELS)
    if BENCH_MODEL.with_suffix(".keras").exists():
        models["mobilenetv2_224"] = BENCH_MODEL
    for name, stem in models.items():
        inputs, outputs = _reference(name, stem)
        model = bridge.build(stem.with_suffix(".keras"), target=target, batch_size=len(inputs[0]))
        folder = out / name
        library = model.export(folder, bundle=True)
        print(f"{name}: {device_code(library)}")
        for i, array in enumerate(inputs):
            np.save(folder / f"in{i}.npy", array)
        np.savez(folder / "expected.npz", *outputs)
    (out / "target.json").write_text(json.dumps({"target": target}))


def _torch_peer(batch: int) -> str:
    """Latency of torchvision's MobileNetV2 (fp32, TF32 off, eager) on the same GPU, as a peer."""
    try:
        import torch
        import torchvision
    except ImportError:
        return "torch peer: not installed"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    model = torchvision.models.mobilenet_v2().eval().cuda()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    times = []
    with torch.no_grad():
        for i in range(70):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            torch.cuda.synchronize()
            if i >= 20:
                times.append(start.elapsed_time(end))
    median = np.median(times)
    return f"torch {torch.__version__} cuDNN MobileNetV2 batch {batch}: median {median:.3f} ms"


def verify(out: Path) -> int:
    failures = 0
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        inputs = sorted(p.name for p in folder.glob("in*.npy"))
        run = subprocess.run(
            ["./run", *inputs, "--out", "results", "--bench", "20"],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            print(f"{folder.name}: FAILED to run\n{run.stderr}")
            failures += 1
            continue
        expected = np.load(folder / "expected.npz")
        worst = 0.0
        for i in range(len(expected.files)):
            got, want = np.load(folder / "results" / f"output{i}.npy"), expected[f"arr_{i}"]
            worst = max(worst, float(np.abs(got - want).max() / max(1.0, np.abs(want).max())))
        ok = worst <= 1e-4
        failures += not ok
        timing = run.stdout.strip().splitlines()[-1]
        print(f"{folder.name}: {'OK' if ok else 'MISMATCH'} max scaled error {worst:.2e}; {timing}")
    if (out / "mobilenetv2_224").is_dir():
        print(_torch_peer(8))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["prepare", "verify"])
    parser.add_argument("--target", default="cuda-sm90")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_check")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.target, args.out)
        return 0
    return verify(args.out)


if __name__ == "__main__":
    sys.exit(main())

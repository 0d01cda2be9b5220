"""TFLite example: build a small .tflite CNN, export it, load it back, and check it against LiteRT.

    python examples/run_tflite_example.py [--target llvm] [--out out/tflite]

The model (examples/tflite/cnn.tflite, a 32x32x3 image -> 10 scores CNN) and
examples/tflite/sample.npz (an input and LiteRT's output for it) are copied from the test
fixtures by tests/fixtures/make_tflite.py; examples/tflite/image.npy is the same input for
``bridge run``. Neither TensorFlow nor LiteRT is needed to run this.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import bridge

HERE = Path(__file__).parent / "tflite"
TOLERANCE = 1e-4  # max abs difference allowed vs LiteRT's output, relative to its range


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--out", default="out/tflite")
    args = parser.parse_args()

    sample = np.load(HERE / "sample.npz")
    image, litert = sample["input_0"], sample["output_0"]

    started = time.perf_counter()
    model = bridge.build(HERE / "cnn.tflite", target=args.target)
    print(f"built   {model!r} in {time.perf_counter() - started:.1f} s")
    library = model.export(Path(args.out) / "cnn.so")
    print(f"export  {library} ({library.stat().st_size / 1024:.0f} KiB)")

    scores = bridge.load(library)(image)
    max_diff = float(np.abs(scores - litert).max())
    scale = max(1.0, float(np.abs(litert).max()))
    same = bool((scores.argmax(-1) == litert.argmax(-1)).all())
    print(f"run     class {int(scores.argmax())}, max |bridge - LiteRT| = {max_diff:.2e}")
    ok = max_diff <= TOLERANCE * scale and same
    print("OK: bridge matches LiteRT" if ok else f"MISMATCH (tolerance {TOLERANCE})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

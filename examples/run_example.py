"""Quick start: build the bundled digits CNN, export it, load it back, and check it against Keras.

    python examples/run_example.py [--target llvm] [--out out/digits]

The model (examples/digits/digits_cnn.keras) was trained with Keras 3 on scikit-learn's digits
by examples/train_digits.py; examples/digits/sample.npz holds 64 held-out images, their labels
and Keras' own predictions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import bridge

HERE = Path(__file__).parent / "digits"
TOLERANCE = 1e-5  # max abs difference allowed vs Keras' softmax probabilities


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--out", default="out/digits")
    args = parser.parse_args()

    sample = np.load(HERE / "sample.npz")
    images, labels, keras_probs = sample["input_0"], sample["labels"], sample["output_0"]

    started = time.perf_counter()
    model = bridge.build(HERE / "digits_cnn.keras", target=args.target, batch_size=len(images))
    print(f"built   {model!r} in {time.perf_counter() - started:.1f} s")
    library = model.export(Path(args.out) / "digits_cnn.so")
    beside = [library.with_name("digits_cnn.meta.json"), library.with_suffix(".params")]
    written = " + ".join(path.name for path in beside if path.exists())  # .params: the weights
    print(f"export  {library} ({library.stat().st_size / 1024:.0f} KiB) + {written}")

    loaded = bridge.load(library)
    probs = loaded(images)
    max_diff = float(np.abs(probs - keras_probs).max())
    agree = float((probs.argmax(1) == keras_probs.argmax(1)).mean())
    accuracy = float((probs.argmax(1) == labels).mean())
    print(
        f"run     {len(images)} digits: accuracy {accuracy:.1%}, same class as Keras "
        f"{agree:.0%}, max |bridge - keras| = {max_diff:.2e}"
    )
    ok = max_diff <= TOLERANCE and agree == 1.0
    print("OK: bridge matches Keras" if ok else f"MISMATCH (tolerance {TOLERANCE})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

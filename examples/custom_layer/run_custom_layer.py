"""Custom layers: build a model holding a registered custom layer and a Lambda layer.

    python examples/custom_layer/run_custom_layer.py [--target llvm]
    # or: bridge build examples/custom_layer/custom_scale.keras \
    #         --custom-layers examples/custom_layer/converters.py:CUSTOM_LAYERS -o out/custom

custom_scale.keras (Dense -> mypkg>ScaleShift -> Lambda) was saved by Keras 3
(tests/fixtures/generate.py, ``gen_custom``); sample.npz holds inputs and Keras' outputs.
Without converters bridge refuses the model and names both layers; with them it matches Keras.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from converters import CUSTOM_LAYERS

import bridge
from bridge.errors import UnsupportedModelError

HERE = Path(__file__).parent
TOLERANCE = 1e-5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="llvm")
    args = parser.parse_args()
    model_file = HERE / "custom_scale.keras"
    try:
        bridge.build(model_file, target=args.target)
    except UnsupportedModelError as exc:
        print(f"without converters:\n{exc}\n")
    sample = np.load(HERE / "sample.npz")
    x, expected = sample["input_0"], sample["output_0"]
    model = bridge.build(
        model_file, target=args.target, batch_size=len(x), custom_layers=CUSTOM_LAYERS
    )
    max_diff = float(np.abs(model(x) - expected).max())
    print(f"with converters: max |bridge - keras| = {max_diff:.2e}")
    return 0 if max_diff <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())

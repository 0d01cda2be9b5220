"""Build time and artifact size per target preset, for one model (default: the digits CNN).

python scripts/measure_targets.py [MODEL] [--bundle]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import bridge
from bridge.cuda import device_code
from bridge.targets import presets

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=ROOT / "examples/digits/digits_cnn.keras")
    parser.add_argument("--bundle", action="store_true", help="also measure whole bundles")
    args = parser.parse_args()
    print(f"{'preset':18} {'build s':>8} {'library':>10} {'bundle':>10}  device code")
    for name, spec in presets().items():
        if (spec.cross_compiler and not shutil.which(spec.cross_compiler)) or (
            spec.device == "cuda" and not shutil.which("nvcc")
        ):
            print(f"{name:18} skipped (toolchain missing)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            model = bridge.build(args.model, target=name)
            seconds = time.perf_counter() - started
            library = model.export(Path(tmp) / "lib" / "model.so")
            bundle = "-"
            if args.bundle:
                folder = Path(tmp) / "bundle"
                model.export(folder, bundle=True)
                bundle = f"{sum(p.stat().st_size for p in folder.iterdir()) / 2**20:.1f} MiB"
            size = f"{library.stat().st_size / 1024:.0f} KiB"
            print(f"{name:18} {seconds:8.1f} {size:>10} {bundle:>10}  {device_code(library)}")


if __name__ == "__main__":
    main()

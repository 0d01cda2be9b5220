"""Screenshots of ``bridge report`` pages, taken as a person would look at them: headless
Chromium at a laptop's 1440x900, plus the DOM after the page's script ran.

    python scripts/report_screenshots.py --out out/report_screens            # small and large
    python scripts/report_screenshots.py --models example --docs docs/report.png  # README's

Models: ``small``, the bundled digits CNN (examples/digits, 10 layers); ``large``, DenseNet121
from tests/fixtures/apps (429 layers, weights materialized from its manifest, no TensorFlow).
Their compare and profile dicts are synthetic but deterministic (fixed seeds; the formats of
``bridge.compare`` and ``bridge.profile``), with a divergence planted at a known layer, so the
DOM can be checked against them. ``example``: the real thing, ``bridge report`` of the bundled
example with one weight of ``conv2`` perturbed, built and profiled here, compared with Keras's
layer outputs (tests/fixtures/reference/digits_cnn.npz): README's screenshot. For each model it
writes ``NAME.html``, ``NAME.png`` (top of the page), ``NAME.dom.html`` (``--dump-dom``) and
``NAME.search.dom.html`` (the page opened with ``?q=QUERY``: the search box filled in, as
typed); the synthetic ones also ``NAME.compare.json``, ``NAME.profile.json``, ``NAME.build.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge import report  # noqa: E402

WINDOW = "1440,900"
MODELS = {
    # name: (model file, app for weights or None, layer to perturb, search query)
    "small": (ROOT / "examples/digits/digits_cnn.keras", None, "conv2", "bn"),
    "large": (ROOT / "tests/fixtures/apps/DenseNet121.json", "DenseNet121", "conv3_block2_1_conv",
              "conv4_block7"),
    "example": (ROOT / "examples/digits/digits_cnn.json", None, "conv2", "conv"),
}  # fmt: skip
REFERENCE = ROOT / "tests/fixtures/reference/digits_cnn.npz"
FUSED_AFTER = {"BatchNormalization", "Activation", "ReLU", "Add"}


def chromium() -> str | None:
    """The Chromium binary (Debian: ``chromium``), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def capture(page: Path, dom: Path, binary: str, png: Path | None = None, query: str = "") -> None:
    """One headless Chromium run: ``--dump-dom`` (the DOM after the page's script ran) into
    ``dom`` and, given ``png``, ``--screenshot`` (the top 1440x900 of the page); ``query`` opens
    the page as ``page?q=QUERY``, which fills in the search box as if typed."""
    url = page.as_uri() + (f"?q={query}" if query else "")
    with tempfile.TemporaryDirectory() as profile_dir:
        args = [
            binary,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile_dir}",  # a fresh profile: no state between runs
            f"--window-size={WINDOW}",
            *([f"--screenshot={png}"] if png else []),
            "--dump-dom",
            url,
        ]
        result = subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)
    dom.write_text(result.stdout, encoding="utf-8")
    if png is not None and not png.is_file():
        raise RuntimeError(f"{png}: chromium wrote no screenshot")


def graph_of(name: str):
    """``bridge.inspect`` of a model (an application's weights written from its manifest to a
    temporary file)."""
    import bridge

    model, app, _, _ = MODELS[name]
    if app is None:
        return bridge.inspect(model)
    manifest = json.loads(model.with_suffix(".manifest.json").read_text())
    with tempfile.TemporaryDirectory() as work:
        weights = Path(work) / f"{app}.weights.h5"
        write_weights(manifest, weights)
        return bridge.inspect(model, weights)


def write_weights(manifest: dict, target: Path) -> None:
    """The manifest's recipe (tests/test_apps.py): normal/uniform draws or constants."""
    import h5py

    with h5py.File(target, "w") as handle:
        for index, var in enumerate(manifest["variables"]):
            kind, *args = var["init"]
            if kind == "constant":
                values = np.full(var["shape"], args[0], dtype=var["dtype"])
            else:
                rng = np.random.default_rng([manifest["seed"], index])
                sample = rng.normal if kind == "normal" else rng.uniform
                values = sample(*args, size=var["shape"]).astype("float32")
            handle.create_dataset(var["path"], data=values)


def synthetic_compare(graph, model: str, perturbed: str, seed: int = 0) -> dict:
    """A compare dict: errors near float32 rounding, jumping at ``perturbed`` and staying high."""
    rng = np.random.default_rng(seed)
    rows, diverged = [], False
    for layer in report.graph_layers(graph):
        diverged = diverged or layer["layer"] == perturbed
        scale = 10 ** rng.uniform(-1.5, 0) if diverged else 10 ** rng.uniform(-7, -5.3)
        rows.append(
            {
                "layer": layer["layer"],
                "class": layer["class"],
                "shape": layer["shapes"][0] if layer["shapes"] else [],
                "max_abs": float(scale),
                "max_rel": float(scale * rng.uniform(1, 4)),
                "cosine": float(1 - scale * rng.uniform(0.01, 0.1)),
                "ok": not diverged,
            }
        )
    return {
        "format": "bridge-compare",
        "version": 1,
        "model": model,
        "reference": "Keras 3.15.1 layer outputs (ref.npz), one weight of "
        f"{perturbed} perturbed",
        "tolerance": {"atol": 1e-4, "rtol": 1e-3, "cosine": 0.9999},
        "rows": rows,
        "first_divergent": perturbed,
    }


def synthetic_profile(graph, model: str, seed: int = 1) -> dict:
    """A profile dict: one kernel per layer that computes, with the BatchNormalization,
    activation or Add after it fused in (fused_<classes><n>); time ~ parameters."""
    rng = np.random.default_rng(seed)
    layers = [x for x in report.graph_layers(graph) if x["class"] != "InputLayer"]
    kernels: list[dict] = []
    for layer in layers:
        if kernels and layer["class"] in FUSED_AFTER and len(kernels[-1]["layers"]) < 3:
            kernels[-1]["layers"].append(layer["layer"])
            kernels[-1]["name"] += "_" + layer["class"].lower()[:4]
            continue
        kernels.append({"name": "fused_" + layer["class"].lower(), "layers": [layer["layer"]]})
    by_layer, entries = {}, []
    for index, kernel in enumerate(kernels):
        kernel["name"] += str(index)
        params = sum((next(x for x in layers if x["layer"] == n)["params"] or 0)
                     for n in kernel["layers"])  # fmt: skip
        us = float(2 + params / 40 * rng.uniform(0.5, 1.5) + rng.uniform(0, 8))
        flops = int(params * 2 * 64 + 1000)
        kernel.update(us=round(us, 2), flops=flops, bytes=int(params * 4 + 4096))
        for position, name in enumerate(kernel["layers"]):
            by_layer[name] = (kernel, us if position == 0 else 0.0)
    total = sum(k["us"] for k in kernels)
    for layer in layers:
        kernel, us = by_layer[layer["layer"]]
        flops = kernel["flops"] if us else 0
        entries.append(
            {
                "layer": layer["layer"],
                "class": layer["class"],
                "us": round(us, 2),
                "share": us / total,
                "flops": flops,
                "bytes": kernel["bytes"] if us else 0,
                "gflops": flops / us / 1e3 if us else 0.0,
                "kernels": [kernel["name"]],
            }
        )
    return {
        "format": "bridge-profile",
        "version": 1,
        "model": model,
        "target": "x86-64-v3",
        "threads": 2,
        "runs": 50,
        "total_us": round(total, 2),
        "layers": entries,
        "kernels": kernels,
    }


def synthetic_build(model: str, layers: int) -> dict:
    """The build facts bridge report shows (values as a real x86-64-v3 build writes them)."""
    return {
        "bridge_version": "0.1.0",
        "tvm_version": "0.27.0",
        "target_name": "x86-64-v3",
        "target": {"kind": "llvm", "mcpu": "haswell", "mtriple": "x86_64-linux-gnu"},
        "arch": "x86_64",
        "device": "cpu",
        "model": model,
        "model_type": "functional",
        "keras_version": "3.15.1",
        "layers": layers,
        "batch_size": 1,
        "build_seconds": 4.2 + layers * 0.11,
        "library_bytes": 180_000 + layers * 61_000,
        "peak_memory_bytes": 420_000_000 + layers * 1_900_000,
        "cpu_features": ["sse4.2", "avx", "avx2", "fma"],
    }


def render_example(out: Path) -> Path:
    """``bridge report`` of the digits example with one weight of conv2 changed (Keras 3 names
    conv2's weights group ``conv2d_1``), against Keras's outputs of the unchanged model."""
    import h5py

    from bridge.cli import main

    model = MODELS["example"][0]
    with tempfile.TemporaryDirectory() as work:
        weights = Path(shutil.copy(model.with_suffix(".weights.h5"), work))
        with h5py.File(weights, "r+") as handle:
            kernel = handle["layers/conv2d_1/vars/0"]
            value = kernel[...]
            value[1, 1, 3, 5] += 0.5
            kernel[...] = value
        page = out / "example.html"
        code = main(["report", str(model), str(weights), "--compare", str(REFERENCE),
                     "-o", str(page)])  # fmt: skip
    if code != 0:
        raise RuntimeError(f"bridge report exited with {code}")
    return page


def render_model(name: str, out: Path) -> Path:
    """Write NAME.html and the dicts it was rendered from; returns the page."""
    if name == "example":
        return render_example(out)
    model, _, perturbed, _ = MODELS[name]
    graph = graph_of(name)
    compare = synthetic_compare(graph, model.name, perturbed)
    profile = synthetic_profile(graph, model.name)
    build = synthetic_build(model.name, len(graph.layers))
    for part, data in (("compare", compare), ("profile", profile), ("build", build)):
        (out / f"{name}.{part}.json").write_text(json.dumps(data, indent=1))
    return report.write(out / f"{name}.html", graph, build=build, compare=compare, profile=profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/report_screens", help="folder for the files")
    parser.add_argument(
        "--models", default="small,large", help="comma-separated: small, large, example"
    )
    parser.add_argument("--docs", help="also copy the first model's screenshot here")
    parser.add_argument("--no-browser", action="store_true", help="write the pages only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    binary = None if args.no_browser else chromium()
    if binary is None and not args.no_browser:
        print("chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 3
    for index, name in enumerate(args.models.split(",")):
        page = render_model(name, out)
        print(f"{page} ({page.stat().st_size / 1024:.0f} KiB)")
        if binary is None:
            continue
        capture(page, out / f"{name}.dom.html", binary, png=out / f"{name}.png")
        capture(page, out / f"{name}.search.dom.html", binary, query=MODELS[name][3])
        if args.docs and index == 0:
            shutil.copyfile(out / f"{name}.png", args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

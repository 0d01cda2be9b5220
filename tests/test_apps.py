"""keras.applications models (weights=None) with fixed random weights, against Keras 3.

Their weights are too big to commit, so each fixture is a recipe (fixtures/apps/*.manifest.json):
every variable's HDF5 path, shape and distribution; values are np.random.default_rng([seed, i]).
The test writes a Keras 3 .weights.h5 from it and builds json + weights. Logits are compared
(classifier_activation=None) with rtol=1e-3 and atol=1e-3 times the logits' magnitude.

DEFAULT_APPS run in the default suite; every other application is in the slow suite
(``pytest -m slow tests/test_apps.py``), its json and manifest gzipped, at the smallest input
its constructor accepts (32x32; 75x75 InceptionV3/InceptionResNetV2, 71x71 Xception).
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import bridge
from tests.conftest import APPS, assert_matches, reference

# (DenseNet121, the slowest at 100 s on a 2-core Zen 3, runs in the slow suite with its
# larger siblings)
DEFAULT_APPS = frozenset(
    {"ResNet50", "ResNet50V2", "MobileNet", "MobileNetV2", "VGG16"}
    | {"EfficientNetB0", "MobileNetV3Small"}
)
APP_NAMES = sorted(p.name.split(".manifest.json")[0] for p in APPS.glob("*.manifest.json*"))


def app_file(app: str, suffix: str) -> Path:
    """apps/<app><suffix>, or its gzipped form (the slow suite's)."""
    plain = APPS / f"{app}{suffix}"
    return plain if plain.exists() else plain.with_name(plain.name + ".gz")


def read_text(path: Path) -> str:
    return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()


def _values(seed: int, index: int, var: dict) -> np.ndarray:
    """The manifest recipe for variable ``index`` (see the manifest's "recipe")."""
    kind, *args = var["init"]
    if kind == "constant":
        return np.full(var["shape"], args[0], dtype=var["dtype"])
    rng = np.random.default_rng([seed, index])
    sample = rng.normal if kind == "normal" else rng.uniform
    return sample(*args, size=var["shape"]).astype("float32")


def write_weights(manifest_file: Path, target: Path) -> Path:
    """Materialize the manifest's weights as a Keras 3 .weights.h5 file."""
    manifest = json.loads(read_text(manifest_file))
    seed = manifest["seed"]
    with h5py.File(target, "w") as handle:
        for index, var in enumerate(manifest["variables"]):
            handle.create_dataset(var["path"], data=_values(seed, index, var))
    return target


@pytest.mark.parametrize(
    "app",
    [pytest.param(a, marks=() if a in DEFAULT_APPS else pytest.mark.slow) for a in APP_NAMES],
)
def test_application_matches_keras(app, tmp_path, record_property):
    weights = write_weights(app_file(app, ".manifest.json"), tmp_path / f"{app}.weights.h5")
    architecture = tmp_path / f"{app}.json"
    architecture.write_text(read_text(app_file(app, ".json")))
    inputs, outputs = reference(APPS / f"{app}.npz")
    started = time.perf_counter()
    model = bridge.build(architecture, weights)
    build_seconds = time.perf_counter() - started
    got = model(*inputs)
    abs_err = float(np.abs(got - outputs[0]).max())
    rel_err = abs_err / float(np.abs(outputs[0]).max())
    record_property("max_abs_err", abs_err)
    record_property("max_rel_err", rel_err)
    record_property("build_seconds", build_seconds)
    print(
        f"{app}: max abs err {abs_err:.3g}, max rel err {rel_err:.3g}, build {build_seconds:.1f}s"
    )
    assert_matches(got, outputs, rtol=1e-3, atol=1e-3)


def test_all_required_applications_present():
    assert set(APP_NAMES) >= DEFAULT_APPS

"""Per-layer numeric tests: one small model per layer config variant, Keras 3 and Keras 2 files.

Reference outputs come from real Keras (tests/fixtures/generate.py); tolerance rtol=1e-4 and
atol=1e-4 times the output magnitude (float32 reassociation; TVM's erf/exp approximations).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import bridge
from tests.conftest import KERAS2, KERAS3, assert_matches, reference

CASES = (
    sorted(KERAS3.glob("layers/*.keras"))
    + sorted(KERAS2.glob("layers/*.h5"))
    + sorted(KERAS2.glob("layers/*.keras"))  # Keras 2.15's new layout, for a few cases
)


def case_id(path: Path) -> str:
    version = path.parent.parent.name
    extra = "-keras" if version == "keras2" and path.suffix == ".keras" else ""
    return f"{version}-{path.stem}{extra}"


@pytest.mark.parametrize("model_file", CASES, ids=case_id)
def test_layer_matches_keras(model_file: Path):
    inputs, outputs = reference(model_file.with_suffix(".npz"))
    model = bridge.build(model_file)
    assert_matches(model(*inputs), outputs)


def test_there_are_cases_for_both_versions():
    assert len(list(KERAS3.glob("layers/*.keras"))) > 100
    assert len(list(KERAS2.glob("layers/*.h5"))) > 80

"""Shared test helpers: fixture paths, reference loading, numeric comparison."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Builds under test use bridge's default schedules only, never kernels a developer tuned into
# ~/.cache/bridge/tuning; tuning tests name their own database folder.
os.environ.setdefault("BRIDGE_TUNING_DB", "off")

FIXTURES = Path(__file__).parent / "fixtures"
KERAS3 = FIXTURES / "keras3"
KERAS2 = FIXTURES / "keras2"
APPS = FIXTURES / "apps"
EXAMPLES = Path(__file__).parent.parent / "examples"


def reference(npz: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(inputs, outputs) of a fixture's .npz, in model order."""
    data = np.load(npz)
    count = lambda prefix: sum(1 for k in data.files if k.startswith(prefix))  # noqa: E731
    return (
        [data[f"input_{i}"] for i in range(count("input_"))],
        [data[f"output_{i}"] for i in range(count("output_"))],
    )


def as_list(result) -> list[np.ndarray]:
    return result if isinstance(result, list) else [result]


def assert_matches(got, expected, rtol: float = 1e-4, atol: float = 1e-4) -> None:
    """Compare outputs with Keras references; atol scales with the reference magnitude."""
    got, expected = as_list(got), as_list(expected)
    assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
    for g, e in zip(got, expected):
        assert g.shape == e.shape, f"shape {g.shape} != {e.shape}"
        scale = max(1.0, float(np.abs(e).max()))
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol * scale)


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    return tmp_path / "out"

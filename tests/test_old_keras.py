"""Files written by an older Keras 3 (3.8: tests/fixtures/make_old_keras.py) and Lambda layers
stored as Python bytecode, which bridge refuses and never runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

import bridge
from bridge.errors import UnsupportedModelError

OLD = FIXTURES / "keras3" / "old"
MARKER = Path("/tmp/bridge_lambda_was_executed")  # make_old_keras.LAMBDA_MARKER


def test_keras38_file_matches_keras() -> None:
    data = np.load(OLD / "keras38_cnn.npz")
    model = bridge.build(OLD / "keras38_cnn.keras", batch_size=2, target="llvm")
    np.testing.assert_allclose(model(data["input_0"]), data["output_0"], rtol=0, atol=1e-5)


@pytest.fixture
def no_marker():
    MARKER.unlink(missing_ok=True)
    yield
    assert not MARKER.exists(), "the Lambda layer's bytecode was executed"


def test_lambda_refused_named_and_never_executed(no_marker) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        bridge.build(OLD / "keras38_lambda.keras")
    [problem] = info.value.problems
    assert (problem.layer, problem.class_name) == ("scale_by_marker", "Lambda")
    assert "never executes" in problem.reason
    assert "custom_layers={'scale_by_marker'" in problem.reason
    report = bridge.api.inspect(OLD / "keras38_lambda.keras")
    assert not report.supported


def test_lambda_replaced_by_a_converter_is_not_executed(no_marker) -> None:
    from tvm.relax import op as R

    def double(ctx, inputs):
        return ctx.emit(R.multiply(inputs[0], ctx.const(2.0)))

    path = OLD / "keras38_lambda.keras"
    model = bridge.build(path, custom_layers={"scale_by_marker": double}, target="llvm")
    dense = bridge.build(path, outputs=["dense"], custom_layers={"scale_by_marker": double})
    x = np.linspace(-1, 1, 6, dtype="float32").reshape(1, 6)
    np.testing.assert_allclose(model(x), 2 * dense(x), rtol=1e-6)

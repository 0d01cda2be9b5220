"""Whole models in every file format both Keras versions write, at batch 2.

Sequential with/without InputLayer, multi-input/output functional models with layers out of
dependency order, shared layers, nested models (both node-numbering conventions), dtype policies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bridge
from tests.conftest import KERAS2, KERAS3, assert_matches, reference

MODELS = ["seq_cnn", "seq_noinput", "func_multi_io", "nested_shared", "nested_functional"]
DTYPE_MODELS = ["dtype_float16", "dtype_bfloat16", "dtype_mixed_float16"]

# (version folder, how to call bridge.build) for every format.
FORMATS = {
    "keras3": {
        "json+weights.h5": lambda d, m: (d / f"{m}.json", d / f"{m}.weights.h5"),
        "keras": lambda d, m: (d / f"{m}.keras",),
        "h5": lambda d, m: (d / f"{m}.h5",),
    },
    "keras2": {
        "json+weights.h5": lambda d, m: (d / f"{m}.json", d / f"{m}.weights.h5"),
        "json+legacy.h5": lambda d, m: (d / f"{m}.json", d / f"{m}_legacy.h5"),
        "keras": lambda d, m: (d / f"{m}.keras",),
        "h5": lambda d, m: (d / f"{m}.h5",),
    },
}
ROOTS = {"keras3": KERAS3, "keras2": KERAS2}


def _cases(models):
    for version, formats in FORMATS.items():
        for model in models:
            for fmt, files in formats.items():
                args = files(ROOTS[version] / "models", model)
                if all(p.exists() for p in args):
                    yield pytest.param(args, id=f"{version}-{model}-{fmt}")


def _build_and_compare(args: tuple[Path, ...], rtol=1e-4, atol=1e-4):
    inputs, outputs = reference(args[0].parent / f"{args[0].name.split('.')[0]}.npz")
    model = bridge.build(*args, batch_size=inputs[0].shape[0])
    assert_matches(model(*inputs), outputs, rtol=rtol, atol=atol)
    return model


@pytest.mark.parametrize("args", list(_cases(MODELS)))
def test_model_matches_keras(args):
    _build_and_compare(args)


@pytest.mark.parametrize("args", list(_cases(DTYPE_MODELS)))
def test_dtype_policy_models_compute_in_float32(args):
    # Keras ran these in float16/bfloat16; bridge computes in float32, so agreement is bounded
    # by the reference's precision: bfloat16 keeps 8 mantissa bits (~4e-3), float16 11 (~5e-4).
    tolerance = 2e-2 if "bfloat16" in args[0].name else 3e-3
    _build_and_compare(args, rtol=tolerance, atol=tolerance)


def test_every_format_is_present():
    found = {p.id for p in _cases(MODELS)}
    for version, formats in FORMATS.items():
        for fmt in formats:
            assert f"{version}-seq_cnn-{fmt}" in found


def test_sharded_weights():
    index = KERAS3 / "models" / "sharded" / "seq_cnn.weights.json"
    assert len(list(index.parent.glob("*.weights.h5"))) >= 3
    inputs, outputs = reference(KERAS3 / "models" / "seq_cnn.npz")
    model = bridge.build(KERAS3 / "models" / "seq_cnn.json", index, batch_size=2)
    assert_matches(model(*inputs), outputs)


def test_fixed_length_string_h5():
    inputs, outputs = reference(KERAS2 / "models" / "seq_cnn.npz")
    model = bridge.build(KERAS2 / "models" / "seq_cnn.fixedstr.h5", batch_size=2)
    assert_matches(model(*inputs), outputs)


@pytest.mark.parametrize("root", [KERAS3, KERAS2], ids=["keras3", "keras2"])
def test_intermediate_output_by_layer_name(root):
    data = np.load(root / "models" / "seq_cnn.npz")
    model = bridge.build(root / "models" / "seq_cnn.keras", batch_size=2, outputs=["conv2"])
    assert [o.name for o in model.outputs] == ["conv2"]
    assert_matches(model(data["input_0"]), data["inter_conv2"])


def test_multi_io_call_conventions():
    root = KERAS3 / "models"
    inputs, outputs = reference(root / "func_multi_io.npz")
    model = bridge.build(root / "func_multi_io.keras", batch_size=2)
    names = [i.name for i in model.inputs]
    assert names == ["image", "meta"]
    by_name = model({names[0]: inputs[0], names[1]: inputs[1]})
    by_kwargs = model(**{names[0]: inputs[0], names[1]: inputs[1]})
    positional = model(*inputs)
    assert isinstance(positional, list) and len(positional) == len(model.outputs) == 2
    for result in (by_name, by_kwargs):
        for a, b in zip(result, positional):
            np.testing.assert_array_equal(a, b)
    assert_matches(positional, outputs)


@pytest.mark.parametrize(
    "model, kind", [("seq_cnn", "sequential"), ("func_multi_io", "functional")]
)
def test_check_modeltype(model, kind):
    for path in (
        KERAS3 / "models" / f"{model}.json",
        KERAS2 / "models" / f"{model}.h5",
        KERAS3 / "models" / f"{model}.keras",
    ):
        assert bridge.check_modeltype(path) == kind


def test_to_relax_returns_module_and_raw_keras_weights():
    mod, params = bridge.to_relax(KERAS3 / "models" / "seq_cnn.keras")
    main = mod["main"]
    assert int(main.attrs["num_input"]) == 1
    assert len(main.params) == 1 + len(params)
    assert params["conv1/kernel"].shape == (3, 3, 3, 8)
    assert set(params) >= {"bn1/gamma", "bn1/beta", "bn1/moving_mean", "bn1/moving_variance"}

"""Bad input gets a typed error naming the file (and layer); nothing from a model file runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import bridge
from bridge.errors import (
    BridgeError,
    InputError,
    ModelFileError,
    TargetError,
    UnsupportedModelError,
    WeightsError,
)
from tests.conftest import KERAS3

MODELS = KERAS3 / "models"
ERRORS = KERAS3 / "errors"


def _raises(exc_type, *args, **kwargs) -> BridgeError:
    with pytest.raises(exc_type) as info:
        bridge.build(*args, **kwargs)
    return info.value


def test_missing_file(tmp_path):
    err = _raises(ModelFileError, tmp_path / "nope.keras")
    assert "nope.keras" in str(err) and "not found" in str(err)


def test_missing_weights_file(tmp_path):
    err = _raises(ModelFileError, MODELS / "seq_cnn.json", tmp_path / "nope.weights.h5")
    assert "nope.weights.h5" in str(err)


def test_directory_is_not_a_model(tmp_path):
    assert "not a regular file" in str(_raises(ModelFileError, tmp_path))


def test_unrecognized_file_kind(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"\x00\x01binary garbage")
    assert "unrecognized file kind" in str(_raises(ModelFileError, path))


@pytest.mark.parametrize("name", ["seq_cnn.h5", "seq_cnn.keras", "seq_cnn.weights.h5"])
def test_truncated_files(tmp_path, name):
    data = (MODELS / name).read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: len(data) // 2])
    args = (MODELS / "seq_cnn.json", bad) if name.endswith(".weights.h5") else (bad,)
    err = _raises(ModelFileError, *args)
    assert name in str(err)


@pytest.mark.parametrize(
    "content",
    [
        '{"foo": 1}',
        "[1, 2]",
        '{"class_name": "Dense"}',
        '{"class_name": "Sequential"',
        '{"class_name": "Model"}',
    ],
)
def test_json_that_is_not_a_keras_model(tmp_path, content):
    path = tmp_path / "model.json"
    path.write_text(content)
    err = _raises(ModelFileError, path)
    assert "model.json" in str(err)


def test_weights_only_h5_as_model(tmp_path):
    err = _raises(ModelFileError, MODELS / "seq_cnn.weights.h5")
    assert "weights" in str(err)


def test_weights_of_another_model():
    err = _raises(
        UnsupportedModelError, MODELS / "seq_cnn.json", MODELS / "func_multi_io.weights.h5"
    )
    assert "seq_cnn.json" in str(err)
    assert err.problems and all(p.reason for p in err.problems)


def test_misshaped_weight_names_layer_and_shapes(tmp_path):
    weights = tmp_path / "seq_cnn.weights.h5"
    shutil.copy(MODELS / "seq_cnn.weights.h5", weights)
    with h5py.File(weights, "r+") as handle:
        del handle["layers/conv2d/vars/0"]
        handle["layers/conv2d/vars/0"] = np.zeros((5, 5, 3, 8), "float32")
        del handle["layers/dense/vars/1"]
        handle["layers/dense/vars/1"] = np.zeros((7,), "float32")
    err = _raises(WeightsError, MODELS / "seq_cnn.json", weights)
    assert [p.layer for p in err.problems][:2] == ["conv1", err.problems[1].layer]
    assert "[5, 5, 3, 8]" in str(err) and "[3, 3, 3, 8]" in str(err)
    assert len(err.problems) == 2


def test_lambda_is_reported_never_executed():
    err = _raises(UnsupportedModelError, ERRORS / "lambda_model.keras")
    lambdas = [p for p in err.problems if p.class_name == "Lambda"]
    assert lambdas and "never executes" in lambdas[0].reason


def test_every_custom_layer_is_reported_at_once():
    err = _raises(UnsupportedModelError, ERRORS / "custom_layer.keras")
    assert len(err.problems) >= 2
    assert any("mypkg>MyScale" in p.reason for p in err.problems)


def test_preflight_collects_every_problem_in_model_order(tmp_path):
    config = json.loads((MODELS / "seq_cnn.json").read_text())
    layers = config["config"]["layers"]
    by_name = {entry["config"]["name"]: entry for entry in layers}
    by_name["conv1"]["config"]["padding"] = "full"
    by_name["conv2"]["class_name"] = "FancyConv"
    last_dense = [e for e in layers if e["class_name"] == "Dense"][-1]
    last_dense["config"]["activation"] = "no_such_activation"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(config))
    err = _raises(UnsupportedModelError, path, MODELS / "seq_cnn.weights.h5")
    layers_reported = [p.layer for p in err.problems]
    assert layers_reported == ["conv1", "conv2", last_dense["config"]["name"]]
    text = str(err)
    assert "broken.json" in text and "'full'" in text and "FancyConv" in text
    assert "no_such_activation" in text


def test_an_architecture_without_weights_file_is_one_problem():
    err = _raises(UnsupportedModelError, MODELS / "seq_cnn.json")
    assert len(err.problems) == 1, str(err)
    assert "needs a weights file (e.g. model.weights.h5)" in str(err)
    assert "second argument" in str(err) and "seq_cnn.json" in str(err)


def test_inspect_of_an_architecture_without_weights_file_shows_the_layers():
    report = bridge.api.inspect(MODELS / "seq_cnn.json")
    assert {"conv1", "bn1", "conv2"} <= {row.path for row in report.layers}
    assert all(row.status == "ok" for row in report.layers), report.layers
    assert len(report.notes) == 1 and "needs a weights file" in report.notes[0]


def test_another_number_of_weight_arrays_is_a_weights_error(tmp_path):
    weights = tmp_path / "seq_cnn.weights.h5"
    shutil.copy(MODELS / "seq_cnn.weights.h5", weights)
    with h5py.File(weights, "r+") as handle:
        handle["layers/conv2d/vars/2"] = np.zeros((8,), "float32")  # a third array
    err = _raises(WeightsError, MODELS / "seq_cnn.json", weights)
    assert [p.layer for p in err.problems] == ["conv1"]
    assert "3 weight arrays" in str(err) and "seq_cnn.weights.h5" in str(err)


def test_refused_outputs_leave_no_tvm_warning(tmp_path):
    """An unknown ``outputs=`` name raises after the walk began: the Relax builder is closed
    cleanly (TVM would print "BlockBuilder destroyed with remaining blocks!" at exit)."""
    import subprocess
    import sys

    script = (
        "import bridge, sys\n"
        "try:\n"
        f"    bridge.to_relax({str(MODELS / 'seq_cnn.keras')!r}, outputs=['nope'])\n"
        "except bridge.errors.UnsupportedModelError as exc:\n"
        "    print('refused:', exc.problems[0].layer)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert "refused: nope" in done.stdout, done.stderr
    assert "BlockBuilder" not in done.stderr and "Warning" not in done.stderr, done.stderr


def test_unknown_output_layer():
    err = _raises(UnsupportedModelError, MODELS / "seq_cnn.keras", outputs=["nope"])
    assert "nope" in str(err)


def test_unknown_target():
    with pytest.raises(TargetError):
        bridge.build(MODELS / "seq_cnn.keras", target="no-such-target-xyz")


def test_input_errors():
    model = bridge.build(MODELS / "seq_cnn.keras")
    shape = model.inputs[0].shape
    with pytest.raises(InputError, match="batch_size=2"):
        model(np.zeros((2, *shape[1:]), "float32"))
    with pytest.raises(InputError, match="takes 1 input"):
        model(np.zeros(shape, "float32"), np.zeros(shape, "float32"))
    with pytest.raises(InputError, match="unknown input"):
        model({"bogus": np.zeros(shape, "float32")})


def test_errors_are_typed():
    for exc in (ModelFileError, UnsupportedModelError, WeightsError, InputError, TargetError):
        assert issubclass(exc, BridgeError)


def test_load_missing_artifact(tmp_path):
    with pytest.raises(bridge.errors.ArtifactError):
        bridge.load(tmp_path / "nope.so")


def test_relative_paths_work(monkeypatch):
    monkeypatch.chdir(MODELS)
    assert bridge.check_modeltype(Path("seq_cnn.json")) == "sequential"


def test_a_tensor_call_argument_the_converter_ignores_is_refused(tmp_path):
    """A call tensor no converter reads (here MultiHeadAttention's explicit ``value_mask``) would
    be silently dropped; the walk refuses it instead."""
    import zipfile

    with zipfile.ZipFile(KERAS3 / "layers" / "mha_cross_key_scores.keras") as archive:
        config = archive.read("config.json").decode()
        (tmp_path / "m.weights.h5").write_bytes(archive.read("model.weights.h5"))
    assert '"key": {' in config
    (tmp_path / "m.json").write_text(config.replace('"key": {', '"value_mask": {'))
    error = _raises(UnsupportedModelError, tmp_path / "m.json", tmp_path / "m.weights.h5")
    assert "value_mask" in str(error) and "multi_head_attention" in str(error)


def test_unsupported_keras_operation_is_reported(tmp_path):
    """Keras 3 records `ops.arctan2(x, 3.0)` in a functional graph as an operation node, not a
    layer; one without a converter is named."""
    from tests.conftest import APPS

    config = json.loads((APPS / "MobileNetV3Small.json").read_text())
    op = next(e for e in config["config"]["layers"] if e.get("module") == "keras.src.ops.numpy")
    op["class_name"] = "Arctan2"
    path = tmp_path / "model.json"
    path.write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=r"ops\.numpy\.Arctan2") as info:
        bridge.to_relax(path)
    assert [p.layer for p in info.value.problems if p.class_name == "Arctan2"] == [op["name"]]


def test_operation_constants_are_kept():
    from bridge.keras import open_model
    from tests.conftest import APPS

    graph = open_model(APPS / "MobileNetV3Small.json").graph
    ops = [layer for layer in graph.layers if layer.module == "keras.src.ops.numpy"]
    assert {layer.calls[0].constants.get(1) for layer in ops} >= {3.0, 1 / 6}


def test_unknown_tensorflow_function_is_named(tmp_path):
    """A TFOpLambda calling a TensorFlow function without a translation is refused by name."""
    from tests.conftest import KERAS2

    path = tmp_path / "tfop.h5"
    shutil.copy(KERAS2 / "layers" / "tfop_nn.h5", path)
    with h5py.File(path, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        config["config"]["layers"][1]["config"]["function"] = "math.bessel_i0"
        handle.attrs["model_config"] = json.dumps(config)
    err = _raises(UnsupportedModelError, path)
    assert len(err.problems) == 1
    assert "tf.math.bessel_i0 is not supported" in err.problems[0].reason
    assert "nn.relu" in err.problems[0].reason  # the supported ones are listed

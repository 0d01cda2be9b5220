"""``bridge compare`` and ``python -m bridge.reference``: every layer against a reference.

References are committed files written by real Keras and LiteRT (tests/fixtures/make_reference.py),
so these tests need neither.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import bridge
from bridge.cli import main
from bridge.compare import CompareTable, Tolerance, load, measure, read_reference
from bridge.errors import UnsupportedModelError
from bridge.reference import INPUT_PREFIX, META_KEY, load_model
from bridge.targets import resolve
from tests.conftest import FIXTURES, KERAS2, KERAS3, needs_tools, run_bundle

REF = FIXTURES / "reference"
MODELS = KERAS3 / "models"
ROOT = Path(__file__).resolve().parent.parent
SEQ_LAYERS = ["conv1", "bn1", "conv2", "bn2", "pool", "flatten", "dropout", "fc", "out"]


def perturbed_seq_cnn(tmp_path: Path) -> tuple[Path, Path]:
    """seq_cnn's architecture and a copy of its weights with one weight of ``conv2`` changed
    (Keras 3 names its weights group by class: conv2 is the second Conv2D, ``conv2d_1``)."""
    model = shutil.copy(MODELS / "seq_cnn.json", tmp_path / "seq_cnn.json")
    weights = shutil.copy(MODELS / "seq_cnn.weights.h5", tmp_path / "seq_cnn.weights.h5")
    with h5py.File(weights, "r+") as handle:
        kernel = handle["layers/conv2d_1/vars/0"]
        value = kernel[...]
        value[1, 1, 0, 3] += 0.5
        kernel[...] = value
    return Path(model), Path(weights)


# --- against Keras -----------------------------------------------------------------------------


def test_keras_reference_every_layer_agrees_in_model_order():
    table = bridge.compare(MODELS / "seq_cnn.keras", reference=REF / "seq_cnn.npz")
    assert [row.layer for row in table.rows] == SEQ_LAYERS
    assert [row.class_name for row in table.rows[:2]] == ["Conv2D", "BatchNormalization"]
    assert table.first_divergent is None and table.ok
    assert all(row.max_rel < 1e-5 and row.cosine > 0.99999 for row in table.rows)
    assert table.rows[0].shape == [2, 14, 14, 8]  # the reference's batch of 2
    assert "Keras 3.15" in table.reference


@pytest.mark.parametrize("model", ["seq_cnn.keras", "seq_cnn.h5"])
def test_tf_keras_2_reference(model):
    """A reference written by tf.keras 2.15 (keras2/models/seq_cnn.keras) fits its .h5 twin."""
    table = bridge.compare(KERAS2 / "models" / model, reference=REF / "seq_cnn.tf2.npz")
    assert [row.layer for row in table.rows] == SEQ_LAYERS and table.ok
    assert "Keras 2.15" in table.reference


def test_perturbed_weight_is_the_first_divergent_layer(tmp_path):
    model, weights = perturbed_seq_cnn(tmp_path)
    table = bridge.compare(model, weights, reference=REF / "seq_cnn.npz")
    assert table.first_divergent == "conv2"
    assert [row.ok for row in table.rows[:2]] == [True, True]  # conv1, bn1 untouched
    loose = bridge.compare(
        model, weights, reference=REF / "seq_cnn.npz", tolerance=Tolerance(1, 1, 0)
    )
    assert loose.ok and loose.tolerance == Tolerance(1, 1, 0)
    conv2 = table.rows[2]
    assert not conv2.ok and conv2.max_rel > 0.01


NESTED_LAYERS = [
    "encoder/enc_dense",
    "encoder/enc_a",
    "encoder/enc_b",
    "encoder",
    "encoder:1",
    "cat",
    "lazy_seq/lazy_d1",
    "lazy_seq/lazy_d2",
    "lazy_seq",
]


@pytest.mark.parametrize("keras", ["keras3", "tf2"])
def test_nested_model_layers_are_compared_inside_it(keras):
    """The layers inside a nested model are in the reference (Keras 3 and tf.keras 2.15), each
    before the nested model's own outputs; a multi-output nested model has a row per output."""
    if keras == "keras3":
        files = (MODELS / "nested_functional.json", MODELS / "nested_functional.weights.h5")
        ref = REF / "nested_functional.npz"
    else:
        files = (KERAS2 / "models" / "nested_functional.keras", None)
        ref = REF / "nested_functional.tf2.npz"
    table = bridge.compare(*files, reference=ref)
    assert [row.layer for row in table.rows] == NESTED_LAYERS
    assert table.rows[4].shape == [2, 3] and table.rows[4].class_name == "Functional"
    assert table.rows[1].class_name == "Dense"
    assert table.ok and table.unreferenced == []


def test_shared_nested_model_layers_from_its_first_call():
    table = bridge.compare(MODELS / "nested_shared.keras", reference=REF / "nested_shared.npz")
    inner = ["inner_seq/inner_dense1", "inner_seq/inner_bn", "inner_seq/inner_dense2"]
    assert [row.layer for row in table.rows][1:5] == [*inner, "inner_seq"]
    assert table.ok


def test_weight_inside_a_nested_model_names_the_inner_layer(tmp_path):
    """enc_a (the encoder's second Dense, ``dense_1`` in the weights file) perturbed: the first
    divergent layer is the inner one, not just the nested model."""
    model = shutil.copy(MODELS / "nested_functional.json", tmp_path / "m.json")
    weights = shutil.copy(MODELS / "nested_functional.weights.h5", tmp_path / "m.weights.h5")
    with h5py.File(weights, "r+") as handle:
        kernel = handle["layers/functional/layers/dense_1/vars/0"]
        kernel[0, 0] = kernel[0, 0] + 1.0
    table = bridge.compare(model, weights, reference=REF / "nested_functional.npz")
    assert table.first_divergent == "encoder/enc_a"
    assert table.rows[0].ok  # enc_dense untouched


def test_layers_missing_from_an_older_reference_are_listed(tmp_path, capsys):
    """A reference without the nested layers (written before they were recorded): the layers
    it lacks are listed as not compared, never dropped silently."""
    arrays, meta = read_reference(REF / "nested_functional.npz")
    meta["layers"] = [e for e in meta["layers"] if "/" not in e["name"]]
    kept = {k: v for k, v in arrays.items() if "/" not in k}
    kept[META_KEY] = np.array(json.dumps(meta))
    old = tmp_path / "old.npz"
    np.savez(old, **kept)
    model = MODELS / "nested_functional.json"
    weights = MODELS / "nested_functional.weights.h5"
    table = bridge.compare(model, weights, reference=old)
    assert [row.layer for row in table.rows] == [k for k in NESTED_LAYERS if "/" not in k]
    assert table.unreferenced == [k for k in NESTED_LAYERS if "/" in k]
    assert main(["compare", str(model), str(weights), "--reference", str(old)]) == 0
    out = capsys.readouterr().out
    assert "5 layer(s) not in the reference, not compared: encoder/enc_dense" in out


def test_inputs_override_and_progress(tmp_path):
    """Given inputs are used instead of the reference's: other inputs, so every layer differs."""
    seen = []
    data = read_reference(REF / "seq_cnn.npz")[0]
    np.save(tmp_path / "x.npy", data[f"{INPUT_PREFIX}input_layer"][::-1].copy())
    table = bridge.compare(
        MODELS / "seq_cnn.keras",
        inputs=tmp_path / "x.npy",
        reference=REF / "seq_cnn.npz",
        progress=lambda text, done: seen.append(done),
    )
    assert table.first_divergent == "conv1"
    fractions = [d for d in seen if d is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 9


def test_table_saves_and_loads(tmp_path):
    model, weights = perturbed_seq_cnn(tmp_path)
    table = bridge.compare(model, weights, reference=REF / "seq_cnn.npz")
    saved = json.loads(table.save(tmp_path / "t.json").read_text())
    assert saved["format"] == "bridge-compare" and saved["first_divergent"] == "conv2"
    assert set(saved["rows"][0]) == {
        "layer",
        "class",
        "shape",
        "max_abs",
        "max_rel",
        "cosine",
        "ok",
    }
    assert saved["tolerance"] == {"atol": 1e-5, "rtol": 1e-3, "cosine": 0.999}
    again = load(tmp_path / "t.json")
    assert isinstance(again, CompareTable) and again.to_dict() == saved


# --- the tolerance rule ------------------------------------------------------------------------


def test_tolerance_is_relative_to_the_layer_scale():
    ref = np.array([100.0, -50.0, 0.0])
    assert measure("a", "X", ref + 0.09, ref, Tolerance()).ok  # 0.09 <= 1e-5 + 1e-3 * 100
    row = measure("a", "X", ref + 0.11, ref, Tolerance())
    assert not row.ok and row.max_rel == pytest.approx(0.11 / 100)
    small = np.array([1e-3, -2e-3])
    assert not measure("b", "X", small + 1e-4, small, Tolerance()).ok
    # an all-but-zero reference: the cosine of noise is not held against it
    assert measure("c", "X", np.array([1e-7, -1e-7]), np.zeros(2), Tolerance()).ok


def test_cosine_catches_a_sign_flip_a_loose_rtol_lets_through():
    ref = np.linspace(-1.0, 1.0, 101)
    loose = Tolerance(rtol=2.0)
    assert measure("a", "X", 1.5 * ref, ref, loose).ok  # same direction
    row = measure("a", "X", -ref, ref, loose)  # abs error 2 <= 2 * scale, direction wrong
    assert not row.ok and row.cosine == pytest.approx(-1.0)


def test_shape_and_nonfinite_mismatches_diverge():
    row = measure("a", "X", np.zeros((2, 3)), np.zeros((2, 4)), Tolerance())
    assert not row.ok and row.max_abs is None and "shape" in row.note
    row = measure("a", "X", np.array([np.nan, 1.0]), np.array([1.0, 1.0]), Tolerance())
    assert not row.ok and row.note == "non-finite values"
    assert measure("a", "X", np.array([np.inf, 1.0]), np.array([np.inf, 1.0]), Tolerance()).ok


# --- float build against its int8 build ----------------------------------------------------


def _needs_quantize() -> None:
    import inspect

    if "quantize" not in inspect.signature(bridge.build).parameters:
        pytest.skip("bridge.build has no quantize= yet")


def test_int8_build_against_float_build():
    """Well calibrated, every layer stays within the int8 tolerance; calibrated on inputs 20
    times too small, the first layer's input is clipped and it diverges first."""
    _needs_quantize()
    x = read_reference(REF / "seq_cnn.npz")[0][f"{INPUT_PREFIX}input_layer"]
    table = bridge.compare(MODELS / "seq_cnn.keras", inputs=x, reference="int8")
    assert table.ok and [row.layer for row in table.rows] == SEQ_LAYERS
    assert table.tolerance == Tolerance(rtol=0.05, cosine=0.99)
    assert all(0 < row.max_rel < 0.05 for row in table.rows)  # quantized: not bit-equal
    clipped = bridge.compare(
        MODELS / "seq_cnn.keras", inputs=x, reference="int8", calibration=x * 0.05
    )
    assert clipped.first_divergent == "conv1" and clipped.rows[0].max_rel > 0.2


# --- TFLite ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn_float32", "cnn_int8"])
def test_tflite_against_litert_tensors(name):
    table = bridge.compare(
        FIXTURES / "tflite" / f"{name}.tflite", reference=REF / f"{name}.litert.npz"
    )
    assert len(table.rows) >= 5 and table.ok, table.to_dict()
    assert table.rows[0].class_name in ("CONV_2D", "QUANTIZE")
    assert "LiteRT" in table.reference


def test_tflite_int8_one_step_off_is_within_and_five_are_not(tmp_path):
    """Integer tensors are compared dequantized, one quantization step allowed."""
    arrays, meta = read_reference(REF / "cnn_int8.litert.npz")
    name = meta["layers"][1]["name"]
    for steps, ok in ((1, True), (5, False)):
        changed = dict(arrays)
        value = changed[name].astype(np.int32)
        value.flat[7] = np.clip(value.flat[7] + (steps if value.flat[7] < 0 else -steps), -128, 127)
        changed[name] = value.astype(np.int8)
        changed[META_KEY] = np.array(json.dumps(meta))
        np.savez(tmp_path / "ref.npz", **changed)
        table = bridge.compare(
            FIXTURES / "tflite" / "cnn_int8.tflite", reference=tmp_path / "ref.npz"
        )
        assert table.ok is ok and table.first_divergent == (None if ok else name)


def test_tflite_against_litert_live():
    pytest.importorskip("ai_edge_litert")
    table = bridge.compare(
        FIXTURES / "tflite" / "cnn_float32.tflite",
        inputs=np.load(FIXTURES / "tflite" / "cnn_float32.npz")["input_0"],
        reference="litert",
    )
    assert table.ok and len(table.rows) >= 5


# --- the command line --------------------------------------------------------------------------


def test_cli_exit_codes_and_the_divergent_line(tmp_path, capsys):
    assert (
        main(["compare", str(MODELS / "seq_cnn.keras"), "--reference", str(REF / "seq_cnn.npz")])
        == 0
    )
    out = capsys.readouterr().out
    assert "all 9 layers agree" in out and "first divergent" not in out
    model, weights = perturbed_seq_cnn(tmp_path)
    code = main(
        ["compare", str(model), str(weights), "--reference", str(REF / "seq_cnn.npz"),
         "--json", str(tmp_path / "t.json")]
    )  # fmt: skip
    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    assert "first divergent layer: conv2" in lines
    assert load(tmp_path / "t.json").first_divergent == "conv2"
    # a looser tolerance accepts the change
    loose = ["compare", str(model), str(weights), "--reference", str(REF / "seq_cnn.npz")]
    assert main([*loose, "--rtol", "10", "--cosine", "0"]) == 0


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    return err


def test_cli_bad_inputs_exit_2_naming_the_file(tmp_path, capsys):
    seq = str(MODELS / "seq_cnn.keras")
    assert main(["compare", seq, "--reference", str(tmp_path / "none.npz")]) == 2
    assert "none.npz: no such file" in _error(capsys)
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    assert main(["compare", seq, "--reference", str(tmp_path / "plain.npz")]) == 2
    assert "plain.npz" in _error(capsys)
    # a reference written for another model
    assert main(["compare", seq, "--reference", str(REF / "nested_functional.npz")]) == 2
    assert "nested_functional.npz" in _error(capsys)
    # an inputs file without the model's input
    np.savez(tmp_path / "x.npz", other=np.zeros((2, 16, 16, 3), "float32"))
    args = ["compare", seq, "--reference", str(REF / "seq_cnn.npz"), "--inputs"]
    assert main([*args, str(tmp_path / "x.npz")]) == 2
    assert "x.npz" in _error(capsys)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    assert main([*args, str(tmp_path / "obj.npy")]) == 2
    assert "obj.npy" in _error(capsys)
    np.save(tmp_path / "small.npy", np.zeros((2, 8, 8, 3), "float32"))
    assert main([*args, str(tmp_path / "small.npy")]) == 2
    assert "small.npy: input 'input_layer' must have shape [2, 16, 16, 3]" in _error(capsys)
    missing = str(tmp_path / "missing.keras")
    assert main(["compare", missing, "--reference", str(REF / "seq_cnn.npz")]) == 2
    assert "missing.keras" in _error(capsys)
    # no reference at all, nothing else to compare with
    assert main(["compare", seq, "--inputs", str(tmp_path / "x.npz")]) == 2
    assert "nothing to compare with" in _error(capsys)


# --- two targets: an aarch64 bundle under qemu -------------------------------------------------


def test_aarch64_bundle_under_qemu_against_native(tmp_path):
    needs_tools(resolve("aarch64"), "qemu-aarch64")
    inputs = read_reference(REF / "seq_cnn.npz")[0][f"{INPUT_PREFIX}input_layer"]
    table = bridge.compare(
        MODELS / "seq_cnn.keras", inputs=inputs, target="aarch64", bundle_out=tmp_path / "b"
    )
    assert table.ok and [row.layer for row in table.rows] == SEQ_LAYERS
    assert "aarch64" in table.reference
    # the same bundle's outputs, as the runner on a device writes them; one layer changed
    qemu = shutil.which("qemu-aarch64")
    outputs = run_bundle(tmp_path / "b", [inputs], qemu, "-L", "/usr/aarch64-linux-gnu")
    assert len(outputs) == len(SEQ_LAYERS)
    outputs[SEQ_LAYERS.index("pool")] *= 1.1
    folder = tmp_path / "device"
    folder.mkdir()
    for index, value in enumerate(outputs):
        np.save(folder / f"output{index}.npy", value)
    table = bridge.compare(
        MODELS / "seq_cnn.keras", inputs=inputs, target="aarch64", runner_outputs=folder
    )
    assert table.first_divergent == "pool"
    # against Keras, the aarch64 bundle's layers as the candidate
    table = bridge.compare(
        MODELS / "seq_cnn.keras", target="aarch64", reference=REF / "seq_cnn.npz"
    )
    assert table.ok and table.reference.endswith("bridge built for aarch64")


def test_tflite_int8_aarch64_bundle_bit_exact_with_native():
    needs_tools(resolve("aarch64"), "qemu-aarch64")
    x = np.load(FIXTURES / "tflite" / "cnn_int8.npz")["input_0"]
    table = bridge.compare(FIXTURES / "tflite" / "cnn_int8.tflite", inputs=x, target="aarch64")
    assert len(table.rows) >= 5 and all(row.max_abs == 0 for row in table.rows)


def test_tflite_without_litert_says_so_before_building(monkeypatch):
    import importlib.util

    from bridge.errors import ModelFileError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ai_edge_litert" else real(name, *a),
    )
    monkeypatch.setattr("bridge.api.build", lambda *a, **k: pytest.fail("built in vain"))
    x = np.load(FIXTURES / "tflite" / "cnn_float32.npz")["input_0"]
    with pytest.raises(ModelFileError, match="needs ai-edge-litert"):
        bridge.compare(FIXTURES / "tflite" / "cnn_float32.tflite", inputs=x)


def test_compare_is_callable_and_loads_either_way():
    import bridge.compare as module

    assert callable(module) and module.load is load and bridge.compare.load is load


# --- python -m bridge.reference ----------------------------------------------------------------

NO_TVM = (
    "import runpy, sys; sys.modules['tvm'] = None; sys.modules['tvm_ffi'] = None; "
    "sys.argv = ['bridge.reference', *sys.argv[1:]]; "
    "runpy.run_module('bridge.reference', run_name='__main__')"
)


def _without_tvm(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [python, "-c", NO_TVM, *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_reference_module_imports_no_tvm(tmp_path):
    """Importing TVM fails in the child: bridge.reference reaches Keras's absence, not TVM."""
    code = (
        "import sys; import bridge.reference; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tvm', 'tvm_ffi', 'h5py')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"
    np.save(tmp_path / "x.npy", np.zeros((1, 16, 16, 3), "float32"))
    result = _without_tvm(
        str(MODELS / "seq_cnn.keras"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.npz")
    )
    if "Keras cannot" in result.stderr or result.returncode == 0:
        pytest.skip("Keras is installed here: the real run is the test below")
    assert result.returncode == 2, result.stderr
    assert "needs Keras 3 or tf.keras 2.x" in result.stderr and "tvm" not in result.stderr


@pytest.mark.parametrize(
    "model, layer",
    [
        (KERAS3 / "errors" / "lambda_model.keras", "times_two"),  # Keras 3 zip
        (KERAS3 / "errors" / "lambda_model.json", "times_two"),  # architecture JSON
        (KERAS2 / "custom" / "custom_scale.h5", "double_minus_one"),  # tf.keras 2 HDF5 (h5py)
    ],
)
def test_reference_refuses_lambda_without_running_it(model, layer):
    """Found in the config before Keras is imported (here, where Keras is not installed)."""
    with pytest.raises(UnsupportedModelError, match=rf"{layer} \(Lambda\): is a Lambda layer"):
        load_model(model)


KERAS_PYTHON = ROOT / "benchmarks" / ".venv" / "bin" / "python"


def test_reference_written_by_keras_without_tvm(tmp_path):
    """The real thing, where the reference environment exists: Keras 3 with TVM unimportable."""
    if not KERAS_PYTHON.exists():
        pytest.skip("no Keras environment (benchmarks/setup_env.sh)")
    np.save(tmp_path / "x.npy", np.load(MODELS / "seq_noinput.npz")["input_0"])
    result = _without_tvm(
        str(MODELS / "seq_noinput.keras"),
        str(tmp_path / "x.npy"),
        "-o",
        str(tmp_path / "r.npz"),
        python=str(KERAS_PYTHON),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    arrays, meta = read_reference(tmp_path / "r.npz")
    assert [entry["name"] for entry in meta["layers"]] == ["d1", "d2", "d3"]
    # Keras on this CPU vs the fixture's: float32 sums may round differently (seen: 1 ulp)
    want = np.load(MODELS / "seq_noinput.npz")["output_0"]
    np.testing.assert_allclose(arrays["d3"], want, rtol=1e-6, atol=1e-6)
    assert bridge.compare(MODELS / "seq_noinput.keras", reference=tmp_path / "r.npz").ok

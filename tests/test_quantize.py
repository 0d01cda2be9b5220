"""quantize="int8" for Keras models (bridge.quant.build / keras / calibrate).

What is checked, and the bounds:

- accuracy: the digits CNN of examples/ (trained), calibrated on 256 training images, classifies
  the 450 held-out images (tests/fixtures/quant/digits.npz, the split train_digits.py tested
  on) within 0.5 percentage points of its float32 accuracy (98.2% both ways when written).
- LiteRT: cnn, mobile and branches (the Keras models tests/fixtures/tflite/*_int8.tflite were
  converted from, calibrated on the same 64 representative samples) are at least as close to
  Keras float32 as LiteRT's int8 file, output by output, on the int8 fixture's input (when
  written, max |error| against Keras: cnn 0.0013 vs LiteRT 0.0019; mobile 0.0057 vs 0.0057
  (bridge's int8 output equals LiteRT's there); branches 0.0008 vs 0.0025 (probabilities) and
  0.0097 vs 0.0185 (scores)).
- agreement with bridge's float build on the calibration samples, as the build records it:
  probabilities within 0.06, scores/logits within 3% of the output's range, top-1 >= 96%.
- the float layers the report lists, calibration errors (typed, naming the input, before any
  work), min/max vs percentile ranges, outputs= (intermediate layers, dequantized), export +
  load, batch_size=4, and the CLI.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from conftest import FIXTURES, run_bundle

import bridge
from bridge.cli import main
from bridge.errors import CalibrationError
from bridge.quant import build as quant_build
from bridge.quant.calibrate import Ranges, calibration_arrays, observe, quantization
from bridge.signature import TensorInfo

QUANT = FIXTURES / "quant"
DIGITS = FIXTURES.parents[1] / "examples" / "digits" / "digits_cnn.keras"
DIGITS_DATA = QUANT / "digits.npz"
LITERT = FIXTURES / "tflite"


def digits_images(kind: str) -> np.ndarray:
    return np.load(DIGITS_DATA)[f"{kind}_pixels"][..., None].astype(np.float32) / 16.0


def representative(stem: str, shapes: list[tuple]) -> list[np.ndarray]:
    """make_tflite.py's representative dataset for ``stem``: 64 draws per input."""
    rng = np.random.default_rng(zlib.crc32(stem.encode()) + 2)
    drawn: list[list[np.ndarray]] = [[] for _ in shapes]
    for _ in range(64):
        for store, shape in zip(drawn, shapes):
            store.append(rng.standard_normal(shape).astype(np.float32))
    return [np.concatenate(parts) for parts in drawn]


@pytest.fixture(scope="module")
def digits_int8():
    return bridge.build(
        DIGITS, batch_size=None, quantize="int8", calibration=digits_images("calibration")
    )


@pytest.fixture(scope="module")
def digits_float():
    return bridge.build(DIGITS, batch_size=None)


@pytest.fixture(scope="module")
def fixture_models():
    """(int8 model, calibration samples) for cnn, mobile and branches."""
    built = {}
    for stem in ("cnn", "mobile", "branches"):
        record = np.load(QUANT / f"{stem}.npz")
        shapes = [record[k].shape for k in sorted(record.files) if k.startswith("input_")]
        samples = representative(stem, shapes)
        calibration = samples if len(samples) > 1 else samples[0]
        built[stem] = bridge.build(
            QUANT / f"{stem}.keras", quantize="int8", calibration=calibration
        )
    return built


# --- accuracy and closeness ------------------------------------------------------------------


def test_digits_accuracy_within_half_a_point(digits_int8, digits_float):
    data = np.load(DIGITS_DATA)
    images = digits_images("test")
    labels = data["test_labels"]
    float_accuracy = np.mean(digits_float(images).argmax(axis=1) == labels)
    int8_accuracy = np.mean(digits_int8(images).argmax(axis=1) == labels)
    assert float_accuracy > 0.95
    assert abs(int8_accuracy - float_accuracy) <= 0.005, (float_accuracy, int8_accuracy)


def test_digits_report(digits_int8):
    info = digits_int8.metadata["quantization"]
    assert info["calibration_samples"] == 256
    assert info["integer_layers"] == 9  # conv1 bn1 conv2 bn2 pool conv3 gap dropout probs
    assert info["float_layers"] == [
        {"layer": "probs", "class": "Dense", "reason": "activation 'softmax' runs in float"}
    ]
    (row,) = info["agreement"]
    assert row["output"] == "probs" and row["max_abs_error"] < 0.06
    assert row["top1_agreement"] >= 0.99


@pytest.mark.parametrize("stem", ["cnn", "mobile", "branches"])
def test_at_least_as_close_to_keras_as_litert(fixture_models, stem):
    record = np.load(QUANT / f"{stem}.npz")
    litert = np.load(LITERT / f"{stem}_int8.npz")
    inputs = [record[f"input_{i}"] for i in range(len(fixture_models[stem].inputs))]
    got = fixture_models[stem](*inputs)
    got = got if isinstance(got, list) else [got]
    for j, value in enumerate(got):
        keras = record[f"keras_{j}"]
        k = int(record["litert_order"][j])
        scale, zero = litert[f"scale_{k}"], litert[f"zero_point_{k}"]
        theirs = (litert[f"output_{k}"].astype(np.float32) - zero) * scale
        ours_error = np.abs(value - keras).max()
        their_error = np.abs(theirs - keras).max()
        assert ours_error <= their_error + 1e-6, (j, ours_error, their_error)


FLOAT_LAYERS = {
    "cnn": [("probs", "Softmax")],
    "mobile": [],  # its SeparableConv2D too: depthwise, then pointwise
    "branches": [("probs", "Softmax")],
}


@pytest.mark.parametrize("stem", ["cnn", "mobile", "branches"])
def test_agreement_with_float_build(fixture_models, stem):
    info = fixture_models[stem].metadata["quantization"]
    assert [(r["layer"], r["class"]) for r in info["float_layers"]] == FLOAT_LAYERS[stem]
    assert info["integer_layers"] > 0
    for row in info["agreement"]:
        if row["output"] == "probs":
            assert row["max_abs_error"] < 0.06, row
        else:  # scores: within 3% of their range on the calibration samples
            low, high = info["ranges"][
                next(k for k in info["ranges"] if k.startswith(row["output"]))
            ]
            assert row["max_abs_error"] < 0.03 * (high - low), row
        assert row.get("top1_agreement", 1.0) >= 0.96, row


def test_integer_kernels_in_the_module():
    """The int8 module computes convolutions and dense layers as int8 x int8 -> int32."""
    quantizer = quant_build.prepare(
        QUANT / "cnn.keras", calibration=representative("cnn", [(1, 32, 32, 3)])[0][:8]
    )
    translation = quantizer.translate()
    text = translation.mod.script()
    assert text.count('out_dtype="int32"') >= 3  # conv1, conv2, logits
    assert "R.nn.conv2d" in text and '"int8"' in text
    # the float weights of integer layers are no parameters (their int8 copies are constants)
    assert translation.params == {}
    assert len(translation.mod["main"].params) == 1


# --- outputs=, downstream --------------------------------------------------------------------


def test_outputs_are_dequantized_intermediates():
    calibration = representative("cnn", [(1, 32, 32, 3)])[0]
    names = ["conv1", "conv2", "bn", "gap"]
    q = bridge.build(QUANT / "cnn.keras", outputs=names, quantize="int8", calibration=calibration)
    f = bridge.build(QUANT / "cnn.keras", outputs=names)
    assert [o.name for o in q.outputs] == names
    assert all(o.dtype == "float32" for o in q.outputs)
    x = np.load(QUANT / "cnn.npz")["input_0"]
    for name, got, want in zip(names, q(x), f(x)):
        assert got.shape == want.shape
        span = float(want.max() - want.min())
        assert np.abs(got - want).max() < 0.05 * span, name
    # conv2 is requested, so its BatchNormalization is not folded into it
    assert q.metadata["quantization"]["integer_layers"] == 7


def test_export_load_and_batch_of_four(digits_int8, tmp_path):
    images = digits_images("test")[:8]
    model = bridge.build(
        DIGITS,
        batch_size=4,
        quantize="int8",
        calibration=digits_images("calibration")[:50],  # any count, not a multiple of 4
        separate_params=True,
    )
    assert model.inputs[0].shape == (4, 8, 8, 1)
    got = np.concatenate([model(images[:4]), model(images[4:])])
    library = model.export(tmp_path / "digits_int8.so")
    loaded = bridge.load(library)
    again = np.concatenate([loaded(images[:4]), loaded(images[4:])])
    np.testing.assert_array_equal(got, again)
    assert loaded.metadata["quantization"]["calibration_samples"] == 50
    # the same model with another calibration set agrees closely
    assert np.abs(got - digits_int8(images)).max() < 0.1


def test_bundle_runs_int8_without_python(tmp_path):
    """A portable int8 bundle (float32 .npy in and out, as a float build's) runs in ./run."""
    images = digits_images("test")[:2]
    model = bridge.build(
        DIGITS,
        target="x86-64",
        batch_size=2,
        quantize="int8",
        calibration=digits_images("calibration")[:32],
    )
    model.export(tmp_path / "bundle", bundle=True)
    (got,) = run_bundle(tmp_path / "bundle", [images])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, model(images), rtol=1e-5, atol=1e-6)


def test_input_shapes_fix_unknown_dimensions():
    """A model with a variable time axis: input_shapes= fixes (or names) it for the int8 build
    as for a float one; calibration samples are checked against the fixed size."""
    variable = FIXTURES / "keras3" / "variable" / "conv1d.keras"
    samples = np.random.default_rng(3).standard_normal((16, 7, 8)).astype(np.float32)
    with pytest.raises(CalibrationError, match=r"'signal': shape \(16, 6, 8\), the model takes"):
        bridge.build(variable, input_shapes={"signal": (1, 7, 8)}, quantize="int8",
                     calibration=samples[:, :6])  # fmt: skip
    model = bridge.build(
        variable, input_shapes={"signal": (1, "T", 8)}, quantize="int8", calibration=samples
    )
    assert model.inputs[0].symbols == (None, "T", None)
    x = np.load(FIXTURES / "keras3" / "variable" / "conv1d.t12.npz")["input_0"][:1]
    reference = bridge.build(variable, input_shapes={"signal": (1, "T", 8)})
    for got, want in zip(model(x), reference(x)):
        assert np.abs(got - want).max() < 0.05 * float(want.max() - want.min())


def test_nested_shared_model_with_subtract():
    """A model nesting a model it calls twice, and a Subtract (integer: ``a + (-b)``)."""
    models = FIXTURES / "keras3" / "models"
    record = np.load(models / "nested_shared.npz")
    inputs = [record[k] for k in sorted(record.files) if k.startswith("input")]
    rng = np.random.default_rng(5)
    samples = [np.concatenate([x + 0.1 * rng.standard_normal(x.shape)] * 8) for x in inputs]
    names = ["sub", "out"]
    model = bridge.build(
        models / "nested_shared.keras",
        batch_size=None,
        outputs=names,
        quantize="int8",
        calibration=samples,
    )
    assert model.metadata["quantization"]["float_layers"] == []
    reference = bridge.build(models / "nested_shared.keras", batch_size=None, outputs=names)
    for bound, got, want in zip((0.03, 0.08), model(*inputs), reference(*inputs)):
        assert np.abs(got - want).max() < bound * float(want.max() - want.min())


# --- calibration data ------------------------------------------------------------------------

IMAGE = TensorInfo("image", (None, 8, 8, 1), "float32")
TWO = [
    TensorInfo("features", (None, 12, 12, 4), "float32"),
    TensorInfo("side", (None, 6), "float32"),
]


def test_calibration_forms():
    x = np.random.default_rng(0).random((10, 8, 8, 1), np.float32)
    for form in (x, [x], list(x[i : i + 3] for i in range(0, 10, 3)), {"image": x}):
        (joined,) = calibration_arrays(form, [IMAGE])
        np.testing.assert_array_equal(joined, x)
    joined = calibration_arrays(iter([x[:4], x[4:]]), [IMAGE])[0]
    np.testing.assert_array_equal(joined, x)
    a, b = np.zeros((5, 12, 12, 4)), np.ones((5, 6))
    for form in (
        [a, b],
        {"side": b, "features": a},
        [[a[:2], b[:2]], {"features": a[2:], "side": b[2:]}],
    ):
        got = calibration_arrays(form, TWO)
        assert [g.shape for g in got] == [(5, 12, 12, 4), (5, 6)]
        assert got[0].dtype == np.float32


@pytest.mark.parametrize(
    ("samples", "inputs", "message"),
    [
        (np.zeros((4, 8, 8, 3), np.float32), [IMAGE], "'image': shape (4, 8, 8, 3)"),
        (np.zeros((8, 8, 1), np.float32), [IMAGE], "'image': shape (8, 8, 1)"),
        (np.array([["a"] * 8] * 8), [IMAGE], "'image': dtype <U1 is not numeric"),
        ({"picture": np.zeros((4, 8, 8, 1))}, [IMAGE], "'picture' is not a model input"),
        ({"features": np.zeros((4, 12, 12, 4))}, TWO, "'side' is missing"),
        (np.zeros((0, 8, 8, 1), np.float32), [IMAGE], "'image' has no samples"),
        ([], [IMAGE], "empty"),
        (np.full((2, 8, 8, 1), np.nan, np.float32), [IMAGE], "'image': 128 values are NaN"),
        (np.array([np.inf] * 64, np.float32).reshape(1, 8, 8, 1), [IMAGE], "'image': 64 values"),
        ([np.zeros((2, 12, 12, 4)), np.zeros((3, 6))], TWO, "different sample counts"),
        (
            iter([[np.zeros((8, 8, 1)).tolist(), np.zeros((7, 8, 1)).tolist()]]),
            [IMAGE],
            "'image': not a rectangular array",
        ),
        ([np.zeros((2, 8, 8, 1)), np.zeros((2, 4, 4, 1))], [IMAGE], "'image': shape (2, 4, 4, 1)"),
        (3, [IMAGE], "calibration samples of type int"),
        (None, [IMAGE], "needs calibration samples"),
    ],
)
def test_calibration_errors(samples, inputs, message):
    with pytest.raises(CalibrationError) as caught:
        calibration_arrays(samples, inputs)
    assert message in str(caught.value)


def test_bad_calibration_fails_before_any_work(monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("translation started")

    monkeypatch.setattr(quant_build, "_translate", no_work)
    monkeypatch.setattr(bridge.api, "_load_and_translate", no_work)
    bad = np.zeros((4, 8, 8, 1), np.float32)
    bad[1, 2, 3, 0] = np.inf
    with pytest.raises(CalibrationError, match="calibration input 'image': 1 values are NaN"):
        bridge.build(DIGITS, quantize="int8", calibration=bad)
    with pytest.raises(CalibrationError, match="calibration_method='median'"):
        bridge.build(DIGITS, quantize="int8", calibration=bad[:1], calibration_method="median")
    with pytest.raises(CalibrationError, match="quantize='int4'"):
        bridge.build(DIGITS, quantize="int4", calibration=bad[:1])
    with pytest.raises(CalibrationError, match="quantizes Keras models"):
        bridge.build(LITERT / "cnn_float32.tflite", quantize="int8", calibration=bad)


# --- ranges ----------------------------------------------------------------------------------


def test_minmax_and_percentile_ranges():
    """Min/max keeps the outlier; the 99th percentile cuts it and keeps the bulk."""
    rng = np.random.default_rng(1)
    values = rng.uniform(-1.0, 1.0, (64, 100)).astype(np.float32)
    values[7, 3] = 50.0

    def run(chunk):
        return [chunk[0], chunk[0] * 2.0]

    args = ([values], ["a"], 1, 16)
    minmax, extra = observe(run, *args)
    assert minmax.get("a") == (float(values.min()), 50.0)
    np.testing.assert_array_equal(extra[0], values * 2.0)
    cut, _ = observe(run, *args, method="percentile", percentile=99.0)
    low, high = cut.get("a")
    assert -1.0 <= low < -0.95 and 0.95 < high < 1.1
    assert observe(run, *args, method="percentile", percentile=100.0)[0].get("a")[1] == 50.0
    with pytest.raises(CalibrationError, match="percentile=20"):
        observe(run, *args, method="percentile", percentile=20)


def test_quantization_holds_zero():
    assert quantization(0.0, 2.55) == (pytest.approx(0.01), -128)
    scale, zero = quantization(-1.0, 1.0)
    assert scale == pytest.approx(2 / 255) and zero == 0
    assert quantization(0.5, 1.0)[1] == -128  # widened to hold 0
    assert Ranges({}, {}).get("x") is None


def test_percentile_build_narrows_ranges(fixture_models):
    calibration = representative("cnn", [(1, 32, 32, 3)])[0]
    model = bridge.build(
        QUANT / "cnn.keras",
        quantize="int8",
        calibration=calibration,
        calibration_method="percentile",
        percentile=99.0,
    )
    narrow = model.metadata["quantization"]["ranges"]
    wide = fixture_models["cnn"].metadata["quantization"]["ranges"]
    assert narrow.keys() == wide.keys()
    assert all(
        narrow[k][0] >= wide[k][0] - 1e-6 and narrow[k][1] <= wide[k][1] + 1e-6 for k in wide
    )
    assert any(narrow[k][1] < wide[k][1] - 1e-3 for k in wide)
    assert model.metadata["quantization"]["percentile"] == 99.0


# --- CLI -------------------------------------------------------------------------------------


def test_cli_quantize(tmp_path, capsys):
    data = tmp_path / "calibration.npz"
    np.savez(data, image=digits_images("calibration")[:32])
    code = main(
        [
            "build",
            str(DIGITS),
            "--quantize",
            "int8",
            "--calibration",
            str(data),
            "-o",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert (
        "quantized   int8 (minmax, 32 samples): 9 layers on integer kernels, 1 in float" in printed
    )
    assert "float     probs (Dense): activation 'softmax' runs in float" in printed
    assert "agreement   probs: max |error|" in printed and "top-1" in printed
    assert (tmp_path / "digits_cnn.so").exists()


def test_cli_calibration_errors(tmp_path, capsys):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, picture=np.zeros((2, 8, 8, 1)), other=np.zeros(3))
    assert main(["build", str(DIGITS), "--quantize", "int8", "--calibration", str(wrong)]) == 2
    assert "calibration input 'picture' is not a model input" in capsys.readouterr().err
    assert main(["build", str(DIGITS), "--quantize", "int8"]) == 2
    assert "needs --calibration" in capsys.readouterr().err
    assert main(["build", str(DIGITS), "--calibration", str(wrong)]) == 2
    assert "--calibration is used with --quantize" in capsys.readouterr().err

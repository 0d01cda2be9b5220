"""Inputs with unknown dimensions besides the batch (issue 14, item 1): ``input_shapes=`` fixes
them or keeps them symbolic; one symbolic build runs every length, in Python, loaded from its
library and in the native runner. References: Keras 3.15 and LiteRT 2.3 at two lengths
(``tests/fixtures/make_variable_length.py``). Tolerances: ``assert_matches``' defaults, rtol
1e-4 and atol 1e-4 times the reference's largest magnitude (at least 1)."""

from __future__ import annotations

import json

import pytest

import bridge
from bridge.cli import main
from bridge.errors import InputError, UnsupportedModelError
from tests.conftest import FIXTURES, KERAS3, assert_matches, reference, run_bundle

VARIABLE = KERAS3 / "variable"
TFLITE = FIXTURES / "tflite" / "variable"
LENGTHS = (7, 12)
# model -> its input's shape with the time axis "T" (Keras fixtures run batch 2)
KERAS_MODELS = {
    "recurrent": (2, "T", 8),
    "bidirectional": (2, "T", 8),
    "masked_lstm": (2, "T"),
    "conv1d": (2, "T", 8),
    "attention": (2, "T"),
}


def refs(folder, name: str, length: int):
    return reference(folder / f"{name}.t{length}.npz")


def with_length(shape: tuple, length) -> tuple:
    return tuple(length if d == "T" else d for d in shape)


@pytest.mark.parametrize("name", list(KERAS_MODELS))
def test_symbolic_length_runs_every_length(name):
    """One build with the time axis symbolic matches Keras at two lengths."""
    model = bridge.build(VARIABLE / f"{name}.keras", batch_size=2, input_shapes=KERAS_MODELS[name])
    assert model.inputs[0].shape[1] is None and model.inputs[0].symbols[1] == "T"
    for length in LENGTHS:
        inputs, outputs = refs(VARIABLE, name, length)
        assert_matches(model(*inputs), outputs)


@pytest.mark.parametrize("name", ["recurrent", "conv1d"])
def test_fixed_length_by_name_and_by_position(name):
    inputs, outputs = refs(VARIABLE, name, 12)
    shape = with_length(KERAS_MODELS[name], 12)
    given = {"frames": shape} if name == "recurrent" else shape  # conv1d's input is "signal"
    model = bridge.build(VARIABLE / f"{name}.keras", batch_size=2, input_shapes=given)
    assert model.inputs[0].shape == shape and not model.inputs[0].symbols
    assert_matches(model(*inputs), outputs)
    with pytest.raises(InputError, match=r"must have shape \[2, 12, 8\], got \[2, 7, 8\]"):
        model(*refs(VARIABLE, name, 7)[0])


def test_two_inputs_share_a_symbol():
    """A list of shapes by position; both inputs name T, so their lengths must agree."""
    model = bridge.build(
        VARIABLE / "two_inputs.keras", batch_size=2, input_shapes=[(2, "T", 8), (2, "T", 4)]
    )
    for length in LENGTHS:
        inputs, outputs = refs(VARIABLE, "two_inputs", length)
        assert_matches(model(*inputs), outputs)
    seven, twelve = refs(VARIABLE, "two_inputs", 7)[0], refs(VARIABLE, "two_inputs", 12)[0]
    with pytest.raises(InputError, match=r"'extra' has T = 12 .* 'frames' has T = 7"):
        model(seven[0], twelve[1])


def test_symbolic_batch_and_length():
    """batch_size=None with a symbolic length: both dimensions symbolic, one build."""
    model = bridge.build(VARIABLE / "recurrent.keras", batch_size=None, input_shapes=(None, "T", 8))
    assert model.inputs[0].symbols == ("batch", "T", None)
    inputs, outputs = refs(VARIABLE, "recurrent", 7)
    assert_matches(model(inputs[0][:1]), [o[:1] for o in outputs])
    inputs, outputs = refs(VARIABLE, "recurrent", 12)
    assert_matches(model(*inputs), outputs)


def test_exported_library_and_bundle_run_every_length(tmp_path):
    """bridge.load of the library and the native runner (x86 bundle), two lengths each; the
    sidecar records the symbol and the input_shapes asked for."""
    model = bridge.build(
        VARIABLE / "attention.keras", batch_size=2, input_shapes={"tokens": (2, "T")}
    )
    library = model.export(tmp_path / "lib" / "attention.so")
    meta = json.loads(library.with_name("attention.meta.json").read_text())
    assert meta["inputs"][0]["symbols"] == [None, "T"]
    assert meta["inputs"][0]["shape"] == [2, None]
    assert meta["input_shapes"] == {"tokens": [2, "T"]}
    loaded = bridge.load(library)
    folder = model.export(tmp_path / "bundle", bundle=True).parent
    assert (folder / "model.signature").read_text().splitlines()[0] == "input tokens int32 2x?"
    for length in LENGTHS:
        inputs, outputs = refs(VARIABLE, "attention", length)
        assert_matches(loaded(*inputs), outputs)
        assert_matches(run_bundle(folder, inputs), outputs)


@pytest.mark.parametrize(
    ("name", "shape"), [("sequence_features", (1, "T", 8)), ("audio_rms", (1, "T"))]
)
def test_tflite_signature_with_unknown_length(name, shape):
    """A -1 in shape_signature: refused without input_shapes, fixed like LiteRT's
    resize_tensor_input, or symbolic (one build, both lengths)."""
    path = TFLITE / f"{name}.tflite"
    with pytest.raises(
        UnsupportedModelError, match=r"unknown dimensions besides the batch.*input_shapes="
    ):
        bridge.build(path)
    fixed = bridge.build(path, input_shapes=with_length(shape, 12))
    assert_matches(fixed(*refs(TFLITE, name, 12)[0]), refs(TFLITE, name, 12)[1])
    symbolic = bridge.build(path, input_shapes=shape)
    for length in LENGTHS:
        inputs, outputs = refs(TFLITE, name, length)
        assert_matches(symbolic(*inputs), outputs)


def test_tflite_known_dimension_must_agree():
    with pytest.raises(InputError, match=r"input 'frames': dimension 2 is 8 in the model"):
        bridge.build(TFLITE / "sequence_features.tflite", input_shapes={"frames": (1, 10, 9)})


# --- errors -------------------------------------------------------------------------------------


def test_unknown_time_axis_without_input_shapes_says_how_to_fix():
    with pytest.raises(UnsupportedModelError) as error:
        bridge.build(VARIABLE / "recurrent.keras")
    (problem,) = error.value.problems
    assert problem.layer == "frames"
    assert "input_shapes={'frames': (1, 50, 8)}" in problem.reason
    assert "input_shapes={'frames': (1, 'T', 8)}" in problem.reason


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (
            {"frames": (2, 7, 9)},
            r"'frames': dimension 2 is 8 in the model \(None, None, 8\), input_shapes gives 9",
        ),
        ({"frames": (2, "T", "F")}, r"dimension 2 is 8 in the model .* gives 'F'"),
        (
            {"frames": (2, 7)},
            r"input 'frames' has rank 3 \(None, None, 8\), input_shapes gives rank 2",
        ),
        (
            {"frame": (2, 7, 8)},
            r"input_shapes names no input \['frame'\]; the model's inputs are \['frames'\]",
        ),
        ({"frames": (4, 7, 8)}, r"input_shapes gives batch 4, batch_size is 2: they must agree"),
        ({"frames": (2, -1, 8)}, r"size -1 is outside"),
        ({"frames": (2, "T x", 8)}, r"symbol 'T x' is not a name"),
        ([(2, 7, 8), (2, 7, 8)], r"input_shapes gives 2 shapes, the model has 1 inputs"),
    ],
)
def test_input_shapes_errors(shapes, message):
    with pytest.raises(InputError, match=message) as error:
        bridge.to_relax(VARIABLE / "recurrent.keras", batch_size=2, input_shapes=shapes)
    assert "recurrent.keras" in str(error.value) and "\n" not in str(error.value)


def test_one_shape_for_a_model_with_two_inputs_is_refused():
    with pytest.raises(InputError, match=r"one shape given .* 2 inputs \['frames', 'extra'\]"):
        bridge.to_relax(VARIABLE / "two_inputs.keras", input_shapes=(1, 7, 8))


def test_symbolic_batch_refuses_a_fixed_batch_in_input_shapes():
    with pytest.raises(
        InputError, match=r"batch_size=None keeps the batch symbolic: pass batch_size=3"
    ):
        bridge.to_relax(VARIABLE / "recurrent.keras", batch_size=None, input_shapes=(3, "T", 8))


def test_flatten_then_dense_needs_a_static_length():
    """Keras cannot build it either; bridge names the Dense and says what to do."""
    path = VARIABLE / "flatten_dense.keras"
    with pytest.raises(UnsupportedModelError) as error:
        bridge.to_relax(path, input_shapes=(1, "T", 4))
    (problem,) = error.value.problems
    assert (problem.layer, problem.class_name) == ("head", "Dense")
    assert "needs a static size: weight 'kernel' would have the shape (T * 4, 3)" in problem.reason
    assert "input_shapes" in problem.reason
    mod, _ = bridge.to_relax(path, input_shapes=(1, 10, 4))  # a size is fine
    assert "main" in [gv.name_hint for gv in mod.get_global_vars()]


def test_same_padding_that_depends_on_the_length_is_refused():
    """TF's 'same' padding before the window depends on length % stride for a window of 3 and
    stride 2; for a window of 2 and stride 2 (the fixtures' strided conv) it does not."""
    from bridge.convert.spatial import same_padding, symbolic_same_padding

    assert symbolic_same_padding(2, 2) == (0, 1)
    assert symbolic_same_padding(3, 1, 2) == (2, 2)
    for size in range(4, 12):  # the static padding gives TF's output length for every size
        before, after = symbolic_same_padding(2, 2)
        assert (size + before + after - 2) // 2 + 1 == -(-size // 2)
        assert same_padding(size, 2, 2)[0] == before
    with pytest.raises(ValueError, match="needs a static length"):
        symbolic_same_padding(3, 2)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_input_shape(tmp_path, capsys):
    path = str(VARIABLE / "masked_lstm.keras")
    assert main(["inspect", path]) == 1
    assert main(["inspect", path, "--input-shape", "tokens=1,T"]) == 0
    out = tmp_path / "out"
    argv = ["build", path, "--batch-size", "2", "--input-shape", "tokens=2,T", "-o", str(out)]
    assert main(argv) == 0
    assert "(2, T)" in capsys.readouterr().out
    model = bridge.load(out / "masked_lstm.so")
    for length in LENGTHS:
        inputs, outputs = refs(VARIABLE, "masked_lstm", length)
        assert_matches(model(*inputs), outputs)
    assert main(["build", path, "--input-shape", "tokens=1,2,3", "-o", str(out)]) == 2
    assert "has rank 2 (None, None), input_shapes gives rank 3" in capsys.readouterr().err
    assert main(["build", path, "--input-shape", "tokens=", "-o", str(out)]) == 2


def test_cli_input_shape_names_every_input_of_several(capsys):
    path = str(VARIABLE / "two_inputs.keras")
    argv = ["inspect", path, "--input-shape", "1,T,8", "--input-shape", "extra=1,T,4"]
    assert main(argv) == 2
    assert "name every input" in capsys.readouterr().err
    argv = ["inspect", path, "--input-shape", "frames=1,T,8", "--input-shape", "extra=1,T,4"]
    assert main(argv) == 0

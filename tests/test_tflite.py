"""TFLite models: bridge against LiteRT references (tests/fixtures/make_tflite.py and
make_tflite_real.py), the error paths, and damaged files.

Tolerances (outputs compared with LiteRT's builtin kernels):
- float32 and float16-weight models: |bridge - LiteRT| <= 1e-5 * max(1, max|LiteRT|). LiteRT
  dequantizes float16 weights to float32 before computing, as bridge does at import.
- dynamic-range models: 2e-3 * max|LiteRT|. LiteRT's hybrid kernels quantize activations to
  int8 on the fly; bridge computes in float32 with the dequantized weights (closer to the
  float model), so the two differ by activation rounding.
- full-integer models: bit-exact (0 quantization steps). bridge runs their operators on
  integer kernels with TFLite's fixed-point requantization (``bridge/quant``).
- real (MediaPipe) models: 1e-3 * max|LiteRT| per output; deep float networks with activations
  in the hundreds accumulate summation-order differences (largest seen: 6.7e-4 relative).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

import bridge
from bridge.cli import main as cli
from bridge.errors import BridgeError, ModelFileError, UnsupportedModelError

TFLITE = FIXTURES / "tflite"
CASES = sorted(p.stem for p in TFLITE.glob("*.tflite"))

sys.path.insert(0, str(FIXTURES))
import tflite_zoo as zoo  # noqa: E402


def reference(name: str) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    data = np.load(TFLITE / f"{name}.npz")
    count = lambda prefix: sum(1 for k in data.files if k.startswith(prefix))  # noqa: E731
    inputs = [data[f"input_{i}"] for i in range(count("input_"))]
    outputs = [data[f"output_{i}"] for i in range(count("output_"))]
    return inputs, outputs, data


def check_outputs(name: str, got: list[np.ndarray], expected: list[np.ndarray], data) -> None:
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, g.dtype, e.shape, e.dtype)
        if f"scale_{i}" in data.files:  # quantized output: count steps
            steps = np.abs(g.astype(np.int64) - e.astype(np.int64)).max()
            assert steps == 0, f"{name} output {i}: {steps} quantization steps from LiteRT"
            continue
        scale = max(1.0, float(np.abs(e).max()))
        tolerance = 2e-3 * float(np.abs(e).max()) if "dynamic" in name else 1e-5 * scale
        np.testing.assert_allclose(g, e, rtol=0, atol=tolerance, err_msg=f"{name} output {i}")


@pytest.mark.parametrize("name", CASES)
def test_matches_litert(name: str) -> None:
    inputs, expected, data = reference(name)
    model = bridge.build(TFLITE / f"{name}.tflite", target="llvm")
    assert [i.dtype for i in model.inputs] == [str(x.dtype) for x in inputs]
    assert [tuple(i.shape) for i in model.inputs] == [x.shape for x in inputs]
    assert model.metadata["model_type"] == "tflite"
    got = model(*inputs)
    check_outputs(name, got if isinstance(got, list) else [got], expected, data)


def test_int8_is_really_integer() -> None:
    """A guard for the int8 tests: the fixture's weights and activations are int8."""
    from bridge.tflite.reader import read_tflite

    source = read_tflite(TFLITE / "cnn_int8.tflite")
    conv = next(op for op in source.ops if op.name == "CONV_2D")
    assert [source.tensors[t].dtype for t in conv.inputs[:2]] == ["int8", "int8"]
    assert source.tensors[conv.inputs[1]].quantized


def test_separate_params_export_and_load(tmp_path: Path) -> None:
    inputs, expected, data = reference("mobile_float16")
    model = bridge.build(TFLITE / "mobile_float16.tflite", separate_params=True)
    library = model.export(tmp_path / "m.so")
    loaded = bridge.load(library)
    assert loaded.metadata["params"] and loaded.inputs == model.inputs
    check_outputs("mobile_float16", [loaded(*inputs)], expected, data)


def test_to_relax_takes_inputs_then_weights() -> None:
    mod, params = bridge.to_relax(TFLITE / "cnn_float32.tflite")
    main = mod["main"]
    assert int(main.attrs["num_input"]) == 1
    assert [p.name for p in main.params[1:]] == list(params)
    assert any(v.shape == (3, 3, 3, 8) for v in params.values())  # the first conv, HWIO


def test_outputs_pick_tensors_by_name() -> None:
    from bridge.tflite.reader import read_tflite

    source = read_tflite(TFLITE / "cnn_float32.tflite")
    pool = next(op for op in source.ops if op.name == "MAX_POOL_2D")
    name = source.tensors[pool.outputs[0]].name
    model = bridge.build(TFLITE / "cnn_float32.tflite", outputs=[name])
    assert model.outputs[0].name == name and model.outputs[0].shape == (1, 15, 15, 8)


def test_unsupported_operators_listed_at_once() -> None:
    path = TFLITE / "errors" / "unsupported_ops.tflite"
    with pytest.raises(UnsupportedModelError) as info:
        bridge.build(path)
    problems = info.value.problems
    assert [p.class_name for p in problems] == ["BesselI1e", "BesselI0e"]
    for p in problems:
        assert p.layer.startswith("#") and "custom operator" in p.reason
    report = bridge.api.inspect(path)
    assert not report.supported and report.kind == "tflite"
    assert [r.class_name for r in report.layers if r.status != "ok"] == ["BesselI1e", "BesselI0e"]


def test_weights_file_rejected() -> None:
    with pytest.raises(ModelFileError, match="holds its weights"):
        bridge.build(TFLITE / "cnn_float32.tflite", TFLITE / "cnn_float32.npz")


def test_batch_other_than_stored_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="shapes stored"):
        bridge.build(TFLITE / "cnn_float32.tflite", batch_size=4)


@pytest.mark.parametrize("cut", [8, 100, 2000, -16])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    data = (TFLITE / "mobile_float32.tflite").read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFileError):
        bridge.build(path)


def test_garbage_after_magic(tmp_path: Path) -> None:
    path = tmp_path / "junk.tflite"
    path.write_bytes(b"\x10\x00\x00\x00TFL3" + bytes(range(256)) * 4)
    with pytest.raises(ModelFileError):
        bridge.build(path)


@pytest.mark.parametrize("name", ["branches_int8", "control/nested_float32"])
def test_mutated_files_end_in_bridge_errors(tmp_path: Path, name: str) -> None:
    """Seeded byte flips, truncations and overwritten words: every file is translated or
    rejected with a bridge error (no other exception, nothing slow); the control-flow file's
    damage reaches subgraph indices and the options naming them."""
    from bridge.tflite.reader import read_tflite
    from bridge.tflite.translate import translate

    base = (TFLITE / f"{name}.tflite").read_bytes()
    rng = np.random.default_rng(6)
    outcomes = {"ok": 0, "error": 0}
    for i in range(120):
        data = bytearray(base)
        if i % 3 == 0:
            for _ in range(rng.integers(1, 8)):
                data[rng.integers(0, len(data))] = rng.integers(0, 256)
        elif i % 3 == 1:
            data = data[: rng.integers(0, len(data))]
        else:
            at = int(rng.integers(8, len(data) - 4))
            data[at : at + 4] = rng.integers(0, 2**32, dtype=np.uint64).astype("<u4").tobytes()
        path = tmp_path / "m.tflite"
        path.write_bytes(bytes(data))
        try:
            translate(read_tflite(path))
            outcomes["ok"] += 1
        except BridgeError:
            outcomes["error"] += 1
    assert outcomes["ok"] and outcomes["error"]


def test_cli_build_inspect_run(tmp_path: Path, capsys) -> None:
    inputs, expected, data = reference("cnn_uint8io")
    model = TFLITE / "cnn_uint8io.tflite"
    assert cli(["build", str(model), "-o", str(tmp_path)]) == 0
    assert "TFLite" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", inputs[0])
    out = tmp_path / "y"
    assert (
        cli(
            [
                "run",
                str(tmp_path / "cnn_uint8io.so"),
                "-i",
                str(tmp_path / "x.npy"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    check_outputs("cnn_uint8io", [np.load(out / "output0.npy")], expected, data)
    assert cli(["inspect", str(model)]) == 0
    assert cli(["inspect", str(TFLITE / "errors" / "unsupported_ops.tflite")]) == 1


# --- real models (slow: downloads the pinned MediaPipe wheel, builds ~15 s each) ------------


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in zoo.MODELS if n not in zoo.UNSUPPORTED])
def test_mediapipe_matches_litert(name: str) -> None:
    data = np.load(zoo.REFERENCES / f"{name}.npz")
    model = bridge.build(zoo.model(name), target="llvm")
    got = model(*zoo.inputs(name, [i.shape for i in model.inputs]))
    got = got if isinstance(got, list) else [got]
    assert len(got) == sum(1 for k in data.files if k.startswith("shape_"))
    for i, value in enumerate(got):
        assert value.shape == tuple(data[f"shape_{i}"])
        if f"positions_{i}" in data.files:
            value = value.reshape(-1)[data[f"positions_{i}"]]
        expected = data[f"output_{i}"]
        atol = 1e-3 * float(np.abs(expected).max())
        np.testing.assert_allclose(value, expected, rtol=0, atol=atol, err_msg=f"{name}:{i}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(zoo.UNSUPPORTED))
def test_mediapipe_unsupported_custom_ops_named(name: str) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        bridge.build(zoo.model(name))
    assert {p.class_name for p in info.value.problems} == set(zoo.UNSUPPORTED[name])


def test_int8_bundle_runs_without_python(tmp_path: Path) -> None:
    """The native runner reads and writes int8 .npy files (``|i1``)."""
    from tests.conftest import run_bundle

    inputs, expected, data = reference("mobile_int8")
    bridge.build(TFLITE / "mobile_int8.tflite", target="x86-64").export(
        tmp_path / "bundle", bundle=True
    )
    check_outputs("mobile_int8", run_bundle(tmp_path / "bundle", inputs), expected, data)


# --- control flow (tests/fixtures/make_tflite_control.py) ----------------------------------

CONTROL = TFLITE / "control"
CONTROL_CASES = sorted(p.name[: -len(".npz")] for p in CONTROL.glob("*.npz"))


@pytest.mark.parametrize("case", CONTROL_CASES)
def test_control_flow_matches_litert(case: str) -> None:
    """IF / WHILE / CALL_ONCE models run, each branch or trip count taken by some case: the
    functions TVM makes of the subgraphs survive weight lifting (they were dropped, so the
    model built, then failed to load: 'Cannot find ffi::Function tflite_if_subgraph_...')."""
    model_name = case.split(".")[0]
    data = np.load(CONTROL / f"{case}.npz")
    model = bridge.build(CONTROL / f"{model_name}.tflite", target="llvm")
    got = model(data["input_0"])
    expected = data["output_0"]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if expected.dtype == np.int8:  # full-integer: bit-exact
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_control_flow_separate_params_export_and_load(tmp_path: Path) -> None:
    """Weights of the main graph are parameters, the branches' stay in the library."""
    model = bridge.build(CONTROL / "cond_float32.tflite", separate_params=True)
    loaded = bridge.load(model.export(tmp_path / "cond.so"))
    for case in ("then", "else"):
        data = np.load(CONTROL / f"cond_float32.{case}.npz")
        np.testing.assert_allclose(loaded(data["input_0"]), data["output_0"], atol=1e-5)


def test_operator_inside_a_branch_refused_at_preflight() -> None:
    """An unsupported operator in a subgraph is found before translation, named by its
    subgraph, with the main graph's operators checked too."""
    with pytest.raises(UnsupportedModelError, match="before translation") as info:
        bridge.build(TFLITE / "errors" / "cond_custom_op.tflite")
    [problem] = info.value.problems
    assert problem.class_name == "BesselI1e" and problem.layer.startswith("subgraph ")
    assert "custom operator" in problem.reason
    report = bridge.api.inspect(TFLITE / "errors" / "cond_custom_op.tflite")  # on the IF's row
    assert not report.supported
    [row] = [r for r in report.layers if r.status != "ok"]
    assert row.class_name == "IF" and "BesselI1e" in row.status


def test_dynamic_range_weights_in_a_loop_body_refused_at_preflight() -> None:
    """int8 weights with float activations are dequantized at import in the main graph only;
    in a WHILE body TVM would take them as integer operands, so preflight refuses them."""
    with pytest.raises(UnsupportedModelError, match="before translation") as info:
        bridge.build(TFLITE / "errors" / "loop_dynamic_range.tflite")
    [problem] = info.value.problems
    assert problem.class_name == "FULLY_CONNECTED" and problem.layer.startswith("subgraph ")
    assert "int8 weights and float activations" in problem.reason


def test_stateful_call_once_refused_at_preflight() -> None:
    with pytest.raises(UnsupportedModelError, match="before translation") as info:
        bridge.build(TFLITE / "errors" / "stateful_call_once.tflite")
    assert [p.class_name for p in info.value.problems] == ["ASSIGN_VARIABLE"]


def test_subgraph_preflight_reads_every_called_graph() -> None:
    from bridge.tflite.ops import called_graphs
    from bridge.tflite.reader import read_tflite

    source = read_tflite(CONTROL / "nested_float32.tflite")
    [loop] = [op for op in source.ops if op.name == "WHILE"]
    _, body = called_graphs(source, source.graphs[0], loop)
    inner = [op for op in source.graphs[body].ops if op.name == "IF"]
    assert len(inner) == 1 and len(called_graphs(source, source.graphs[body], inner[0])) == 2


# --- shape arithmetic (tests/fixtures/make_tflite_shapes.py) -------------------------------

SHAPES = TFLITE / "shapes"


@pytest.mark.parametrize("name", sorted(p.stem for p in SHAPES.glob("*.npz") if "." not in p.stem))
def test_shape_arithmetic_matches_litert(name: str) -> None:
    """Batch-None Keras models: SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE and SHAPE -> GATHER ->
    REDUCE_PROD -> CONCATENATION chains evaluate to constants (TVM's RESHAPE took no computed
    shape; the int8 files' SHAPEs of int8 tensors were refused), EXPAND_DIMS (Conv1D)
    translates (TVM 0.27's converter passed expand_dims an argument too many), and the int8
    FULLY_CONNECTED on a reshaped 3-D tensor takes its rows from its input, not from the
    placeholder shape stored for a dynamic batch."""
    data = np.load(SHAPES / f"{name}.npz")
    inputs = [data[k] for k in sorted(data.files) if k.startswith("input_")]
    expected = [data[k] for k in sorted(data.files) if k.startswith("output_")]
    got = bridge.build(SHAPES / f"{name}.tflite", target="llvm")(*inputs)
    check_outputs(name, got if isinstance(got, list) else [got], expected, data)


def test_symbolic_time_axis_shape_arithmetic() -> None:
    """A variable time axis kept symbolic: the shape chains around the Dense on a 3-D tensor
    become reshapes to TIR expressions of T, and SQUEEZE's negative axis is made positive
    (ConvertLayout died with std::bad_alloc on it); one build runs both lengths."""
    model = bridge.build(
        SHAPES / "seqtime_keras.tflite",
        input_shapes={"serving_default_signal:0": (1, "T", 3)},
        target="llvm",
    )
    for steps in (7, 12):
        data = np.load(SHAPES / f"seqtime_keras.t{steps}.npz")
        got = model(data["input_0"])
        np.testing.assert_allclose(got, data["output_0"], rtol=0, atol=1e-5, err_msg=str(steps))


# --- recurrent layers (tests/fixtures/make_tflite_recurrent.py) ----------------------------

RECURRENT = TFLITE / "recurrent"


@pytest.mark.parametrize("name", sorted(p.stem for p in RECURRENT.glob("*.tflite")))
def test_recurrent_while_matches_litert(name: str) -> None:
    """Keras 3 LSTM/GRU/Bidirectional converted at batch 1: a WHILE whose body writes each
    step's row with SLICE (sizes from the step counter) + CONCATENATION; the dynamic slices
    and their CONCATENATION become a row update with static shapes (translation failed on the
    computed SLICE size: 'a bytes-like object is required, not int')."""
    data = np.load(RECURRENT / f"{name}.npz")
    inputs = [data[k] for k in sorted(data.files) if k.startswith("input_")]
    expected = [data[k] for k in sorted(data.files) if k.startswith("output_")]
    got = bridge.build(RECURRENT / f"{name}.tflite", target="llvm")(*inputs)
    check_outputs(name, got if isinstance(got, list) else [got], expected, data)

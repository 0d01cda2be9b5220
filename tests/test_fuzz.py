"""Fuzzing bridge's readers: mutated Keras inputs must end in a result or a bridge.errors error.

The default run fuzzes every format with a small fixed budget (derandomized: the same cases on
every run, so CI is reproducible). ``pytest -m slow tests/test_fuzz.py`` runs a longer campaign;
``BRIDGE_FUZZ_EXAMPLES=N`` sets the number of cases per format of either run. Design, the record
of cases run and of every crash class found: ``tests/fuzz/README.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bridge
from bridge.errors import BridgeError, ModelFileError, UnsupportedModelError
from tests.conftest import FIXTURES
from tests.fuzz.formats import FORMATS
from tests.fuzz.harness import Runner, fuzz_one

BOUNDED_EXAMPLES = 400
# Formats whose cases cost more (every HDF5 structure mutation can hit the hang limit) run fewer.
BOUNDED_OVERRIDES = {"h5-struct": 100}
LONG_EXAMPLES = 3000


@pytest.fixture(scope="module")
def runner():
    # Not under pytest's shared temporary root: another pytest session cleaning old folders
    # there would open (and delete) the canary folder mid-run.
    base = Path(tempfile.mkdtemp(prefix="bridge-fuzz-"))
    runner = Runner(base)
    yield runner
    runner.close()
    shutil.rmtree(base, ignore_errors=True)


def _fuzz(runner: Runner, format_name: str, examples: int, derandomize: bool) -> None:
    examples = int(os.environ.get("BRIDGE_FUZZ_EXAMPLES", examples))

    @settings(
        max_examples=examples,
        derandomize=derandomize,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def case(data):
        fuzz_one(data, runner, format_name)

    case()


@pytest.mark.parametrize("format_name", sorted(FORMATS))
def test_fuzz_bounded(runner, format_name):
    _fuzz(runner, format_name, BOUNDED_OVERRIDES.get(format_name, BOUNDED_EXAMPLES), True)


@pytest.mark.slow
@pytest.mark.parametrize("format_name", sorted(FORMATS))
def test_fuzz_long(runner, format_name):
    _fuzz(runner, format_name, LONG_EXAMPLES, derandomize=False)


# --- regressions: one minimal reproducer per crash class the fuzzer found ------------------------
# Each builds its input from the tiny ``dense`` layer case (Input(6) -> Dense(5)).

DENSE = FIXTURES / "keras3" / "layers" / "dense.keras"


def _dense(tmp_path: Path) -> tuple[dict, Path]:
    """The dense case's config (a dict to edit) and its weights, written to ``tmp_path``."""
    with zipfile.ZipFile(DENSE) as archive:
        config = json.loads(archive.read("config.json"))
        weights = tmp_path / "dense.weights.h5"
        weights.write_bytes(archive.read("model.weights.h5"))
    return config, weights


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(config))
    return path


def _raises(error: type, *args) -> BridgeError:
    with pytest.raises(error) as info:
        bridge.to_relax(*args)
    return info.value


def _layer(config: dict, name: str) -> dict:
    return next(e for e in config["config"]["layers"] if e["name"] == name)


def _edit_h5(path: Path, edit) -> None:
    with h5py.File(path, "r+") as handle:
        edit(handle)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A valid HDF5 file next to (not among) the files handed to bridge."""
    folder = tmp_path / "outside"
    folder.mkdir()
    with h5py.File(folder / "other.h5", "w") as handle:
        handle["x"] = np.ones((6, 5), "float32")
        handle.create_group("vars")["0"] = np.ones((6, 5), "float32")
    (folder / "raw.bin").write_bytes(np.ones(30, "float32").tobytes())
    return folder


def _case_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    return folder


def test_hdf5_external_link_is_refused(tmp_path, outside):
    config, weights = _dense(_case_dir(tmp_path))

    def edit(handle):
        del handle["layers/dense/vars"]
        handle["layers/dense/vars"] = h5py.ExternalLink(str(outside / "other.h5"), "/vars")

    _edit_h5(weights, edit)
    err = _raises(ModelFileError, _write(tmp_path, config), weights)
    assert "outside the file" in str(err) and "dense.weights.h5" in str(err)


@pytest.mark.parametrize("kind", ["external-storage", "virtual"])
def test_hdf5_data_in_other_files_is_refused(tmp_path, outside, kind):
    config, weights = _dense(_case_dir(tmp_path))

    def edit(handle):
        del handle["layers/dense/vars/0"]
        if kind == "virtual":
            layout = h5py.VirtualLayout((6, 5), "f4")
            layout[:] = h5py.VirtualSource(str(outside / "other.h5"), "x", (6, 5))
            handle.create_virtual_dataset("layers/dense/vars/0", layout)
        else:
            external = [(str(outside / "raw.bin"), 0, 120)]
            handle.create_dataset("layers/dense/vars/0", (6, 5), "f4", external=external)

    _edit_h5(weights, edit)
    err = _raises(ModelFileError, _write(tmp_path, config), weights)
    assert "other files" in str(err)


def test_hdf5_declared_shape_beyond_stored_bytes_is_refused(tmp_path):
    """A chunked dataset declared (2**40,) but never written is 4 TiB once read."""
    config, weights = _dense(tmp_path)

    def edit(handle):
        del handle["layers/dense/vars/0"]
        handle.create_dataset("layers/dense/vars/0", (2**40,), "f4", chunks=(1024,))

    _edit_h5(weights, edit)
    err = _raises(ModelFileError, _write(tmp_path, config), weights)
    assert "declares shape [1099511627776]" in str(err)


@pytest.mark.parametrize(
    "value",
    [
        np.ones((6, 5), "complex64"),
        np.zeros((6, 5), [("a", "f4"), ("b", "i4")]),
        np.array(["a"] * 30, dtype=h5py.string_dtype()).reshape(6, 5),
        np.zeros((6, 5), "V7"),
    ],
    ids=["complex", "compound", "string", "opaque"],
)
def test_hdf5_non_numeric_weights_are_refused(tmp_path, value):
    config, weights = _dense(tmp_path)

    def edit(handle):
        del handle["layers/dense/vars/0"]
        handle["layers/dense/vars/0"] = value

    _edit_h5(weights, edit)
    err = _raises(ModelFileError, _write(tmp_path, config), weights)
    assert "not a numeric array" in str(err)


@pytest.mark.parametrize("kind", ["soft-loop", "dataset-for-group", "group-for-dataset"])
def test_hdf5_structure_errors_are_typed(tmp_path, kind):
    """h5py raises RuntimeError/AttributeError on these; bridge names the file instead."""
    config, weights = _dense(tmp_path)

    def edit(handle):
        if kind == "soft-loop":
            del handle["layers/dense/vars"]
            handle["layers/dense/vars"] = h5py.SoftLink("/layers/dense/vars")
        elif kind == "dataset-for-group":
            del handle["layers/dense/vars"]
            handle["layers/dense/vars"] = np.ones(3, "f4")
        else:
            del handle["layers/dense/vars/0"]
            handle.create_group("layers/dense/vars/0")

    _edit_h5(weights, edit)
    err = _raises(BridgeError, _write(tmp_path, config), weights)
    assert "dense" in str(err)


def test_corrupt_hdf5_bytes_are_typed(tmp_path):
    full = tmp_path / "model.h5"
    blob = bytearray((FIXTURES / "keras2" / "layers" / "dense.h5").read_bytes())
    for offset in range(800, 1400, 7):  # B-tree and heap metadata of the root group
        blob[offset] ^= 0x5A
    full.write_bytes(bytes(blob))
    _raises(ModelFileError, full)


def _sharded(tmp_path: Path) -> Path:
    source = FIXTURES / "keras3" / "models" / "sharded"
    shutil.copytree(source, tmp_path / "sharded")
    return tmp_path / "sharded" / "seq_cnn.weights.json"


@pytest.mark.parametrize("target", ["absolute", "dotdot", "symlink", "not-a-name"])
def test_sharded_index_cannot_reach_outside_its_folder(tmp_path, outside, target):
    index = _sharded(tmp_path)
    other = outside / "other.h5"
    text = index.read_text()
    if target == "symlink":
        (index.parent / "seq_cnn_00000.weights.h5").unlink()
        (index.parent / "seq_cnn_00000.weights.h5").symlink_to(other)
    else:
        name = {"absolute": f'"{other}"', "dotdot": '"../outside/other.h5"', "not-a-name": "7"}
        index.write_text(text.replace('"seq_cnn_00000.weights.h5"', name[target]))
    _raises(ModelFileError, FIXTURES / "keras3" / "models" / "seq_cnn.json", index)


def _rezip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, blob in members.items():
            archive.writestr(name, blob)


def test_keras_zip_member_declaring_a_huge_size_is_refused(tmp_path):
    """zipfile trusts the central directory's size; 4 GB declared from 6 KB stored is a lie."""
    path = tmp_path / "model.keras"
    blob = bytearray(DENSE.read_bytes())
    directory = blob.find(b"PK\x01\x02")  # the first member's central directory entry
    struct.pack_into("<I", blob, directory + 24, 0xFFFFFFF0)
    path.write_bytes(bytes(blob))
    err = _raises(ModelFileError, path)
    assert "declares 4294967280 bytes" in str(err)


@pytest.mark.parametrize("name", ["../config.json", "/config.json", "sub/../config.json"])
def test_keras_zip_member_paths_are_never_followed(tmp_path, name):
    with zipfile.ZipFile(DENSE) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members[name] = members.pop("config.json")
    path = tmp_path / "case" / "model.keras"
    path.parent.mkdir()
    _rezip(path, members)
    err = _raises(ModelFileError, path)
    assert "no config.json" in str(err)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["case", "model.keras"]


def _set(config: dict, dotted: str, value) -> None:
    """Set ``layer:key`` in a layer's entry, ``layer.config:key`` in its config, or a top key."""
    where, key = dotted.split(":")
    target = config if where == "top" else _layer(config, where.split(".")[0])
    if where.endswith(".config"):
        target = target["config"]
    target[key] = value


@pytest.mark.parametrize(
    ("edit", "value", "error"),
    [
        ("dense:module", 7, ModelFileError),  # registry lookup called str methods on it
        ("dense:class_name", True, ModelFileError),  # snake_case() of a bool
        ("dense:name", 3, ModelFileError),  # weights group path built from an int
        ("dense:registered_name", ["x"], ModelFileError),
        ("dense:config", None, BridgeError),  # _layer_name(): None.get
        ("top:keras_version", {"0": 1}, None),  # keras_major indexed a dict
        ("input_layer.config:batch_shape", [None, "6"], UnsupportedModelError),  # TVM TypeError
        ("input_layer.config:batch_shape", [None, 2**40], UnsupportedModelError),
        ("input_layer.config:dtype", [1], UnsupportedModelError),  # unhashable dtype
        ("dense.config:units", None, UnsupportedModelError),  # weight shape [6, None]: segfault
        ("dense.config:activation", {"a": []}, UnsupportedModelError),
    ],
)
def test_malformed_config_values_are_typed_errors(tmp_path, edit, value, error):
    config, weights = _dense(tmp_path)
    _set(config, edit, value)
    if error is None:  # accepted: the value is only informative
        bridge.to_relax(_write(tmp_path, config), weights)
        return
    err = _raises(error, _write(tmp_path, config), weights)
    assert "model.json" in str(err)


def test_declared_units_far_beyond_memory_allocate_nothing(tmp_path):
    """A config asking for a kernel the stored weights do not match is reported without building
    a zero array of the config's size (units=3*10**7 once took 1.4 GB; 10**12 MemoryError)."""
    config, weights = _dense(tmp_path)
    _layer(config, "dense")["config"]["units"] = 3 * 10**7
    model = _write(tmp_path, config)
    tracemalloc.start()
    try:
        err = _raises(UnsupportedModelError, model, weights)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "dense (Dense)" in str(err) and "30000000" in str(err)
    assert peak < 64 << 20, f"{peak >> 20} MiB allocated"


@pytest.mark.parametrize(
    "where", ["input_layers", "output_layers", "inbound"], ids=["input", "output", "inbound"]
)
def test_references_to_unknown_layers_are_typed(tmp_path, where):
    config, weights = _dense(tmp_path)
    if where == "inbound":
        node = _layer(config, "dense")["inbound_nodes"][0]["args"][0]
        node["config"]["keras_history"] = [["not", "a", "name"], 0, 0]
    else:
        config["config"][where] = [["ghost", 0, 0]]
    _raises(BridgeError, _write(tmp_path, config), weights)


def test_cyclic_graph_is_reported(tmp_path):
    config, weights = _dense(tmp_path)
    node = _layer(config, "dense")["inbound_nodes"][0]["args"][0]
    node["config"]["keras_history"] = ["dense", 0, 0]  # dense feeds itself
    err = _raises(UnsupportedModelError, _write(tmp_path, config), weights)
    assert "loops or disconnected nodes" in str(err)


def test_json_nesting_and_huge_numbers_are_typed(tmp_path):
    path = tmp_path / "model.json"
    for text in ["[" * 100_000 + "]" * 100_000, '{"class_name": 1' + "0" * 5000 + "}"]:
        path.write_text(text)
        _raises(ModelFileError, path)


def test_models_nested_too_deep_are_refused(tmp_path):
    config, weights = _dense(tmp_path)
    for _ in range(40):
        inner = {"name": "s", "layers": [config], "build_input_shape": [None, 6]}
        config = {"class_name": "Sequential", "name": "s", "config": inner}
    err = _raises(ModelFileError, _write(tmp_path, config), weights)
    assert "nested more than" in str(err)


def _with_steps(tmp_path: Path, case: str, steps: int) -> tuple[Path, Path]:
    """A layer case with its input's time dimension set to ``steps``."""
    with zipfile.ZipFile(FIXTURES / "keras3" / "layers" / f"{case}.keras") as archive:
        config = json.loads(archive.read("config.json"))
        weights = tmp_path / "w.weights.h5"
        weights.write_bytes(archive.read("model.weights.h5"))
    for entry in config["config"]["layers"]:
        if entry["class_name"] == "InputLayer":
            entry["config"]["batch_shape"][1] = steps
    return _write(tmp_path, config), weights


@pytest.mark.parametrize("case", ["attention_scale_key_causal", "mha_causal_nobias_outshape"])
def test_causal_mask_is_not_a_constant_of_declared_size(tmp_path, case):
    """The causal mask was a steps x steps numpy constant: 40000 steps asked for 6 GiB."""
    tracemalloc.start()
    try:
        bridge.to_relax(*_with_steps(tmp_path, case, 8000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak >> 20} MiB allocated"


def test_recurrent_steps_beyond_unrolling_limit_are_refused(tmp_path):
    """Unrolled recurrent loops (CUDA builds) with 10**6 declared steps hung translation; on
    CPUs the same layer is one loop kernel, whose size does not grow with the steps."""
    from bridge.api import _load_and_translate

    files = _with_steps(tmp_path, "lstm", 10**6)
    with pytest.raises(UnsupportedModelError) as info:
        _load_and_translate(*files, 1, None, device="cuda")
    assert "lstm (LSTM)" in str(info.value) and "1000000 time steps" in str(info.value)
    mod, _ = bridge.to_relax(*files)  # the CPU loop kernel: translated at once
    assert any("lstm_scan" in gv.name_hint for gv in mod.functions)


def test_converter_config_checks_report_malformed_configs(tmp_path):
    """A converter's weight list / config check raised AttributeError on ``layer: 5``, out of
    weight assignment; preflight now reports it against the layer."""
    with zipfile.ZipFile(FIXTURES / "keras3" / "layers" / "bidi_lstm.keras") as archive:
        config = json.loads(archive.read("config.json"))
        weights = tmp_path / "w.weights.h5"
        weights.write_bytes(archive.read("model.weights.h5"))
    next(e for e in config["config"]["layers"] if e["class_name"] == "Bidirectional")["config"][
        "layer"
    ] = 5
    err = _raises(UnsupportedModelError, _write(tmp_path, config), weights)
    assert "(Bidirectional): malformed layer config" in str(err)


def test_tflite_dequantize_of_tensor_without_scale_is_typed(tmp_path):
    """Found by the fuzzer: a float16 constant retyped int8 (no quantization) reached
    ``ScaleAsNumpy()``, which returns 0 for an absent vector."""
    import tflite

    blob = bytearray((FIXTURES / "tflite" / "mobile_float16.tflite").read_bytes())
    model = tflite.Model.GetRootAsModel(blob, 0)
    graph = model.Subgraphs(0)
    codes = [model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())]
    op = next(
        graph.Operators(i)
        for i in range(graph.OperatorsLength())
        if codes[graph.Operators(i).OpcodeIndex()] == tflite.BuiltinOperator.DEQUANTIZE
    )
    tensor = graph.Tensors(int(op.InputsAsNumpy()[0]))
    blob[tensor._tab.Pos + tensor._tab.Offset(6)] = tflite.TensorType.INT8
    shape = tensor._tab.Vector(tensor._tab.Offset(4))  # first dimension x2: same bytes as fp16
    first = struct.unpack_from("<i", blob, shape)[0]
    struct.pack_into("<i", blob, shape, 2 * first)
    path = tmp_path / "model.tflite"
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="no scale"):
        bridge.to_relax(path)


def test_h5_structure_mutations_reach_every_structure_kind(tmp_path):
    """The ``h5-struct`` seeds hold every metadata structure the mutations aim at, v2 ones
    (rewritten seeds) included, and the v2 checksums the mutator repairs are found."""
    from tests.fuzz.formats import seeds_of
    from tests.fuzz.mutate import _checksum_span, h5_structures

    kinds: set[str] = set()
    spans = 0
    for index, seed in enumerate(seeds_of("h5-struct")):
        folder = tmp_path / str(index)
        folder.mkdir()
        seed.write(folder)
        path = folder / (seed.weights or seed.model)
        found = h5_structures(path)
        kinds |= set(found)
        blob = path.read_bytes()
        spans += sum(_checksum_span(blob, at) is not None for at in found.get("ohdr-v2", []))
    expected = {"gcol", "heap", "btree-v1", "btree-v2", "snod", "ohdr-v1", "ohdr-v2", "fheap"}
    assert expected <= kinds and spans > 100

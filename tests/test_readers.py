"""Keras file readers: details real files exercise rarely (chunked attributes, bfloat16, naming)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np

import bridge
from bridge.keras.weights import read_name_list, snake_case, to_float_array
from tests.conftest import KERAS2, assert_matches, reference


def test_snake_case_matches_keras():
    cases = {
        "Conv2D": "conv2d",
        "BatchNormalization": "batch_normalization",
        "ReLU": "re_lu",
        "PReLU": "p_re_lu",
        "DepthwiseConv2D": "depthwise_conv2d",
        "MultiHeadAttention": "multi_head_attention",
        "LSTM": "lstm",
        "GlobalAveragePooling1D": "global_average_pooling1d",
    }
    for name, expected in cases.items():
        assert snake_case(name) == expected


def test_bfloat16_opaque_datasets_widen_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    with h5py.File(tmp_path / "w.h5", "w") as handle:
        handle["x"] = bits.view("V2")
        np.testing.assert_array_equal(to_float_array(handle["x"]), values)


def test_chunked_name_attributes(tmp_path):
    """Keras splits name lists over 64 KiB into layer_names0, layer_names1, ..."""
    source = KERAS2 / "models" / "seq_cnn.h5"
    chunked = tmp_path / "seq_cnn.h5"
    shutil.copy(source, chunked)
    with h5py.File(chunked, "r+") as handle:
        group = handle["model_weights"]
        names = list(group.attrs["layer_names"])
        del group.attrs["layer_names"]
        group.attrs["layer_names0"] = names[: len(names) // 2]
        group.attrs["layer_names1"] = names[len(names) // 2 :]
        assert read_name_list(group.attrs, "layer_names") == [
            n.decode() if isinstance(n, bytes) else n for n in names
        ]
    inputs, outputs = reference(KERAS2 / "models" / "seq_cnn.npz")
    assert_matches(bridge.build(chunked, batch_size=2)(*inputs), outputs)


def test_tensor_kwargs_of_a_call_are_inputs():
    """MultiHeadAttention(q, v, key=k): Keras 3 keeps ``key`` in kwargs, Keras 2 ``value`` too."""
    from bridge.sources import open_keras
    from tests.conftest import KERAS3

    for path, positional, keywords in (
        (KERAS3 / "layers" / "mha_cross_key_scores.keras", 2, ["key"]),
        (KERAS2 / "layers" / "mha_cross_key_scores.h5", 1, ["value", "key"]),
    ):
        graph = open_keras(path).source.graph
        call = next(layer for layer in graph.layers if layer.class_name == "MultiHeadAttention")
        call = call.calls[0]
        assert len(call.inputs) == positional
        assert list(call.tensor_kwargs()) == keywords
        assert len(call.all_inputs()) == 3 and call.kwargs["return_attention_scores"] is True


READERS = [
    "bridge.keras.files",
    "bridge.keras.graph",
    "bridge.keras.weights",
    "bridge.keras.guards",
    "bridge.tflite.reader",
    "bridge.formats",
    "bridge.signature",
    "bridge.errors",
    "bridge.translation",
    "bridge.sources",
]


def test_readers_load_no_tvm():
    """Reading model files needs json, zipfile, h5py, numpy and the tflite schema, never TVM."""
    import subprocess
    import sys

    script = (
        "import importlib, sys\n"
        f"for name in {READERS!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'tvm' or m.startswith('tvm.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout[:500]


def test_file_kind_is_detected_by_content(tmp_path):
    from bridge.formats import file_kind, kind_of

    assert kind_of(b"\x89HDF\r\n\x1a\n") == "hdf5" and kind_of(b"PK\x03\x04rest") == "zip"
    assert kind_of(b'  {"a"') == "json" and kind_of(b"\x1c\x00\x00\x00TFL3") == "tflite"
    assert kind_of(b"\x00\x01garbage") is None
    path = tmp_path / "model.h5"  # named .h5, holds a flatbuffer
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(16))
    assert file_kind(path) == "tflite"

"""build -> export -> bridge.load in a fresh process (TVM runtime only) -> same outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bridge
from bridge.runtime import metadata_path
from tests.conftest import KERAS3, assert_matches, reference

MODEL = KERAS3 / "models" / "func_multi_io.keras"


def test_export_load_in_fresh_runtime_only_process(tmp_path):
    inputs, outputs = reference(KERAS3 / "models" / "func_multi_io.npz")
    model = bridge.build(MODEL, batch_size=2)
    library = model.export(tmp_path / "lib" / "model.so")
    meta = json.loads(metadata_path(library).read_text())
    assert meta["inputs"][0]["name"] == "image" and meta["tvm_version"]
    assert meta["source_sha256"] and meta["target"]["kind"] == "llvm"
    np.savez(tmp_path / "in.npz", *inputs)
    script = textwrap.dedent(f"""
        import sys, numpy as np, bridge
        m = bridge.load({str(library)!r})
        data = np.load({str(tmp_path / "in.npz")!r})
        out = m(*[data[f"arr_{{i}}"] for i in range(len(data.files))])
        np.savez({str(tmp_path / "out.npz")!r}, *out)
        maps = open("/proc/self/maps").read()
        assert "libtvm_compiler" not in maps, "compiler library was loaded"
        assert "tvm.relax" not in sys.modules
        try:  # and the compiler really is out of reach in this process
            from tvm import relax  # noqa: F401
        except Exception:
            pass
        else:
            raise AssertionError("tvm.relax imported in a runtime-only process")
    """)
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    got = np.load(tmp_path / "out.npz")
    got = [got[f"arr_{i}"] for i in range(len(got.files))]
    assert_matches(got, outputs)
    for a, b in zip(got, model(*inputs)):
        np.testing.assert_array_equal(a, b)


def test_loaded_model_has_same_interface(tmp_path):
    model = bridge.build(MODEL, batch_size=2)
    loaded = bridge.load(model.export(tmp_path / "model.so"))
    assert loaded.inputs == model.inputs and loaded.outputs == model.outputs
    inputs, _ = reference(KERAS3 / "models" / "func_multi_io.npz")
    for a, b in zip(loaded({"image": inputs[0], "meta": inputs[1]}), model(*inputs)):
        np.testing.assert_array_equal(a, b)


def test_thread_pool_defaults_to_every_available_core():
    code = "import os, bridge; print(os.environ['TVM_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(len(os.sched_getaffinity(0)))
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env | {"TVM_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "1"
    pin = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    pinned = pin + code
    out = subprocess.run([sys.executable, "-c", pinned], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1"  # a process pinned to one core gets a one-thread pool


def test_num_threads_is_applied_and_checked(tmp_path):
    import tvm_ffi

    from bridge.errors import DeviceError

    stem = KERAS3 / "models" / "seq_cnn"
    inputs, outputs = reference(stem.with_suffix(".npz"))
    model = bridge.build(stem.with_suffix(".keras"), batch_size=len(inputs[0]), num_threads=1)
    np.testing.assert_allclose(model(*inputs), outputs[0], rtol=1e-4, atol=1e-5)
    assert tvm_ffi.get_global_func("runtime.NumThreads")() == 1
    library = model.export(tmp_path / "m.so")
    pool = int(os.environ["TVM_NUM_THREADS"])  # bridge sets it to the core count
    bridge.load(library, num_threads=pool)(*inputs)
    assert tvm_ffi.get_global_func("runtime.NumThreads")() == pool
    with pytest.raises(DeviceError, match="num_threads"):
        bridge.load(library, num_threads=0)

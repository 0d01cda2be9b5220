"""Tuning the integer kernels of full-integer .tflite models: the packed int8 products
(bridge.schedules.int8) become tuning tasks, their search space tensorizes with the integer
dot instruction, candidates are checked exactly on the model's own constants, and a tuned
build stays bit-exact with the untuned one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from conftest import FIXTURES
from tvm.s_tir import meta_schedule as ms

import bridge
from bridge.api import _load_and_translate
from bridge.compile import bind_weights
from bridge.schedules.int8 import VNNI, dot_kind
from bridge.schedules.pipeline import fuse
from bridge.targets import resolve
from bridge.tuning import database_dir, existing_database, kernels
from bridge.tuning.database import Ledger, workload_key
from bridge.tuning.intrinsics import load_cpu_intrinsics
from bridge.tuning.session import _select, _with_cores
from bridge.tuning.space import dot_shape, space

ROOT = Path(__file__).resolve().parent.parent
MODEL = FIXTURES / "tflite" / "cnn_int8.tflite"
SPEC = resolve("native")
TARGET = SPEC.tvm_target()
needs_vnni = pytest.mark.skipif(dot_kind(TARGET) != VNNI, reason="needs AVX-512 VNNI")


@pytest.fixture(scope="module")
def fused():
    translation, _ = _load_and_translate(
        MODEL,
        None,
        1,
        None,
        lambda _: None,
        device=SPEC.device,
        custom_layers=None,
        input_shapes=None,
    )
    return fuse(bind_weights(translation.mod, translation.params), TARGET, "balanced")


@pytest.fixture(scope="module")
def dot_tasks(fused):
    tasks = ms.relax_integration.extract_tasks(fused, TARGET)
    return [t for t in tasks if dot_shape(t.dispatched[0]) is not None]


@needs_vnni
def test_int8_products_are_tuning_tasks(fused, dot_tasks, tmp_path):
    chosen, skipped = _select(fused, TARGET, Ledger(tmp_path))
    names = {t.task_name for t in chosen}
    assert skipped == 0
    assert len(dot_tasks) == 3  # two convolutions and the dense layer
    assert {t.task_name for t in dot_tasks} <= names


def test_integer_outputs_must_be_equal_floats_close():
    ints = np.arange(12, dtype=np.int8)
    off = ints.copy()
    off[5] += 1
    assert kernels.agree(ints, ints.copy())
    assert not kernels.agree(off, ints)
    assert not kernels.agree(ints.astype(np.int32), ints)  # the dtype is part of the result
    floats = np.linspace(-1, 1, 12, dtype=np.float32)
    assert kernels.agree(floats * (1 + 1e-6), floats)


@needs_vnni
def test_check_uses_the_model_constants_and_rejects_an_off_by_one_kernel(fused, dot_tasks):
    mod = dot_tasks[0].dispatched[0]
    constants = kernels.call_site_constants(fused)[workload_key(mod)]
    assert constants, "the packed weights and requantization constants are found"
    arrays = kernels.random_arguments(mod, constants=constants)
    for i, value in constants.items():
        np.testing.assert_array_equal(arrays[i], value)
    executor = kernels.Executor()
    reference = kernels.Reference.measure(mod, TARGET, executor, constants)
    assert reference.matches(kernels.build_default(mod, TARGET), executor)
    # the same kernel clipping at 126 instead of 127: saturated outputs one step off
    text = mod.script()
    clamp = ", 127), -128)"  # int32 (fixed_point's shift past the product's high half)
    assert "T.min(" in text and clamp in text
    wrong = tvm.script.from_source(text.replace(clamp, ", 126), -128)", 1))
    assert not reference.matches(kernels.build_schedule(wrong, TARGET), executor)


@needs_vnni
def test_int8_space_tensorizes_with_the_dot_instruction(dot_tasks):
    load_cpu_intrinsics("x86_64")
    mod = dot_tasks[0].dispatched[0]
    context = ms.TuneContext(
        mod=mod,
        target=_with_cores(TARGET),
        space_generator=space(mod),
        task_name="int8",
        num_threads=1,
    ).clone()
    tensorized = 0
    for sch in context.generate_design_space():
        for postproc in context.space_generator.postprocs:
            assert postproc.apply(sch)
        tensorized += "llvm.x86.avx512.vpdpbusd.512" in sch.mod.script()
    assert tensorized >= 1


# a fresh process: the stored records name bridge's tensor intrinsics, which only this
# process registered while tuning
BUILD_AND_RUN = """
import sys, numpy as np, bridge
m = bridge.build(sys.argv[1], target="native", tuning_db=sys.argv[2])
assert m.metadata["tuning_database"] is not None
np.save(sys.argv[4], np.stack([np.asarray(m(x)) for x in np.load(sys.argv[3])]))
"""


@needs_vnni
def test_tuned_int8_build_is_bit_exact_with_untuned(tmp_path, monkeypatch):
    # every candidate counts as faster than the default, so whatever passes the exact check
    # is stored and used by the build below
    monkeypatch.setattr(kernels.Executor, "time", lambda self, lib, arrays: 1.0)
    report = bridge.tune(MODEL, target="native", budget=8, tuning_db=tmp_path / "tuned")
    assert report.trials >= 8 and report.wrong == 0
    assert any(k.best_ms < k.default_ms for k in report.kernels)
    folder = database_dir(TARGET, tmp_path / "tuned")
    assert existing_database(folder) is not None
    records = (folder / "database_tuning_record.json").read_text()
    assert '"Tensorize"' in records and "bridge_tuning_dot_16x4_uint8" in records
    untuned = bridge.build(MODEL, target="native", tuning_db=tmp_path / "none")
    assert untuned.metadata["tuning_database"] is None
    rng = np.random.default_rng(3)
    shape = [int(d) for d in untuned.inputs[0].shape]
    inputs = rng.uniform(-1, 1, (4, *shape)).astype(untuned.inputs[0].dtype)
    np.save(tmp_path / "inputs.npy", inputs)
    subprocess.run(
        [
            sys.executable,
            "-c",
            BUILD_AND_RUN,
            str(MODEL),
            str(tmp_path / "tuned"),
            str(tmp_path / "inputs.npy"),
            str(tmp_path / "tuned.npy"),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    tuned = np.load(tmp_path / "tuned.npy")
    np.testing.assert_array_equal(tuned, np.stack([np.asarray(untuned(x)) for x in inputs]))

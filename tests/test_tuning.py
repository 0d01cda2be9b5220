"""Tuning: budgets, the numeric check of candidates, the database, remote measurement.

The workload is the conv2d+clip+pad kernel for which TVM 0.27's MetaSchedule produced kernels
that leave the padded border unwritten; a kernel with exactly that defect must be rejected.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms

import bridge
from bridge.errors import TargetError, TuningError
from bridge.schedules.pipeline import fuse
from bridge.targets import resolve
from bridge.tuning import Budget, Remote, existing_database, kernels
from bridge.tuning import tune as tune_kernels
from bridge.tuning.database import Ledger, workload_key
from tests.conftest import KERAS3, conv_clip_pad_module

TARGET = resolve("native").tvm_target()
ROOT = Path(__file__).resolve().parent.parent
BORDER_GRID = "T.grid(T.int64(1), T.int64(15), T.int64(15), T.int64(16))"


@pytest.fixture(scope="module")
def fused():
    return fuse(conv_clip_pad_module(), TARGET)


@pytest.fixture(scope="module")
def workload(fused):
    (task,) = ms.relax_integration.extract_tasks(fused, TARGET)
    return task.dispatched[0]


def border_left_unwritten(workload: tvm.IRModule) -> tvm.IRModule:
    """The defect MetaSchedule produced: the padded output's last row/column never written."""
    text = workload.script()
    assert text.count(BORDER_GRID) == 1, "the padding loop nest changed; update the test"
    return tvm.script.from_source(text.replace(BORDER_GRID, BORDER_GRID.replace("15", "14")))


@pytest.mark.parametrize(
    "text, expected",
    [
        (200, Budget(trials=200)),
        ("500 trials", Budget(trials=500)),
        ("90s", Budget(seconds=90)),
        ("20m", Budget(seconds=1200)),
        ("1.5h", Budget(seconds=5400)),
    ],
)
def test_budget_parsing(text, expected):
    assert Budget.parse(text) == expected


@pytest.mark.parametrize("text", ["soon", "-5m", "0", True, "20 parsecs"])
def test_bad_budget_is_a_typed_error(text):
    with pytest.raises(TuningError, match="tune="):
        Budget.parse(text)


def test_check_rejects_unwritten_border_and_accepts_correct_kernel(workload):
    executor = kernels.Executor()
    reference = kernels.Reference.measure(workload, TARGET, executor)
    wrong = kernels.build_schedule(border_left_unwritten(workload), TARGET)
    assert not reference.matches(wrong, executor)
    assert reference.matches(kernels.build_schedule(workload, TARGET), executor)


def test_only_correct_kernels_are_stored_and_tuning_is_not_repeated(fused, workload, tmp_path):
    report = tune_kernels(fused, TARGET, Budget(trials=16), folder=tmp_path)
    assert [k.trials for k in report.kernels] == [16]
    ledger = Ledger(tmp_path)
    assert workload_key(workload) in ledger
    database = existing_database(tmp_path)
    if report.improved:  # every stored kernel is re-checked here, independently
        reference = kernels.Reference.measure(workload, TARGET, kernels.Executor())
        for record in database.get_all_tuning_records():
            sch = tvm.s_tir.Schedule(workload)
            record.trace.apply_to_schedule(sch, remove_postproc=False)
            assert reference.matches(kernels.build_schedule(sch.mod, TARGET), kernels.Executor())
    again = tune_kernels(fused, TARGET, Budget(trials=16), folder=tmp_path)
    assert again.skipped == 1 and again.kernels == [] and again.trials == 0


def test_wrong_candidates_are_counted_and_never_stored(fused, workload, tmp_path, monkeypatch):
    # every candidate is "faster" than the default (timed at 1 s) and has the defect
    monkeypatch.setattr(kernels.Executor, "time", lambda self, lib, arrays: 1.0)
    monkeypatch.setattr(
        kernels, "build_schedule", lambda mod, target: _build(border_left_unwritten(workload))
    )
    report = tune_kernels(fused, TARGET, Budget(trials=16), folder=tmp_path)
    assert report.wrong >= 1 and report.improved == 0
    assert existing_database(tmp_path) is None  # nothing committed
    (entry,) = json.loads((tmp_path / "tuned.json").read_text()).values()
    assert entry["wrong"] == report.wrong


def _build(mod):
    return tvm.compile(mod, target=TARGET).mod


def test_tuned_build_matches_keras_and_records_tuning(tmp_path, capsys):
    stem = KERAS3 / "models" / "seq_cnn"
    reference = np.load(stem.with_suffix(".npz"))
    calls = []
    model = bridge.build(
        stem.with_suffix(".keras"),
        tune=16,
        tuning_db=tmp_path,
        batch_size=2,
        progress=lambda description, done: calls.append((description, done)),
    )
    assert capsys.readouterr() == ("", "")  # progress is the caller's to draw
    assert calls[0] == ("reading seq_cnn.keras", None)
    assert all(isinstance(text, str) and text for text, _ in calls)
    fractions = [done for _, done in calls if done is not None]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert any(t.startswith("tuning: ") and t.endswith("16/16 trials") for t, _ in calls)
    assert calls[-1][0].startswith("compiling for ")
    assert model.metadata["tuning"]["trials"] == 16
    stored = model.metadata["tuning"]["kernels_faster"] > 0  # only faster, checked kernels
    assert (model.metadata["tuning_database"] is not None) == stored
    got = model(reference["input_0"])
    np.testing.assert_allclose(got, reference["output_0"], rtol=1e-4, atol=1e-5)


def test_cross_target_without_rpc_is_refused(tmp_path):
    with pytest.raises(TargetError, match="RPC tracker"):
        bridge.tune(
            KERAS3 / "models" / "seq_cnn.keras", target="rpi4", budget=8, tuning_db=tmp_path
        )


def test_remote_tuning_through_a_loopback_tracker(fused, workload, tmp_path):
    from tvm.s_tir.meta_schedule.testing.local_rpc import LocalRPC

    with LocalRPC(tracker_key="bridge-test", silent=True) as rpc:
        remote = Remote(f"{rpc.tracker_host}:{rpc.tracker_port}", rpc.tracker_key)
        report = tune_kernels(fused, TARGET, Budget(trials=8), folder=tmp_path, remote=remote)
    (kernel,) = report.kernels
    assert kernel.trials == 8 and kernel.default_ms > 0
    assert workload_key(workload) in Ledger(tmp_path)


def test_rpc_tracker_address_is_validated():
    with pytest.raises(TuningError, match="host:port"):
        _ = Remote("localhost", "key").address


def test_tuning_draws_nothing_itself():
    for path in (ROOT / "bridge" / "tuning").glob("*.py"):
        assert "rich" not in path.read_text(), f"{path.name}: drawing progress is the CLI's job"


def test_cli_tune_draws_the_progress_it_is_told(monkeypatch, tmp_path, capsys):
    import io

    from rich.console import Console

    from bridge import cli
    from bridge.commands import console as commands_console
    from bridge.tuning import TuningReport

    def fake_tune(model, weights, *, progress, **options):
        progress("reading seq_cnn.keras", None)
        progress("tuning: 1/2 faster [fast]", 0.5)
        return TuningReport("znver4", tmp_path)

    monkeypatch.setattr(bridge, "tune", fake_tune)
    terminal = io.StringIO()
    monkeypatch.setattr(
        commands_console, "err_console", Console(file=terminal, force_terminal=True)
    )
    model = KERAS3 / "models" / "seq_cnn.keras"
    assert cli.main(["tune", str(model), "--budget", "8", "--tuning-db", str(tmp_path)]) == 0
    drawn = terminal.getvalue()
    assert "tuning: 1/2 faster [fast]" in drawn and "50%" in drawn
    assert "0 kernels" in capsys.readouterr().out

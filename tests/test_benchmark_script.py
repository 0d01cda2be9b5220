"""benchmarks/run.py's timing driver (the script itself needs the peers installed; these parts
do not): one runtime whose timing subprocess fails is reported, the others are still timed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests.conftest import script_fixture

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


run_script = script_fixture(SCRIPT, "bench_run")


def test_a_failed_timing_subprocess_leaves_the_other_runtimes_timed(run_script, monkeypatch):
    calls = []

    def run_alone(key, model, batch, args, passes):
        calls.append(key)
        if key == "onnxruntime":
            raise RuntimeError("timing subprocess failed: Segmentation fault")
        return [0.001, 0.002]

    monkeypatch.setattr(run_script, "run_alone", run_alone)
    monkeypatch.setattr(run_script, "log", lambda *_: None)
    keys = ["bridge", "onnxruntime", "litert-fp32"]
    times, failures = run_script.measure_alone(keys, "MobileNetV2", 1, SimpleNamespace())
    assert set(times) == {"bridge", "litert-fp32"}
    assert times["bridge"] == [0.001, 0.002] * run_script.TIMING_PASSES
    assert failures == {"onnxruntime": "timing subprocess failed: Segmentation fault"}
    assert calls.count("onnxruntime") == 1  # not retried in the later passes


def test_passes_alternate_the_order_and_share_the_budget(run_script, monkeypatch, tmp_path):
    calls = []

    def run_logged(command, out, timeout=None):
        flags = dict(zip(command[2::2], command[3::2], strict=True))
        calls.append((flags["--time-alone"], float(flags["--time-budget"]), int(flags["--rounds"])))
        out.write_text("[0.001]\n")
        return None

    (tmp_path / "probes").mkdir()
    monkeypatch.setattr(run_script, "run_logged", run_logged)
    monkeypatch.setattr(run_script, "WORK_DIR", tmp_path)
    args = run_script.parse_args(["--passes", "3", "--time-budget", "6", "--rounds", "30"])
    times, failures = run_script.measure_alone(["a", "b"], "MobileNetV2", 1, args)
    assert failures == {}
    assert times == {"a": [0.001] * 3, "b": [0.001] * 3}
    assert [key for key, _, _ in calls] == ["a", "b", "b", "a", "a", "b"]
    assert {(budget, rounds) for _, budget, rounds in calls} == {(2.0, 10)}

"""scripts/peak_check.py: its two C loops compile with the system compiler and report rates
that are plausible for one core (a loop the compiler optimized away would report absurd ones)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import script_fixture

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "peak_check.py"


peak_check = script_fixture(SCRIPT, "peak_check")


def test_the_loops_report_plausible_rates(peak_check, tmp_path):
    if not peak_check.host_kinds() or not shutil.which("taskset"):
        pytest.skip("needs AVX-512 VNNI or AVX2 + FMA, and taskset")
    for kinds in (peak_check.AVX512_KINDS, peak_check.AVX2_KINDS):
        for name, (kind, flags) in kinds.items():
            binary = peak_check._compile(tmp_path, kind, flags)  # all compile, any host
            if kinds is not peak_check.host_kinds():
                continue
            (rate,) = peak_check._run(binary, [0], 0.05)
            # one core: a few GFLOP/s even under load, never above ~16 lanes x 2 ops x 2 pipes
            # x 6 GHz (fp32 on AVX-512; half with AVX2) or 4x that (int8 dot products)
            ceiling = {"0": 400, "1": 1600, "2": 200, "3": 400}[kind]
            assert 5 < rate < ceiling, (name, rate)


def test_the_script_runs_end_to_end(peak_check):
    if not peak_check.host_kinds() or not shutil.which("taskset"):
        pytest.skip("needs AVX-512 VNNI or AVX2 + FMA, and taskset")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "0.05", "--repeat", "1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if "one core" in line]
    assert [line.split(":")[0] for line in lines] == list(peak_check.host_kinds())

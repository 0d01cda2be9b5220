"""Fuzzing bridge's readers: mutated Keras inputs must end in a result or a bridge.errors error.

The default run fuzzes every format with a small fixed budget (derandomized: the same cases on
every run, so CI is reproducible). ``pytest -m slow tests/test_fuzz.py`` runs a longer campaign;
``BRIDGE_FUZZ_EXAMPLES=N`` sets the number of cases per format of either run. Design, the record
of cases run and of every crash class found: ``tests/fuzz/README.md``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.formats import FORMATS
from tests.fuzz.harness import Runner, fuzz_one

BOUNDED_EXAMPLES = 60
LONG_EXAMPLES = 2000


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    runner = Runner(tmp_path_factory.mktemp("fuzz"))
    yield runner
    runner.close()


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
    _fuzz(runner, format_name, BOUNDED_EXAMPLES, derandomize=True)


@pytest.mark.slow
@pytest.mark.parametrize("format_name", sorted(FORMATS))
def test_fuzz_long(runner, format_name):
    _fuzz(runner, format_name, LONG_EXAMPLES, derandomize=False)

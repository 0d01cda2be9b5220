"""Parent side of the fuzz harness: builds each case in a fresh folder, runs it in the worker
process with a time limit, and checks the invariant.

Invariant: every input ends in a result or a ``bridge.errors`` exception; no other exception, no
crash of the process, no hang (per-case time limit), no allocation past the worker's memory cap,
no file written, no file opened outside the case folder.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from hypothesis import strategies as st

from tests.fuzz.formats import FORMATS, MUTATION_NOTE, seeds_of
from tests.fuzz.mutate import Canaries
from tests.fuzz.worker import Case, Outcome, serve

CASE_TIMEOUT_S = float(os.environ.get("BRIDGE_FUZZ_TIMEOUT", "20"))
START_TIMEOUT_S = 180.0


class Runner:
    """A worker process; restarted after it dies or hangs."""

    def __init__(self, base: Path):
        self.base = base
        self.canaries = Canaries(base / "outside")
        self.canaries.create()
        self.log = base / "worker.log"
        self.counts: Counter[tuple[str, str]] = Counter()
        # (format, mutation kind, status), for formats whose mutator notes its kind
        self.kinds: Counter[tuple[str, str, str]] = Counter()
        self._case_index = 0
        self._process = None
        self._conn = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child, str(self.canaries.folder), str(self.log)), daemon=True
        )
        self._process.start()
        child.close()
        if not self._conn.poll(START_TIMEOUT_S) or self._conn.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
        self._process = self._conn = None

    def close(self) -> None:
        self._stop()

    def new_folder(self) -> Path:
        """A fresh, empty case folder (the previous one is removed)."""
        self._case_index += 1
        cases = self.base / "cases"
        shutil.rmtree(cases, ignore_errors=True)
        folder = cases / f"case{self._case_index}"
        folder.mkdir(parents=True)
        return folder

    def run(self, case: Case) -> Outcome:
        if self._process is None:
            self._start()
        self._conn.send(case)
        try:
            if self._conn.poll(CASE_TIMEOUT_S):
                return self._conn.recv()
            self._stop()
            return Outcome("hang", message=f"no answer within {CASE_TIMEOUT_S:.0f} s")
        except (EOFError, ConnectionError):
            code = self._process.exitcode if self._process else None
            self._stop()
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            return Outcome(
                "died", message=f"worker process died (exit code {code})", traceback=tail
            )


def fuzz_one(data: st.DataObject, runner: Runner, format_name: str) -> Outcome:
    """Draw a seed of the format, mutate it, run it; fail (or record) if the invariant breaks."""
    fmt = FORMATS[format_name]
    seeds = seeds_of(format_name)
    seed = seeds[data.draw(st.integers(0, len(seeds) - 1), label="seed")]
    folder = runner.new_folder()
    seed.write(folder)
    fmt.mutate(data, folder, seed, runner.canaries)
    weights = str(folder / seed.weights) if seed.weights else None
    case = Case(
        fmt.name, fmt.entry, str(folder / seed.model), weights, str(folder),
        str(runner.canaries.folder),
    )  # fmt: skip
    outcome = runner.run(case)
    runner.counts[(format_name, outcome.status)] += 1
    note = folder / MUTATION_NOTE
    mutation = note.read_text() if note.exists() else ""
    if mutation:
        runner.kinds[(format_name, mutation, outcome.status)] += 1
    record = os.environ.get("BRIDGE_FUZZ_RECORD")
    if record:
        if outcome.status not in ("ok", "error") or outcome.violations:
            keep = Path(record + ".cases") / f"{format_name}-{runner.counts.total()}"
            shutil.copytree(folder, keep, dirs_exist_ok=True)
        with open(record, "a") as handle:
            entry = {"format": format_name, "seed": seed.name, "mutation": mutation}
            handle.write(json.dumps({**entry, **asdict(outcome)}))
            handle.write("\n")
        return outcome
    assert outcome.status in ("ok", "error") and not outcome.violations, describe(
        outcome, f"{seed.name} {mutation}".strip()
    )
    return outcome


def describe(outcome: Outcome, seed: str) -> str:
    lines = [f"seed {seed}: {outcome.status} {outcome.error_type}: {outcome.message[:500]}"]
    lines += outcome.violations
    if outcome.traceback:
        lines.append(outcome.traceback)
    return "\n".join(lines)

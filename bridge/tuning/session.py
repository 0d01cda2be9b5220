"""Tuning a model's kernels with MetaSchedule, within a budget, safely.

What bridge adds to ``meta_schedule.tune_tasks``:

* Only kernels worth it are tuned (reductions: conv, matmul, pooling; float or integer, so the
  int8 kernels of quantized models too), heaviest first, and only those not tuned before for
  this target (``tuned.json``): re-tuning a model tunes nothing. bridge's packed int8 products
  are searched with the integer dot instruction (:mod:`bridge.tuning.space`).
* Candidates are built in this process (0.1-0.2 s each, where MetaSchedule's process-pool builder
  needs seconds) and measured by MetaSchedule's runner: locally, or on a remote device through
  an RPC tracker.
* A candidate is accepted only if it is faster than bridge's default schedule of the same
  kernel *and* gives the same results on random inputs (integer outputs exactly, on the
  model's own constants: :mod:`bridge.tuning.kernels`); wrong kernels (MetaSchedule can emit
  them, e.g. for a fused conv2d+clip+pad) are counted and dropped. Accepted kernels are written
  to the database as they are found, so a run cut short keeps everything found so far.
* The budget is time or trials; when time is up every task is stopped after its current batch.
* Progress goes to a callback, ``progress(description, done)`` (``done``: the fraction of the
  budget spent, or None while the default kernels are measured), the convention of
  ``bridge.build``'s ``progress``; drawing it is the caller's business (the CLI draws a bar).
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

from bridge.cores import usable_cores
from bridge.errors import TargetError, TuningError
from bridge.schedules import compile_options
from bridge.tuning import database as db
from bridge.tuning import kernels
from bridge.tuning.intrinsics import load_cpu_intrinsics
from bridge.tuning.space import space

TRIALS_PER_ROUND = 32
# progress(description, done): done is the fraction of the stage complete, or None if unknown.
ProgressCallback = Callable[[str, float | None], None]


@dataclass(frozen=True)
class Budget:
    """``seconds`` of tuning, or ``trials`` candidates measured in all."""

    seconds: float | None = None
    trials: int | None = None

    @classmethod
    def parse(cls, value: Any) -> Budget:
        """``1000`` (trials), ``"20m"``, ``"90s"``, ``"1h"``, or ``"500 trials"``."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, bool) or value is None:
            raise TuningError(f"tune= takes a time like '20m' or a trial count, got {value!r}")
        if isinstance(value, int):
            return cls(trials=value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|trials?)?\s*", str(value))
        if not match or float(match.group(1)) <= 0:
            raise TuningError(f"tune={value!r}: expected e.g. '20m', '90s', '1h' or 500")
        amount, unit = float(match.group(1)), match.group(2) or "trials"
        if unit.startswith("trial"):
            return cls(trials=int(amount))
        return cls(seconds=amount * {"s": 1, "m": 60, "min": 60, "h": 3600}[unit])

    def __str__(self) -> str:
        return f"{self.trials} trials" if self.trials else f"{self.seconds:g} s"


@dataclass(frozen=True)
class Remote:
    """Where candidates run when the build machine cannot: an RPC tracker and device key."""

    tracker: str  # host:port
    key: str

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.tracker.rpartition(":")
        if not host or not port.isdigit():
            raise TuningError(f"RPC tracker must be host:port, got {self.tracker!r}")
        return host, int(port)

    def session(self):
        from tvm import rpc

        host, port = self.address
        return rpc.connect_tracker(host, port).request(self.key, priority=1, session_timeout=0)


@dataclass
class KernelResult:
    name: str
    weight: int
    default_ms: float
    best_ms: float
    trials: int = 0
    wrong: int = 0

    @property
    def speedup(self) -> float:
        return self.default_ms / self.best_ms if self.best_ms else 1.0


@dataclass
class TuningReport:
    """What a tuning run did: per kernel, default vs best latency; wrong candidates dropped."""

    target: str
    database: Path
    seconds: float = 0.0
    skipped: int = 0  # kernels tuned in an earlier run
    kernels: list[KernelResult] = field(default_factory=list)

    @property
    def trials(self) -> int:
        return sum(k.trials for k in self.kernels)

    @property
    def wrong(self) -> int:
        return sum(k.wrong for k in self.kernels)

    @property
    def improved(self) -> int:
        return sum(1 for k in self.kernels if k.best_ms < k.default_ms)

    def estimate_ms(self, tuned: bool) -> float:
        """Summed kernel latency (weight x latency) before or after tuning."""
        return sum(k.weight * (k.best_ms if tuned else k.default_ms) for k in self.kernels)

    def summary(self) -> dict[str, Any]:
        """The headline numbers (kept in an exported model's metadata)."""
        return {
            "database": str(self.database),
            "seconds": round(self.seconds, 1),
            "kernels_tuned": len(self.kernels),
            "kernels_faster": self.improved,
            "kernels_tuned_before": self.skipped,
            "trials": self.trials,
            "wrong_candidates_dropped": self.wrong,
            "kernel_ms_before": round(self.estimate_ms(False), 4),
            "kernel_ms_after": round(self.estimate_ms(True), 4),
        }


@derived_object
class InProcessBuilder(PyBuilder):
    """Builds candidates in this process and exports them as shared libraries."""

    def __init__(self, cross_compiler: str | None = None):
        super().__init__()
        self.cross_compiler = cross_compiler

    def build(self, build_inputs):
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
        from tvm.support import cc

        fcompile = cc.cross_compiler(self.cross_compiler) if self.cross_compiler else None
        results = []
        for item in build_inputs:
            # one folder per artifact: MetaSchedule deletes the folder once it is measured
            path = str(Path(tempfile.mkdtemp(prefix="bridge-candidate-")) / "kernel.so")
            try:
                mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                built = tvm.compile(mod, **compile_options(item.target))
                built.mod.export_library(path, fcompile=fcompile)
                results.append(BuilderResult(path, None))
            except Exception as exc:  # a candidate that fails to build is just not measured
                results.append(BuilderResult(None, f"{type(exc).__name__}: {exc}"))
        return results


@dataclass
class _Task:
    name: str
    mod: tvm.IRModule
    key: str
    result: KernelResult
    reference: kernels.Reference


@derived_object
class CheckAndCommit(PyMeasureCallback):
    """After each measured batch: check the fastest new candidates numerically and store the
    first one that beats the best so far."""

    def __init__(self, tasks, target, executor, database, ledger, progress):
        super().__init__()
        self.tasks: list[_Task] = tasks
        self.target = target
        self.executor = executor
        self.database = database
        self.ledger: db.Ledger = ledger
        self.progress = progress

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        task = self.tasks[task_id]
        task.result.trials += len(measure_candidates)
        timed = sorted(
            (sum(float(s.value) for s in r.run_secs) / len(r.run_secs), i)
            for i, r in enumerate(runner_results)
            if r.run_secs and not r.error_msg
        )
        for seconds, i in timed[:3]:
            if seconds * 1e3 >= task.result.best_ms:
                break
            candidate = measure_candidates[i]
            lib = kernels.build_schedule(candidate.sch.mod, self.target)
            if not task.reference.matches(lib, self.executor):
                task.result.wrong += 1
                continue
            workload = self.database.commit_workload(task.mod)
            self.database.commit_tuning_record(
                ms.database.TuningRecord(
                    candidate.sch.trace,
                    workload,
                    [float(seconds)],
                    self.target,
                    candidate.args_info,
                )
            )
            task.result.best_ms = seconds * 1e3
            break
        self.ledger.record(task.key, _ledger_entry(task.result))
        self.progress(self.tasks)


@derived_object
class BudgetScheduler(PyTaskScheduler):
    """Picks the next kernel to tune: each once, heaviest first; then the one with the most
    weighted latency left, discounted by the rounds it already had. Stops at the deadline
    (after joining the measurements in flight), so the budget ends cleanly."""

    def __init__(self, tasks, deadline: float | None):
        super().__init__()
        self.tasks: list[_Task] = tasks
        self.deadline = deadline
        self.rounds = [0] * len(tasks)

    def next_task_id(self) -> int:
        outer = self._outer()
        records = outer.tasks_
        for i in range(len(records)):
            outer.touch_task(i)
        if self.deadline is not None and time.monotonic() > self.deadline:
            return -1
        live = [i for i, r in enumerate(records) if not r.is_terminated]
        if not live:
            return -1
        fresh = [i for i in live if self.rounds[i] == 0]
        chosen = fresh[0] if fresh else max(live, key=self._priority)
        if records[chosen].runner_futures is not None:
            self.join_running_task(chosen)
        self.rounds[chosen] += 1
        return chosen

    def _priority(self, i: int) -> float:
        result = self.tasks[i].result
        return result.weight * result.best_ms / (1 + self.rounds[i])


def _ledger_entry(result: KernelResult) -> dict[str, Any]:
    return {
        "name": result.name,
        "trials": result.trials,
        "default_ms": round(result.default_ms, 5),
        "best_ms": round(result.best_ms, 5),
        "wrong": result.wrong,
    }


def _select(fused: tvm.IRModule, target, ledger: db.Ledger):
    """Tasks worth tuning and not tuned before, heaviest first; and how many were skipped."""
    extracted = ms.relax_integration.extract_tasks(fused, target)
    chosen, skipped = [], 0
    for task in extracted:
        mod = task.dispatched[0]
        if not (kernels.has_reduction(mod) and kernels.static_tensors(mod)):
            continue
        if db.workload_key(mod) in ledger:
            skipped += 1
            continue
        chosen.append(task)
    chosen.sort(key=lambda t: -s_tir.analysis.estimate_tir_flops(t.dispatched[0]) * t.weight)
    return chosen, skipped


def tune(
    fused: tvm.IRModule,
    target: tvm.target.Target,
    budget: Budget,
    *,
    folder: Path,
    remote: Remote | None = None,
    cross_compiler: str | None = None,
    progress: ProgressCallback | None = None,
) -> TuningReport:
    """Tune the kernels of ``fused`` (a module after :func:`bridge.schedules.pipeline.fuse`)
    for ``target`` within ``budget``, storing checked kernels in the database in ``folder``.
    ``progress(description, done)`` hears how far it is (see the module's docstring)."""
    if target.kind.name != "llvm":
        raise TargetError(f"tuning supports CPU targets; got {target.kind.name}")
    _check_extras()
    started = time.monotonic()
    load_cpu_intrinsics(
        "aarch64" if "aarch64" in str(target.attrs.get("mtriple", "")) else "x86_64"
    )
    target = _with_cores(target)
    ledger = db.Ledger(folder)
    report = TuningReport(str(target.attrs.get("mcpu", target.kind.name)), folder)
    extracted, report.skipped = _select(fused, target, ledger)
    if not extracted:
        return report
    executor = kernels.Executor(remote, cross_compiler if remote else None)
    show = _Progress(progress, budget, len(extracted))
    constants = kernels.call_site_constants(fused)
    tasks = []
    for i, task in enumerate(extracted):
        show.status(f"tuning: measuring default kernels {i + 1}/{len(extracted)}")
        mod = task.dispatched[0]
        key = db.workload_key(mod)
        reference = kernels.Reference.measure(mod, target, executor, constants.get(key))
        ms_default = reference.seconds * 1e3
        result = KernelResult(task.task_name, int(task.weight), ms_default, ms_default)
        tasks.append(_Task(task.task_name, mod, key, result, reference))
    report.kernels = [t.result for t in tasks]
    contexts = [_context(task, target, seed) for seed, task in enumerate(extracted)]
    weights = [float(task.weight) for task in extracted]
    deadline = started + budget.seconds if budget.seconds else None
    callback = CheckAndCommit(
        tasks, target, executor, db.open_database(folder), ledger, show.update
    )
    show.start(deadline)
    trials = budget.trials or 10**9
    ms.tune_tasks(
        tasks=contexts,
        task_weights=weights,
        work_dir=tempfile.gettempdir(),  # unused: the database and loggers are given
        max_trials_global=trials,
        max_trials_per_task=trials if budget.trials else None,
        num_trials_per_iter=TRIALS_PER_ROUND,
        builder=InProcessBuilder(cross_compiler),
        runner=_runner(remote),
        database=ms.database.MemoryDatabase(),
        measure_callbacks=[callback, *ms.measure_callback.MeasureCallback.create("default")],
        cost_model=ms.cost_model.CostModel.create("xgb", num_tuning_cores=usable_cores()),
        task_scheduler=BudgetScheduler(tasks, deadline),
    )
    report.seconds = time.monotonic() - started
    return report


def _check_extras() -> None:
    """MetaSchedule's cost model and workers need packages bridge does not require by default."""
    import importlib.util

    missing = [m for m in ("xgboost", "cloudpickle", "psutil") if not importlib.util.find_spec(m)]
    if missing:
        raise TuningError(
            f"tuning needs {', '.join(missing)}: pip install 'bridge[tune]' (xgboost-cpu,"
            " cloudpickle, psutil)"
        )


def _context(task, target: tvm.target.Target, seed: int) -> ms.TuneContext:
    """A MetaSchedule task with a quiet logger of bridge's (MetaSchedule's own file loggers
    break when configured twice in one process, and print tables to stdout)."""
    logger = logging.getLogger(f"bridge.tuning.task.{task.task_name}")
    logger.setLevel(logging.WARNING)
    return ms.TuneContext(
        mod=task.dispatched[0],
        target=target,
        space_generator=space(task.dispatched[0]),
        # half MetaSchedule's default search effort per round: on a few cores the search, not
        # measuring, dominates a round; more, cheaper rounds use a small budget better
        search_strategy=ms.search_strategy.EvolutionarySearch(
            population_size=256, genetic_num_iters=2, init_min_unmeasured=32
        ),
        task_name=task.task_name,
        logger=logger,
        rand_state=seed,
        num_threads=usable_cores(),
    ).clone()


def _with_cores(target: tvm.target.Target) -> tvm.target.Target:
    """MetaSchedule needs the core count in the target (threads per candidate)."""
    from bridge.targets import target_json

    if "num-cores" in target.attrs:
        return target
    return tvm.target.Target({**target_json(target), "num-cores": usable_cores()})


def _runner(remote: Remote | None):
    config = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40)
    if remote is None:
        return ms.runner.LocalRunner(timeout_sec=20, evaluator_config=config)
    host, port = remote.address
    rpc = ms.runner.RPCConfig(
        tracker_host=host, tracker_port=port, tracker_key=remote.key, session_timeout_sec=60
    )
    return ms.runner.RPCRunner(rpc_config=rpc, evaluator_config=config, max_workers=1)


class _Progress:
    """Tells ``progress`` how tuning goes: kernels improved, estimated latency, the budget left."""

    def __init__(self, progress: ProgressCallback | None, budget: Budget, count: int):
        self.progress = progress or (lambda description, done: None)
        self.budget, self.count = budget, count
        self.deadline = None

    def status(self, text: str) -> None:
        self.progress(text, None)

    def start(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.progress(f"tuning {self.count} kernels, {self.budget}", 0.0)

    def update(self, tasks: list[_Task]) -> None:
        results = [t.result for t in tasks]
        before = sum(r.weight * r.default_ms for r in results)
        after = sum(r.weight * r.best_ms for r in results)
        improved = sum(1 for r in results if r.best_ms < r.default_ms)
        wrong = sum(r.wrong for r in results)
        trials = sum(r.trials for r in results)
        text = f"tuning: {improved}/{len(results)} faster, {before:.2f} -> {after:.2f} ms"
        text += f", {wrong} wrong dropped" if wrong else ""
        if self.deadline:
            left = max(0.0, self.deadline - time.monotonic())
            text += f", {left / 60:.1f} min left"
            done = 1.0 - left / self.budget.seconds
        else:
            text += f", {trials}/{self.budget.trials} trials"
            done = trials / self.budget.trials
        self.progress(text, min(1.0, done))

"""MetaSchedule for whatever in a model none of our kernels computes.

Our kernels (:mod:`export.tvm.kernels`) are tuned by :mod:`export.tvm.knob_search`; MetaSchedule
cannot tune them (the BSR loops run over ``indptr``, which its search space cannot tile and its runner
fills with random indices) and is not asked to: they are marked scheduled and skipped here. What is
left (ops of a user's model that match no kernel) goes through MetaSchedule, recorded in the job's
tuning directory, so a rerun reuses every measurement: a task already holding ``trials`` records is
not tuned again, a partly tuned one (a run that was stopped) gets only the missing trials, identical
tasks are tuned once.

TVM 0.27 trap handled here: MetaSchedule imports ``tvm.s_tir.tensor_intrin`` in every builder
worker and tune context (~40 s here, against a 30 s build timeout); :mod:`ms_builder` registers only
the CPU intrinsics instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from pathlib import Path

from export.tvm.ms_builder import build_without_intrinsics, cpu_tensor_intrinsics, export_with
from export.tvm.targets import TargetSpec
from onexn_tf import files
from onexn_tf.rpc import Rpc
from onexn_tf.errors import InvalidArgument

KERNEL_PREFIX = "onexn_"
MS_DIR = "metaschedule"


def zero_pipeline(mod):
    """Legalize + fuse, exactly as ``compile_relax`` does before applying a database (so keys match)."""
    import tvm
    from tvm import relax

    seq = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                    relax.transform.FuseTIR()])
    with tvm.transform.PassContext(opt_level=3):
        return seq(mod)


def dense_tasks(prepared, target):
    """MetaSchedule tasks of a fused module, without our own kernels."""
    from tvm.s_tir import meta_schedule as ms

    return [t for t in ms.relax_integration.extract_tasks(prepared, target)
            if not t.task_name.startswith(KERNEL_PREFIX)]


def open_database(work_dir):
    from tvm.s_tir import meta_schedule as ms

    path = Path(work_dir) / MS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(str(path / "database_workload.json"), str(path / "database_tuning_record.json"),
                                    allow_missing=True)


def search_strategy(trials_per_task: int):
    """Evolutionary search sized to the budget: its defaults (population 512, 4 generations) spend
    ~20 s per task per round here, which dwarfs the measurements of a small budget."""
    from tvm.s_tir import meta_schedule as ms

    population = int(min(512, max(64, 8 * trials_per_task)))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population // 4),
        genetic_num_iters=2 if trials_per_task < 32 else 4)


def _records(database, task) -> int:
    if not database.has_workload(task.dispatched[0]):
        return 0
    workload = database.commit_workload(task.dispatched[0])
    return len(database.get_top_k(workload, 1 << 20))


LEDGER_FILE = "trials.json"


def _task_key(task, spec: TargetSpec) -> str:
    import tvm_ffi

    return f"{json.dumps(spec.config, sort_keys=True)}|{tvm_ffi.structural_hash(task.dispatched[0])}"


def _trials_done(database, ledger: dict, task, spec) -> int:
    """Trials a task has had: the ledger (written when a tuning round ends; it also counts tasks whose
    whole search space is smaller than the budget) or, after a stopped run, the records that landed."""
    return max(ledger.get(_task_key(task, spec), 0), _records(database, task))


@dataclasses.dataclass
class DenseTuning:
    tasks: int
    trials_per_task: int
    new_trials: int  # measured in this run
    reused_trials: int  # already in the database (or known to be the task's whole search space)
    seconds: float
    database: str


def tune_dense(prepared, spec: TargetSpec, work_dir, *, trials_per_task: int, rpc: Rpc | None = None,
               cross_compiler: str | None = None, progress: bool = True, seed: int = 0) -> DenseTuning:
    """MetaSchedule-tune the dense tasks of ``prepared`` (a fused module) up to ``trials_per_task``
    records each, continuing from the database in ``work_dir``."""
    from tqdm import tqdm
    from tvm.s_tir import meta_schedule as ms

    if trials_per_task < 0:
        raise InvalidArgument(f"--trials={trials_per_task} must be >= 0")
    if rpc is not None and not rpc.key:
        raise InvalidArgument("MetaSchedule measures over RPC through a tracker: give --rpc-tracker and --rpc-key")
    cpu_tensor_intrinsics()
    target = spec.target()
    start = time.time()
    database = open_database(work_dir)
    tasks = dense_tasks(prepared, target)
    ledger_path = Path(work_dir) / MS_DIR / LEDGER_FILE
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    todo = [(task, max(0, trials_per_task - _trials_done(database, ledger, task, spec))) for task in tasks]
    reused = sum(trials_per_task - missing for _, missing in todo)
    todo = [(task, missing) for task, missing in todo if missing > 0]
    before = len(database)
    if todo:
        builder = ms.builder.LocalBuilder(
            max_workers=max(1, int(spec.config["num-cores"]) if spec.is_host else os.cpu_count() or 1),
            timeout_sec=60, f_build=build_without_intrinsics,
            f_export=None if spec.is_host else functools.partial(export_with, cross_compiler))
        runner = "local" if rpc is None else ms.runner.RPCRunner(ms.runner.RPCConfig(
            tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key, session_priority=rpc.priority,
            session_timeout_sec=rpc.session_timeout))
        groups: dict[int, list] = {}  # usually one group: all untuned, or all stopped at the same count
        for task, missing in todo:
            groups.setdefault(missing, []).append(task)
        bar = tqdm(total=sum(m for _, m in todo), unit="trial", desc="tuning dense tasks", disable=not progress)
        for missing, group in groups.items():
            with _unnamed_handlers_detached():
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    group, str(Path(work_dir) / MS_DIR), strategy=search_strategy(missing), seed=seed)
            with _quiet_tvm_logs(), _TrialProgress(bar, database):
                ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(Path(work_dir) / MS_DIR),
                              max_trials_global=missing * len(group), max_trials_per_task=missing,
                              num_trials_per_iter=min(missing, 32), builder=builder, runner=runner, database=database)
            for task in group:
                key = _task_key(task, spec)
                ledger[key] = max(ledger.get(key, 0), trials_per_task)
            files.write_json(ledger_path, ledger)
        bar.update(bar.total - bar.n)
        bar.close()
    return DenseTuning(len(tasks), trials_per_task, len(database) - before, reused, time.time() - start,
                       str(Path(work_dir) / MS_DIR))


class _TrialProgress:
    """Moves the progress bar as tuning records land in the database (polled from a thread)."""

    def __init__(self, bar, database, every: float = 1.0):
        import threading

        self.bar, self.database, self.every = bar, database, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.start = None

    def _poll(self):
        while not self.stop.wait(self.every):
            reached = min(self.base + len(self.database) - self.start, self.bar.total)
            if reached > self.bar.n:
                self.bar.update(reached - self.bar.n)

    def __enter__(self):
        self.start, self.base = len(self.database), self.bar.n
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def _unnamed_handlers_detached():
    """TVM 0.27's MetaSchedule logging setup lists the names of the handlers already on its logger and
    fails (``None.format``) on a handler without a name (pytest's capture handlers, an application's
    own): detach those while it configures itself, then put them back."""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            logger.addHandler(handler)


@contextlib.contextmanager
def _quiet_tvm_logs():
    import logging

    loggers = [logging.getLogger(n) for n in ("tvm.s_tir.meta_schedule", "tvm.meta_schedule")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

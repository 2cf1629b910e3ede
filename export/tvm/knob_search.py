"""The measured knob search for our kernels: each distinct kernel (kind, shape, epilogue, target) is
generated once per candidate of its kind's small search space, all candidates are compiled into one
library, and each is timed with the layer's real constants (weights, block structure) on a random
input, here or on an RPC device, after ``FLUSH_BYTES`` of copying before each run has pushed
everything out of the timing core's private caches: inside a whole model a layer's weights and
output buffer were last touched an inference ago, which leaves them in the shared last-level cache.
A fused op's candidates are timed in the same rounds as its two parts (with the parts' searched
knobs), which it must beat to be used. The candidates close to the fastest (``FINALISTS``) are then
timed again, one run per round over ``FINAL_ROUNDS`` rounds: a shared host's slow spells last a few
milliseconds to seconds and, at 2 threads, can hit one candidate's runs in a round and not the
next's. The fastest finalist's knobs are cached in the work directory, so a rerun, or another model
with the same layers, measures nothing again; a stopped search resumes with the kernels it had not
reached.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from export.tvm import thread_pool
from export.tvm.targets import TargetSpec
from onexn_tf import files
from onexn_tf.rpc import Rpc

KNOBS_FILE = "kernel_knobs.json"
VERSION = 21  # of the kernel generators and the timing method: older measurements are not reused
# Bytes TVM's time_evaluator copies before each timed run: more than the L2 of any core we target (Zen 3:
# 512 KiB; Zen 4, Zen 5 and phones' big cores: ≤ 1 MiB). Measured on a Zen 5 with V2 at p = 0.9, in
# the model, paired A/B: evicting the layer's own buffers to memory instead (clflush of every argument
# but the input, which overstates what weights cost) chose knobs 0-3 % slower at 1 thread and 4-5 %
# slower at 2; keeping the input warm on top of this copy (it was just written, in a model) chose
# knobs 1-2 % slower at 1 thread.
FLUSH_BYTES = 4 << 20
# The finalists: the candidates within FINALIST_SPREAD of the fastest, at most FINALISTS of them, and a
# fused op's two parts. Measured on a Zen 5 with V2 at p = 0.9, 2 threads: the first timing put the
# stem's best candidate (63 µs alone, in later processes) at 85 µs, level with one that runs at 85-92
# µs in the model, and the choice cost 22-28 µs of the model's 0.64 ms.
FINALISTS, FINALIST_SPREAD, FINAL_ROUNDS = 4, 1.25, 15


def cache_key(spec: TargetSpec, op) -> str:
    return json.dumps([VERSION, spec.config, op.kernel.key()], sort_keys=True, default=str)


class _Timer:
    """Compiles a module of candidate kernels and times each, here or on an RPC device."""

    def __init__(self, spec: TargetSpec, rpc: Rpc | None, cross_compiler, repeat: int):
        import tvm

        self.spec, self.rpc, self.cross_compiler = spec, rpc, cross_compiler
        self.repeat = repeat
        self.session = rpc.connect(whole_job=True) if rpc else None
        self.device = self.session.cpu() if self.session else tvm.cpu()
        # measure with the threads the build is for (the target's num-cores), not whatever the pool has
        get = self.session.get_function if self.session else tvm.get_global_func
        self._config, self._threads = get("runtime.config_threadpool"), int(get("runtime.NumThreads")())
        self._config(1, int(spec.config["num-cores"]))  # affinity 1: the big cores

    def close(self) -> None:
        """The thread pool back to its size before (this process may run models next)."""
        self._config(1, self._threads)

    def load(self, funcs: dict):
        """The candidates compiled and loaded as they run in a model: on our thread pool when multi-core."""
        import tvm

        lib = tvm.compile(tvm.IRModule(funcs), target=self.spec.target())
        return thread_pool.load(lib, int(self.spec.config["num-cores"]), self.session, self.cross_compiler)

    def time(self, lib, names: list[str], arguments: list[list[np.ndarray]], rounds: int,
             repeat: int | None = None) -> list[float]:
        """Median ms of each named function: ``rounds`` rounds of ``repeat`` runs (default: the timer's)
        of every candidate in turn, so a drift of the machine's speed (frequent on shared cloud cores)
        hits all alike."""
        import tvm

        tensors = [[tvm.runtime.tensor(a, device=self.device) for a in arrays] for arrays in arguments]
        timers = [lib.time_evaluator(name, self.device, number=1, repeat=repeat or self.repeat,
                                     cache_flush_bytes=FLUSH_BYTES)
                  for name in names]
        samples = [[] for _ in names]
        for _ in range(rounds):
            for timer, args, out in zip(timers, tensors, samples):
                out.extend(timer(*args).results)
        return [float(np.median(s)) * 1e3 for s in samples]


def _arguments(op, knobs, inputs: list[np.ndarray]) -> list[np.ndarray]:
    constants = op.kernel.constants_for(knobs, op.constants)
    return inputs + [np.ascontiguousarray(c) for c in constants] + [np.zeros(op.kernel.output(), np.float32)]


def search(ops, spec: TargetSpec, work_dir, *, rpc: Rpc | None = None, cross_compiler=None, repeat: int = 5,
           rounds: int = 3, progress: bool = True) -> dict:
    """Cache key -> ``{"knobs", "ms", "candidates"}`` for every op of ``ops`` (measuring the missing ones)."""
    from tqdm import tqdm

    path = Path(work_dir) / KNOBS_FILE
    cache = json.loads(path.read_text()) if path.exists() else {}
    lanes, cores = spec.vector_lanes(), int(spec.config["num-cores"])
    todo = {}
    ops = [op for op in ops if op.kernel is not None]
    ops = [part for op in ops for part in (op.parts or [])] + ops  # a fused op is weighed against its parts
    for op in ops:
        key = cache_key(spec, op)
        if key not in cache and key not in todo:
            todo[key] = op
    if todo:
        timer = _Timer(spec, rpc, cross_compiler, repeat)
        bar = tqdm(total=len(todo), unit="kernel", desc="tuning our kernels", disable=not progress)
        try:
            _measure(todo, timer, cache, path, lanes, cores, rounds, bar)
        finally:
            timer.close()
            bar.close()
    return {cache_key(spec, op): cache[cache_key(spec, op)] for op in ops}


def _measure(todo: dict, timer: _Timer, cache: dict, path: Path, lanes: int, cores: int, rounds: int, bar) -> None:
    rng = np.random.default_rng(0)
    for key, op in todo.items():
        candidates = op.kernel.candidates(lanes, cores)
        if op.parts and not candidates:  # no fused kernel fits this pair: apart
            parts_ms = sum(cache[cache_key(timer.spec, part)]["ms"] for part in op.parts)
            cache[key] = _split_entry(op, [], [], parts_ms, timer.spec)
            files.write_json(path, cache)
            bar.update(1)
            continue
        names = [f"onexn_candidate_{i}" for i in range(len(candidates))]
        funcs = {name: op.kernel.build(knobs, lanes, name) for name, knobs in zip(names, candidates)}
        inputs = [rng.standard_normal(shape).astype(np.float32) for shape in op.kernel.inputs()]
        arguments = [_arguments(op, knobs, inputs) for knobs in candidates]
        # a fused op's parts, with their searched knobs, are timed in the same rounds as its candidates:
        # timed minutes apart, a busy spell of a shared host decided between fusing and not
        parts = [(part, part.kernel.knobs_from(cache[cache_key(timer.spec, part)]["knobs"]))
                 for part in op.parts or []]
        for j, (part, knobs) in enumerate(parts):
            funcs[f"onexn_part_{j}"] = part.kernel.build(knobs, lanes, f"onexn_part_{j}")
            part_inputs = [rng.standard_normal(shape).astype(np.float32) for shape in part.kernel.inputs()]
            arguments.append(_arguments(part, knobs, part_inputs))
        lib = timer.load(funcs)
        timings = _final_timings(timer, lib, list(funcs), arguments, rounds, len(names))
        timings, parts_ms = timings[:len(names)], timings[len(names):]
        best_ms, best = min(zip(timings, candidates), key=lambda t: t[0])
        apart = _split_entry(op, timings, candidates, sum(parts_ms), timer.spec) if op.parts else None
        if apart is not None and apart["ms"] <= best_ms:
            cache[key] = apart
        else:
            cache[key] = {"kind": op.kernel.kind, "knobs": dataclasses.asdict(best), "ms": best_ms,
                          "candidates": [[dataclasses.asdict(k), ms] for ms, k in zip(timings, candidates)]}
        files.write_json(path, cache)  # after every kernel: a stopped search resumes here
        bar.update(1)


def finalists(timings: list[float]) -> list[int]:
    """Indices of the candidates timed again: within ``FINALIST_SPREAD`` of the fastest, fastest first."""
    best = min(timings)
    ranked = sorted(range(len(timings)), key=timings.__getitem__)
    return [i for i in ranked[:FINALISTS] if timings[i] <= FINALIST_SPREAD * best]


def _final_timings(timer, lib, names: list[str], arguments: list, rounds: int, candidates: int) -> list[float]:
    """Every function's ms: all timed in ``rounds`` rounds, then the finalists (and the parts, the names
    after the first ``candidates``) again, one run a round for ``FINAL_ROUNDS`` rounds; those times
    replace their first ones."""
    timings = timer.time(lib, names, arguments, rounds)
    again = finalists(timings[:candidates]) + list(range(candidates, len(names)))
    if len(again) < 2:
        return timings
    final = timer.time(lib, [names[i] for i in again], [arguments[i] for i in again], FINAL_ROUNDS, repeat=1)
    for i, ms in zip(again, final):
        timings[i] = ms
    return timings


def _split_entry(op, timings, candidates, parts_ms: float, spec: TargetSpec) -> dict:
    """The entry of a fused op run as its parts, which take ``parts_ms`` together."""
    knobs = dataclasses.replace(op.kernel.default_knobs(spec.vector_lanes(), int(spec.config["num-cores"])),
                                split=True)
    return {"kind": op.kernel.kind, "knobs": dataclasses.asdict(knobs), "ms": parts_ms,
            "candidates": [[dataclasses.asdict(k), ms] for ms, k in zip(timings, candidates)]}


def knobs_from(entries: dict, spec: TargetSpec):
    """``knobs_for(op)`` for :func:`rewrite.apply_plan`: the searched knobs, else the kind's default."""
    lanes, cores = spec.vector_lanes(), int(spec.config["num-cores"])

    def knobs_for(op):
        if op.kernel is None:
            return None
        entry = entries.get(cache_key(spec, op))
        return op.kernel.knobs_from(entry["knobs"]) if entry else op.kernel.default_knobs(lanes, cores)
    return knobs_for

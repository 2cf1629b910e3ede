"""Interleaved timing of compiled modules on one RPC device.

Every module is uploaded and loaded into a Relax VM on the device, its output checked against the
reference, then all of them are timed round-robin (A B A B …): each round takes one sample of every
module with TVM's own ``time_evaluator`` on the device, so drift (thermal throttling, background
load, frequency scaling) hits every module alike. Results are saved after every round; a lost
device is reconnected (bounded, with back-off) and the run goes on where it stopped.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from android_bench import results
from android_bench.connection import DeviceLost, DeviceUnavailable, Rpc, describe, message, open_session
from android_bench.modules import Module
from onexn_tf.errors import InvalidArgument

# TVM's threading_backend AffinityMode. Its modes that take a core list (-2, -3) cannot be used over RPC
# (TVM 0.27 cannot send an array argument): pin the server itself instead (``taskset -c 4-7 ...``).
AFFINITY = {"big": 1, "little": -1}


@dataclasses.dataclass
class Settings:
    warmup: int = 5  # untimed runs of every module before the first round
    number: int = 1  # runs averaged into one sample
    repeat: int = 30  # samples (rounds) per module
    min_repeat_ms: int = 0  # raise ``number`` until one sample takes at least this long
    cooldown_ms: int = 0  # idle time between rounds (thermal cool-down)
    threads: int | None = None  # worker threads on the device (None: the runtime's default)
    affinity: str = "big"  # the thread pool on the big or the little cores
    rtol: float = 1e-4  # relative tolerance against the reference output
    retries: int = 2  # reconnections (and connection attempts) before giving up
    backoff: float = 1.0  # seconds before the first retry, doubled each time
    queue_timeout: float = 60.0  # seconds to wait for a free device with the key

    def check(self) -> None:
        for name in ("number", "repeat"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"--{name}={getattr(self, name)} is not allowed: it must be >= 1")
        for name in ("warmup", "min_repeat_ms", "cooldown_ms", "retries"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"--{name.replace('_', '-')}={getattr(self, name)} is not allowed: it must be >= 0")
        if self.affinity not in AFFINITY:
            raise InvalidArgument(f"--affinity={self.affinity} is not allowed: choose one of {', '.join(AFFINITY)}")
        if self.threads is not None and self.threads < 1:
            raise InvalidArgument(f"--threads={self.threads} is not allowed: it must be >= 1")
        if self.rtol <= 0 or self.queue_timeout <= 0:
            raise InvalidArgument("--rtol and --queue-timeout must be > 0")


class _Device:
    """One session and the modules loaded in it; rebuilt from scratch after a reconnection."""

    def __init__(self, rpc: Rpc, settings: Settings, log):
        self.settings = settings
        self.session = open_session(rpc, queue_timeout=settings.queue_timeout, retries=settings.retries,
                                    backoff=settings.backoff, log=log)
        self.device = self.session.cpu()
        self.vms = {}
        self.threads = self._configure_threads()

    def _configure_threads(self) -> dict:
        s = self.settings
        if s.threads is not None or s.affinity != "big":
            config = self.session.get_function("runtime.config_threadpool")
            config(AFFINITY[s.affinity], s.threads or 0)
        return {"requested": s.threads, "affinity": s.affinity,
                "runtime_threads": int(self.session.get_function("runtime.NumThreads")())}

    def _size_pool(self) -> None:
        """Our multi-core libraries run on a pool of their own (export/tvm/thread_pool.cc), one per process,
        which runtime.config_threadpool does not reach: the first such library loaded publishes
        onexn.thread_pool.threads, and --threads sizes the pool through it (its size is reported)."""
        try:
            size = self.session.get_function("onexn.thread_pool.threads")
        except Exception:
            return  # no library with our pool loaded yet (or none has one)
        self.threads["pool_threads"] = int(size(self.settings.threads) if self.settings.threads else size())

    def alive(self) -> bool:
        try:
            self.session.get_function("runtime.NumThreads")()
            return True
        except Exception:
            return False

    def load(self, module: Module, x: np.ndarray) -> np.ndarray:
        """Upload, load into a VM, set the input; returns the module's output on ``x``."""
        import tvm
        from tvm import relax

        name = f"onexn_bench_{os.getpid()}_{len(self.vms)}_{module.path.name}"  # dlopen caches by path
        self.session.upload(str(module.path), target=name)
        vm = relax.VirtualMachine(self.session.load_module(name), self.device)
        self._size_pool()
        from export.tvm.compiler import first_output

        tensor = tvm.runtime.tensor(x, device=self.device)
        out = first_output(vm["main"](tensor))
        vm.set_input("main", tensor)
        self.vms[module.label] = vm
        return out

    def sample_ms(self, label: str, repeat: int = 1) -> list[float]:
        s = self.settings
        evaluator = self.vms[label].time_evaluator("invoke_stateful", self.device, number=s.number, repeat=repeat,
                                                   min_repeat_ms=s.min_repeat_ms)
        return [r * 1e3 for r in evaluator("main").results]


def new_report(rpc: Rpc, modules: list[Module], settings: Settings, *, emulated: bool = False) -> dict:
    return {
        "device": describe(rpc),
        "emulated": emulated,
        "note": ("timings under qemu emulation: they show the modules run, they are NOT device timings"
                 if emulated else "timed on the device with TVM's time_evaluator, modules interleaved"),
        "settings": dataclasses.asdict(settings),
        "threads": None,
        "status": "running",
        "error": None,
        "rounds_done": 0,
        "reconnections": 0,
        "modules": [{"label": m.label, "path": str(m.path), "target": m.target, "sparsity": m.sparsity,
                     "status": "pending", "error": None, "verification": None, "samples_ms": []}
                    for m in modules],
    }


def run(rpc: Rpc, modules: list[Module], x: np.ndarray, settings: Settings, out_dir, *,
        emulated: bool = False, progress: bool = True, log=print) -> dict:
    """Benchmark ``modules`` on the device ``rpc`` names; results go to ``out_dir`` after every round.

    Raises :class:`DeviceUnavailable` when no session can be opened at all (nothing is written), and
    :class:`DeviceLost` when the device disappears and does not come back (what was measured is saved
    first). Ctrl-C ends the run early: what was measured is saved with status ``interrupted`` and
    returned. A module that fails to load or to reproduce its ``expected`` output is reported and left
    out; the status says whether every module (``complete``), some (``partial``) or none (``failed``)
    was timed.
    """
    settings.check()
    labels = [m.label for m in modules]
    if len(set(labels)) != len(labels):
        raise InvalidArgument(f"module labels must be unique, got {labels}")
    report = new_report(rpc, modules, settings, emulated=emulated)
    entries = {m.label: entry for m, entry in zip(modules, report["modules"])}
    device = _Device(rpc, settings, log)  # DeviceUnavailable: nothing measured, nothing written
    report["threads"] = device.threads
    log(f"connected to {describe(rpc)}; runtime threads: {device.threads['runtime_threads']}")

    def load(module):
        entry = entries[module.label]
        try:
            got = device.load(module, x)
        except Exception as error:
            if not device.alive():
                raise
            entry.update(status="load_failed", error=f"failed to load on the device: {message(error)}")
            log(f"{module.label}: {entry['error']}")
            return
        if module.expected is not None and entry["verification"] is None:
            from export.verify import compare_outputs

            check = compare_outputs(module.expected, got.reshape(module.expected.shape), settings.rtol)
            entry["verification"] = {"max_rel_error": check.max_rel_error, "rtol": settings.rtol,
                                     "passed": check.passed}
            if not check.passed:
                entry.update(status="mismatch", error=f"output differs from the reference: max relative error "
                                                      f"{check.max_rel_error:.3g} > rtol {settings.rtol}")
                log(f"{module.label}: {entry['error']}")
                return
            log(f"{module.label}: output matches the reference (max relative error {check.max_rel_error:.2e})")
        entry["status"] = "running"

    def setup():
        for module in modules:
            if entries[module.label]["status"] in ("pending", "running"):
                load(module)
        for module in active():
            device.sample_ms(module.label, repeat=max(settings.warmup, 1))  # warm-up, discarded

    def active():
        return [m for m in modules if entries[m.label]["status"] == "running"]

    def give_up(detail: str) -> DeviceLost:
        """Save what was measured as interrupted; the error to raise."""
        bar.close()
        reason = (f"the device ({describe(rpc)}) stopped answering after {report['rounds_done']} of "
                  f"{settings.repeat} rounds: {detail}")
        _finish(report, out_dir, "interrupted", reason)
        return DeviceLost(reason)

    def time_rounds():
        """The interleaved rounds, reconnecting (bounded) when the device is lost."""
        nonlocal device
        attempt = 0
        while True:
            try:
                if attempt or not device.vms:
                    setup()
                while report["rounds_done"] < settings.repeat and active():
                    for module in active():
                        entries[module.label]["samples_ms"] += device.sample_ms(module.label)
                    report["rounds_done"] += 1
                    results.save(report, out_dir)
                    bar.update(1)
                    if settings.cooldown_ms and report["rounds_done"] < settings.repeat:
                        time.sleep(settings.cooldown_ms / 1e3)
                break
            except Exception as error:
                if isinstance(error, InvalidArgument) or device.alive():
                    bar.close()
                    _finish(report, out_dir, "failed", message(error))
                    raise
                attempt += 1
                if attempt > settings.retries:
                    raise give_up(message(error)) from None
                delay = settings.backoff * 2 ** (attempt - 1)
                log(f"lost the device ({message(error)}); reconnecting in {delay:g} s ({attempt}/{settings.retries})")
                time.sleep(delay)
                try:
                    device = _Device(rpc, settings, log)
                except DeviceUnavailable as unavailable:
                    raise give_up(f"it did not come back ({unavailable})") from None
                report["reconnections"] += 1

    from tqdm import tqdm

    bar = tqdm(total=settings.repeat, unit="round", desc="timing", disable=not progress)
    try:
        time_rounds()
    except KeyboardInterrupt:
        bar.close()
        _finish(report, out_dir, "interrupted",
                f"stopped by the user (Ctrl-C) after {report['rounds_done']} of {settings.repeat} rounds")
        return report
    bar.close()
    for entry in report["modules"]:
        if entry["status"] == "running":
            entry["status"] = "ok"
    timed = [entry for entry in report["modules"] if entry["status"] == "ok"]
    if not timed:
        _finish(report, out_dir, "failed", "no module could be timed (each one's error is in its entry)")
    elif len(timed) < len(report["modules"]):
        _finish(report, out_dir, "partial", f"{len(report['modules']) - len(timed)} of {len(report['modules'])} "
                                            "modules could not be timed (each one's error is in its entry)")
    else:
        _finish(report, out_dir, "complete", None)
    return report


def _finish(report: dict, out_dir, status: str, error: str | None) -> None:
    report["status"], report["error"] = status, error
    for entry in report["modules"]:
        if entry["status"] in ("pending", "running") and status != "complete":
            entry["status"] = "interrupted" if entry["samples_ms"] else "not_run"
    results.save(report, out_dir)

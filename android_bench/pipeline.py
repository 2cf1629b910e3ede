"""From an exported model to a latency table: the TVM builds (host dense, host 1×N sparse, latency
probes at higher sparsities, aarch64), then timing over local TVM RPC (an x86 server, and the emulated
ARM device when there is one) beside onnxruntime and TFLite on the same input.

The demo's second half; each piece is also its own command (``onexn-tvm``, ``onexn-bench``,
``onexn-arm-device``) for real models and real devices.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from android_bench import host_runtimes, local, results, runner, stats
from android_bench.connection import Rpc
from android_bench.modules import Module

HOST_KEY, ARM_KEY = "local-x86", "qemu-arm64"


@dataclasses.dataclass
class Options:
    n: int = 4
    probes: tuple[float, ...] = (0.7, 0.9)  # extra sparsities, pruned post hoc, for the latency curve
    trials: int = 0  # MetaSchedule trials per task our kernels do not cover
    repeat: int = 20
    warmup: int = 3
    threads: int = 1
    emulated: str = "auto"  # auto: prepare and use the emulated ARM device if this host can; yes; no
    progress: bool = True


@dataclasses.dataclass
class Build:
    label: str
    path: Path
    target: str
    sparsity: float | None  # block sparsity of its BSR layers; None for a dense build
    onnx: Path  # the model it was compiled from
    trained: bool  # False: a latency probe pruned post hoc (its accuracy means nothing)
    sidecar: dict


def _compile(onnx_path, out: Path, work: Path, log, **options) -> dict:
    from export.tvm import compiler

    sidecar = compiler.compile_onnx(onnx_path, out, work_dir=work, log=lambda *_: None,
                                    options=compiler.Options(progress=False, **options))
    layers = sidecar["layers"]
    log(f"  {out.name}: {sidecar['target']['name']}, {len(layers)} BSR layers, max rel error vs onnxruntime "
        f"{sidecar['verification']['max_rel_error']:.1e}, {sidecar['seconds']['total']:.0f} s")
    return sidecar


def compile_builds(onnx_path, out_dir, options: Options, *, classes: int | None = None, cross: bool = True,
                   log=print) -> list[Build]:
    """Host dense + host sparse (the trained model), host probes, and the aarch64 sparse and dense
    builds (``.so`` with the cross linker, else a ``.tar`` that needs no linker)."""
    import onnx

    from export.tvm import onnx_graph

    out_dir = Path(out_dir)
    work = out_dir / "tvm_tuning"
    onnx_path = Path(onnx_path)
    builds = []

    def add(label, onnx_file, target, trained, **opts):
        suffix = ".so" if target == "host" or shutil.which("aarch64-linux-gnu-g++") else ".tar"
        path = out_dir / f"{label}{suffix}"
        sidecar = _compile(onnx_file, path, work, log, target=target, bsr=options.n, trials=options.trials, **opts)
        sparsity = None if opts.get("dense") else stats.block_weighted_sparsity(sidecar["layers"])
        builds.append(Build(label, path, target, sparsity, Path(onnx_file), trained, sidecar))

    add("tvm_dense", onnx_path, "host", True, dense=True)
    add(f"tvm_1x{options.n}", onnx_path, "host", True)
    model = onnx.load(str(onnx_path))
    for p in options.probes:
        probe, _ = onnx_graph.block_prune_pointwise(model, options.n, p, skip_out_channels=classes)
        probe_path = out_dir / f"probe_1x{options.n}_p{p:g}.onnx"
        onnx.save(probe, str(probe_path))
        add(f"tvm_1x{options.n}_p{p:g}_probe", probe_path, "host", False)
    if cross:
        add(f"arm_1x{options.n}", onnx_path, "aarch64-linux", True, tune_kernels=False)
        add("arm_dense", onnx_path, "aarch64-linux", True, dense=True)
    return builds


def _modules(builds, x_nchw) -> list[Module]:
    """onexn-bench modules with onnxruntime's output (on each build's own ONNX model) as the expected one."""
    expected = {}
    for b in builds:
        if b.onnx not in expected:
            expected[b.onnx] = host_runtimes.onnxruntime_runner(b.onnx, x_nchw)[1]
    return [Module(b.label, b.path, b.sparsity, tuple(x_nchw.shape), b.target, expected[b.onnx]) for b in builds]


def _host_runtimes(onnx_path, tflite_path, x_nchw, options: Options) -> dict:
    """onnxruntime and TFLite timed interleaved here, in the shape of a runner report's modules."""
    ort_run, ort_out = host_runtimes.onnxruntime_runner(onnx_path, x_nchw, options.threads)
    tfl_run, tfl_out = host_runtimes.tflite_runner(tflite_path, x_nchw.transpose(0, 2, 3, 1), options.threads)
    from export.verify import compare_outputs

    check = compare_outputs(ort_out, tfl_out.reshape(ort_out.shape), 1e-4)
    samples = host_runtimes.time_interleaved({"onnxruntime": ort_run, "tflite": tfl_run}, warmup=options.warmup,
                                             repeat=options.repeat)
    return {"device": "this machine (in-process)", "modules": [
        {"label": "onnxruntime", "path": str(onnx_path), "sparsity": None, "status": "ok", "samples_ms": samples[
            "onnxruntime"], "verification": None},
        {"label": "tflite_xnnpack", "path": str(tflite_path), "sparsity": None, "status": "ok",
         "samples_ms": samples["tflite"],
         "verification": {"max_rel_error": check.max_rel_error, "against": "onnxruntime", "passed": check.passed}}]}


def _emulated_device(mode: str, log):
    """A prepared emulated device, or None (with the reason logged) when ``mode`` allows doing without."""
    from android_bench import emulated

    if mode == "no":
        return None
    missing = [tool for tool in ("apt-get", "dpkg-deb", "aarch64-linux-gnu-g++") if shutil.which(tool) is None]
    if missing:
        if mode == "yes":
            raise emulated.PrepareError(f"the emulated ARM device needs {', '.join(missing)} on this host")
        log(f"  emulated ARM device skipped: this host lacks {', '.join(missing)}")
        return None
    try:
        return emulated.find() or emulated.prepare(log=lambda m: log(f"  {m}"))
    except emulated.PrepareError as error:
        if mode == "yes":
            raise
        log(f"  emulated ARM device skipped: {error}")
        return None


def measure(builds: list[Build], onnx_path, tflite_path, x_nchw: np.ndarray, out_dir, options: Options,
            log=print) -> dict:
    """Latency of every build over local TVM RPC, and of onnxruntime / TFLite in-process, on ``x_nchw``.
    Returns {"host": runner report, "runtimes": in-process report, "arm": runner report or None}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = runner.Settings(warmup=options.warmup, repeat=options.repeat, threads=options.threads,
                               queue_timeout=120)
    host_modules = _modules([b for b in builds if b.target == "host"], x_nchw)
    arm_builds = [b for b in builds if b.target != "host" and b.path.suffix == ".so"]
    device = _emulated_device(options.emulated, log) if arm_builds else None
    measured = {"host": None, "runtimes": None, "arm": None}
    with local.tracker() as tracker:
        with local.host_server(tracker, HOST_KEY, log_path=out_dir / "host_server.log"):
            log(f"  timing {len(host_modules)} TVM builds on a local x86 RPC server ({options.repeat} rounds)")
            measured["host"] = _stop_if_interrupted(runner.run(
                Rpc(*tracker, key=HOST_KEY), host_modules, x_nchw, settings, out_dir / "host",
                progress=options.progress, log=lambda m: log(f"  {m}")))
        log("  timing onnxruntime and TFLite (XNNPACK) in-process on the same input")
        measured["runtimes"] = results.refresh(_host_runtimes(onnx_path, tflite_path, x_nchw, options))
        if device is not None:
            log("  starting the emulated aarch64 RPC server (~40 s: it imports TVM twice under qemu)")
            with local.emulated_server(device, tracker, ARM_KEY, out_dir / "emulated_server.log"):
                arm_settings = dataclasses.replace(settings, repeat=max(3, options.repeat // 4), warmup=1)
                measured["arm"] = _stop_if_interrupted(runner.run(
                    Rpc(*tracker, key=ARM_KEY, session_timeout=0), _modules(arm_builds, x_nchw), x_nchw,
                    arm_settings, out_dir / "arm", emulated=True, progress=options.progress,
                    log=lambda m: log(f"  {m}")))
    return measured


def _stop_if_interrupted(report: dict) -> dict:
    """A benchmark the user stopped (Ctrl-C, its results saved) stops the whole pipeline."""
    if report["status"] == "interrupted":
        raise KeyboardInterrupt
    return report

"""ONNX -> Relax -> (our kernels, tuning) -> verified library for a named target, plus a sidecar JSON.

The steps, each in its own module: :mod:`onnx_graph` (static batch, folded pads, transposes removed),
:mod:`rewrite` (every MobileNet operation -> one of our NCHW kernels: BSR or dense pointwise,
depthwise, stem, pooling, matrix-vector, squeeze-excite scale), :mod:`knob_search` (each kernel's
knobs measured, cached in ``work_dir``), :mod:`tuning` (MetaSchedule for whatever is left, optional),
:mod:`targets` (target dict and linker). Nothing is written unless the
compiled graph reproduces onnxruntime on the original ONNX model within ``rtol``: the host build
itself, or for a cross target a host build of the same rewritten graph (the device code differs only
in codegen and tuned dense schedules).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from export.tvm import knob_search, onnx_graph, rewrite, targets, thread_pool, tuning
from export.verify import VerificationError, compare_outputs
from onexn_tf import files, provenance
from onexn_tf.errors import InvalidArgument
from onexn_tf.rpc import Rpc


@dataclasses.dataclass
class Options:
    target: str = "host"
    mcpu: str | None = None
    num_cores: int | None = None
    bsr: int = 4
    bsc: int = 1
    min_sparsity: float = 0.2
    dense: bool = False  # every matrix dense: the dense baseline through the same kernels
    trials: int = 0  # MetaSchedule trials per task left to TVM (0: untuned)
    tune_kernels: bool = True  # measure our kernels' knobs (else defaults)
    rpc: Rpc | None = None  # measure on this device instead of here
    rtol: float = 1e-4
    samples: int = 2
    seed: int = 0
    progress: bool = True
    vm: str = "compiled"  # the Relax VM's main function: "compiled" to machine code, or "bytecode" (interpreted)


# The Relax VM's execution modes. "compiled" turns the model's main function into machine code that
# calls the kernels directly; the bytecode interpreter spends ≈ 0.2 µs a kernel call more (the demo's
# 64-px MobileNetV2, 38 calls: 0.075 against 0.082 ms a run, paired, on a Zen 5). Only bytecode runs a
# VM instrument, which the per-kernel profile needs (android_bench.profile).
VM_MODES = ("compiled", "bytecode")


def sidecar_path(output) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".json")


def _check(options: Options):
    from export.tvm import bsr as bsr_format

    bsr_format.check_block(options.bsr, options.bsc)
    if not 0.0 <= options.min_sparsity <= 1.0:
        raise InvalidArgument(f"--min-sparsity={options.min_sparsity} must be in [0, 1]")
    if options.samples < 1:
        raise InvalidArgument(f"--samples={options.samples} must be >= 1")
    if options.trials and options.rpc is not None and not options.rpc.key:
        raise InvalidArgument("MetaSchedule measures over RPC through a tracker: give --rpc-tracker and --rpc-key")
    if options.rtol <= 0:
        raise InvalidArgument(f"--rtol={options.rtol} must be > 0")
    if options.vm not in VM_MODES:
        raise InvalidArgument(f"--vm={options.vm} must be one of {', '.join(VM_MODES)}")


def import_onnx(path):
    """(Relax module, input name, input shape, prepared ONNX model, pads folded)."""
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx_graph.load(path)
    name, shape = onnx_graph.input_shape(model)
    model = onnx_graph.simplify(model, batch=shape[0])
    model, folded = onnx_graph.fold_pads(model)
    model, _ = onnx_graph.drop_identity_reshapes(model)
    model, _ = onnx_graph.fold_batchnorm(model)
    return from_onnx(model, shape_dict={name: list(shape)}), name, shape, model, folded


def run_vm(executable, inputs: list[np.ndarray], device=None) -> list[np.ndarray]:
    """Outputs (first output of each call) of a Relax executable on host inputs."""
    import tvm
    from tvm import relax

    device = device or tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    return [first_output(vm["main"](tvm.runtime.tensor(x, device=device))) for x in inputs]


def first_output(out) -> np.ndarray:
    """The first tensor of a VM result (a tensor, or nested tuples of them), as numpy."""
    while isinstance(out, (list, tuple)) or type(out).__name__ == "Array":
        out = out[0]
    return out.numpy()


def reference_outputs(onnx_path, name, inputs) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return [session.run(None, {name: x})[0] for x in inputs]


def build(prepared, spec: targets.TargetSpec, work_dir, vm: str = "compiled"):
    """Compile a fused module with whatever MetaSchedule records ``work_dir`` holds applied.

    The records are applied here and the result goes through ``tvm.compile``'s default pipeline:
    TVM 0.27's ``compile_relax`` (the same records, its own pipeline) produced a MobileNetV1 ten
    times slower (628 vs 64 ms) than its own tuned functions add up to.
    """
    import tvm
    from tvm import relax
    from tvm.relax.transform import MetaScheduleApplyDatabase

    database = tuning.open_database(work_dir)
    target = spec.target()
    with target, database, tvm.transform.PassContext(opt_level=3):
        applied = MetaScheduleApplyDatabase()(prepared)
    return relax.build(applied, target, exec_mode=vm)  # (what tvm.compile calls, with the VM's mode)


def compile_onnx(onnx_path, output, *, work_dir=None, options: Options = Options(), log=print) -> dict:
    """Compile ``onnx_path`` for ``options.target`` into ``output`` (.so or .tar) and its sidecar JSON;
    returns the sidecar. Raises InvalidArgument for bad input, VerificationError for a wrong build."""
    import tvm

    _check(options)
    started = time.time()
    spec = targets.resolve(options.target, mcpu=options.mcpu, num_cores=options.num_cores)
    output = targets.check_library_path(output)
    fcompile, linker = targets.linker(spec, output)  # a missing cross compiler fails before any work
    work_dir = Path(work_dir) if work_dir else output.parent / "tvm_tuning"
    files.check_writable_file(output, "--out")
    files.check_writable_dir(work_dir, "--work-dir")
    seconds = {}

    t = time.time()
    mod, name, shape, _, folded = import_onnx(onnx_path)
    lanes = spec.vector_lanes()
    settings = rewrite.Settings(bsr=options.bsr, min_sparsity=options.min_sparsity, dense=options.dense, lanes=lanes)
    plan = rewrite.plan(mod, settings)
    seconds["import"] = time.time() - t
    log(f"imported {Path(onnx_path).name}: input {name} {list(shape)}; {len(plan.ops)} ops on our kernels, "
        f"{len(plan.sparse_layers)} of them block-sparse (bsr={options.bsr}), {len(plan.skipped)} layer(s) kept dense "
        f"or left to TVM")
    if not options.dense and not plan.sparse_layers:
        log(f"warning: no layer of {Path(onnx_path).name} was rewritten to a block-sparse kernel (none is a 1x1 conv "
            f"with whole {options.bsr}-row blocks zero at >= {options.min_sparsity:g} sparsity): this build is dense; "
            "check --bsr against the model's N, or --min-sparsity")

    t = time.time()
    work_dir.mkdir(parents=True, exist_ok=True)  # only once the model is known to be valid
    entries = {}
    measurable = spec.is_host or options.rpc is not None
    if plan.ops and options.tune_kernels and not measurable:
        log(f"our kernels keep their default knobs: a {spec.name} build can only be measured on such a device "
            f"(--rpc-tracker/--rpc-key or --rpc)")
    if plan.ops and options.tune_kernels and measurable:
        cross = None if spec.is_host else fcompile
        entries = knob_search.search(plan.ops, spec, work_dir, rpc=options.rpc, cross_compiler=cross,
                                     progress=options.progress)
    new = rewrite.apply_plan(plan, knob_search.knobs_from(entries, spec), lanes)
    leftover = rewrite.leftover_ops(new)
    prepared = tuning.zero_pipeline(new)
    seconds["kernel_tuning"] = time.time() - t

    t = time.time()
    dense = None
    if options.trials:
        compiler = targets.cross_compiler_name(spec)
        dense = tuning.tune_dense(prepared, spec, work_dir, trials_per_task=options.trials, rpc=options.rpc,
                                  cross_compiler=compiler, progress=options.progress, seed=options.seed)
        log(f"dense tasks: {dense.tasks}, new trials {dense.new_trials}, reused {dense.reused_trials} "
            f"({dense.seconds:.0f} s)")
    seconds["dense_tuning"] = time.time() - t

    t = time.time()
    executable = build(prepared, spec, work_dir, options.vm)
    seconds["build"] = time.time() - t

    rng = np.random.default_rng(options.seed)
    inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(options.samples)]
    reference = np.concatenate(reference_outputs(onnx_path, name, inputs))
    with files.atomic_path(output) as tmp:
        t = time.time()
        with files.native_stderr_to(os.devnull):  # TVM 0.27 logs a "Scope Saving" warning per constant
            executable.export_library(str(tmp), fcompile=thread_pool.linking(fcompile, int(spec.config["num-cores"]),
                                                                             output))
        seconds["export"] = time.time() - t

        t = time.time()
        if spec.is_host and output.suffix == ".so":  # what ships, on the thread pool it runs on
            check_exe, verified_on = tvm.runtime.load_module(str(tmp)), "the exported library itself"
        elif spec.is_host:
            check_exe, verified_on = executable, "the host build itself"
        else:
            host = targets.resolve("host")
            check_exe = build(tuning.zero_pipeline(new), host, work_dir, options.vm)
            verified_on = "a host build of the same rewritten graph"
        check = compare_outputs(reference, np.concatenate(run_vm(check_exe, inputs)), options.rtol)
        seconds["verify"] = time.time() - t
        if not check.passed:  # leaves no library behind
            raise VerificationError(f"compiled module differs from onnxruntime: max relative error "
                                    f"{check.max_rel_error:.3g} > rtol {options.rtol}")
    verification = {"max_rel_error": check.max_rel_error, "max_abs_error": check.max_abs_error, "rtol": options.rtol,
                    "samples": options.samples, "reference": "onnxruntime on the original ONNX model",
                    "on": verified_on, "passed": check.passed}
    log(f"verified against onnxruntime: max relative error {check.max_rel_error:.2e} ({verified_on})")
    seconds["total"] = time.time() - started

    sidecar = {
        "artifact": output.name,
        "source": {"onnx": str(onnx_path), "sha256": files.sha256(onnx_path), "input": name, "shape": list(shape),
                   "pads_folded": folded},
        "target": {"name": spec.name, "config": spec.config, "linker": linker, "vector_lanes": spec.vector_lanes()},
        "vm": options.vm,
        "bsr": None if options.dense else {"bsr": options.bsr, "bsc": options.bsc, "min_sparsity": options.min_sparsity},
        "layers": [_op_record(op, entries, spec) for op in plan.sparse_layers],
        "kernels": [_op_record(op, entries, spec) for op in plan.ops],
        "dense_pointwise": [dataclasses.asdict(s) for s in plan.skipped],
        "leftover_ops": leftover,
        "tuning": {"work_dir": str(work_dir),
                   "kernel_knobs": str(work_dir / knob_search.KNOBS_FILE) if entries else None,
                   "kernel_knobs_measured_on": ("rpc" if options.rpc else "local") if entries else None,
                   "metaschedule": dataclasses.asdict(dense) if dense else None},
        "verification": verification,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "tools": provenance.tool_versions(),
    }
    files.write_json(sidecar_path(output), sidecar)
    return sidecar


def _op_record(op, entries, spec) -> dict:
    entry = entries.get(knob_search.cache_key(spec, op), {}) if op.kernel is not None else {}
    record = {**op.record(), "kernel_ms": entry.get("ms")}
    if op.parts:
        record["parts"] = [_op_record(part, entries, spec) for part in op.parts]
    return record

"""A latency table for choosing per-layer pruning rates: what each pointwise layer costs in a build
at each rate, plus the rest of the model, measured with our kernels on the target.

For each rate p the model's pointwise (1×1 conv / matmul) weights are pruned to 1×``bsr`` blocks at p
(blocks by L1 from the model's own weights; blocks already zero go first, so a trained model keeps
its structure up to its rate) and the graph is planned exactly as ``onexn-tvm`` plans it; every
kernel's knobs are searched and timed (cold caches but the input, the build's cores; here or on an
RPC device) — the same measurements ``onexn-tvm`` makes, in the same ``kernel_knobs.json``. A layer's
cost is the kernel that computes it in the build: its own, or the fused pointwise → depthwise kernel
it is part of (the depthwise half does not depend on the rate). The rest is the kernels no pointwise
layer is part of (stem, lone depthwise, pooling) plus the overhead beyond the kernels (the VM,
allocation, caches shared between layers), measured end to end on uniform builds at a few rates and
interpolated by the total kernel time. The table predicts a build as ``rest + Σ layer(p_layer)``;
:func:`predict` interpolates rates between the measured ones.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from onexn_tf import files
from onexn_tf.errors import InvalidArgument
from onexn_tf.options import check_sparsity
from onexn_tf.rpc import Rpc

FORMAT = "onexn-tf latency table v2"
TABLES_FILE = "latency_tables.json"  # in the work dir: finished tables by model, target and rates
RATES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
CALIBRATION = (0.0, 0.5, 0.8, 0.95)  # uniform builds timed end to end for the overhead (measured rates only)
POINTWISE_ROLES = ("pointwise", "pointwise_dense", "gemv", "gemv_dense")


def _pruned(model, rate: float, bsr: int):
    """Every pointwise weight (the classifier's too) 1×``bsr``-pruned at ``rate`` by block L1; blocks
    already zero go first, and a rate of 0 is really dense."""
    from export.tvm import onnx_graph

    return onnx_graph.block_prune_pointwise(model, bsr, rate, matmuls=True, densify=True)[0]


def _plan(model, settings):
    import onnx

    from export.tvm import compiler, rewrite

    with tempfile.TemporaryDirectory() as tmp:  # the compiler's import path, from a file
        path = Path(tmp) / "m.onnx"
        onnx.save(model, str(path))
        mod, name, shape, _, _ = compiler.import_onnx(path)
    return rewrite.plan(mod, settings), name, shape


def _layer_ops(plan, layers: list[dict]) -> list:
    """For each pointwise layer (graph order), the planned op that computes it: its own, or the fused
    pointwise → depthwise op it is the first part of."""
    ops = [op for op in plan.ops if op.role in POINTWISE_ROLES or (op.parts and op.parts[0].role in POINTWISE_ROLES)]
    shapes = [((op.parts[0] if op.parts else op).kernel.shape.c_in, (op.parts[0] if op.parts else op).kernel.shape.c_out)
              for op in ops]
    want = [(layer["c_in"], layer["c_out"]) for layer in layers]
    if shapes != want:
        raise InvalidArgument(f"the model's pointwise layers ({len(want)}) do not map one to one onto the planned "
                              f"kernels ({len(shapes)}): this model's graph is not one the latency table knows")
    return ops


def measure(onnx_path, *, target: str = "host", num_cores: int | None = None, bsr: int = 4, min_sparsity: float = 0.2,
            rates=RATES, work_dir, rpc: Rpc | None = None, rounds: int = 30, progress: bool = False,
            log=print) -> dict:
    """The latency table of ``onnx_path`` on ``target`` (see module docstring). The kernel timings are
    cached in ``work_dir`` (``kernel_knobs.json``): a second call measures no kernel again."""
    from export.tvm import knob_search, onnx_graph, rewrite, targets

    model = onnx_graph.load(onnx_path)
    rates = sorted({check_sparsity(r, "--rates") for r in rates} | {0.0})
    spec = targets.resolve(target, num_cores=num_cores)
    if not spec.is_host and rpc is None:
        raise InvalidArgument(f"a {spec.name} latency table must be measured on such a device: give --rpc-tracker "
                              "and --rpc-key (or --rpc)")
    fcompile = None if spec.is_host else targets.linker(spec, Path(work_dir) / "probe.so")[0]
    layers = onnx_graph.pointwise_layers(model)
    if not layers:
        raise InvalidArgument(f"{onnx_path} has no pointwise (1x1 conv or matmul) layer to time")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cache_path = work_dir / TABLES_FILE
    tables = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    digest = files.sha256(onnx_path)
    key = json.dumps([FORMAT, digest, spec.config, bsr, min_sparsity, rates, knob_search.VERSION],
                     sort_keys=True)
    if key in tables:
        log(f"  the table of this model and target is cached in {cache_path}: nothing to measure")
        return tables[key]
    started = time.time()
    lanes = spec.vector_lanes()
    settings = rewrite.Settings(bsr=bsr, min_sparsity=min_sparsity, lanes=lanes)
    per_layer = {layer["layer"]: {"c_in": layer["c_in"], "c_out": layer["c_out"], "ms": {}} for layer in layers}
    kernel_sums, plans = {}, {}
    for rate in rates:
        plan, name, shape = _plan(_pruned(model, rate, bsr), settings)
        log(f"  rate {rate:g}: {len(plan.ops)} kernels ({len(layers)} with a pointwise layer)")
        entries = knob_search.search(plan.ops, spec, work_dir, rpc=rpc, cross_compiler=fcompile, progress=progress)
        ms = {id(op): entries[knob_search.cache_key(spec, op)]["ms"] for op in plan.ops if op.kernel is not None}
        layer_ops = _layer_ops(plan, layers)
        for layer, op in zip(layers, layer_ops):
            per_layer[layer["layer"]]["ms"][f"{rate:g}"] = ms[id(op)]
            part = op.parts[0] if op.parts else op
            per_layer[layer["layer"]]["fused_with_depthwise"] = bool(op.parts)
            per_layer[layer["layer"]].setdefault("pixels", int(getattr(part.kernel.shape, "height", 1)
                                                               * getattr(part.kernel.shape, "width", 1)))
        kernel_sums[rate] = sum(ms.values())
        if rate == 0.0:
            rest_kernels = kernel_sums[rate] - sum(ms[id(op)] for op in layer_ops)
        plans[rate] = (plan, entries)
    calibration = [r for r in CALIBRATION if r in plans]
    log(f"  uniform builds at p = {', '.join(f'{r:g}' for r in calibration)} end to end, interleaved (the overhead "
        "beyond the kernels)")
    uniform = _end_to_end({rate: plans[rate] for rate in calibration}, spec, work_dir, rpc, fcompile, shape, rounds)
    overhead = sorted([kernel_sums[rate], ms - kernel_sums[rate]] for rate, ms in uniform.items())
    tables[key] = table = {"format": FORMAT, "model": str(onnx_path), "sha256": digest,
                           "input": {"name": name, "shape": list(shape)},
                           "target": {"name": spec.name, "config": spec.config},
                           "measured_on": "rpc" if rpc else "local", "bsr": bsr, "min_sparsity": min_sparsity,
                           "rates": rates, "layers": per_layer, "rest_kernels_ms": rest_kernels,
                           "overhead_ms": overhead, "dense_end_to_end_ms": uniform[0.0],
                           "uniform_end_to_end_ms": {f"{r:g}": ms for r, ms in uniform.items()},
                           "seconds": round(time.time() - started, 1)}
    table["rest_ms"] = rest_ms(table, sum(layer_ms(entry, 0.0) for entry in per_layer.values()))
    files.write_json(cache_path, tables)
    return table


def _end_to_end(builds: dict, spec, work_dir: Path, rpc, fcompile, shape, rounds: int) -> dict:
    """Median ms of each build (rate -> (plan, searched knobs)), here or on the device, measured the way
    ``onexn-bench`` measures: one run per sample, the builds in turn round after round, so each run
    starts from the caches another model left, as in a benchmark of several builds, not from its own.
    The rounds come in three passes and each build keeps its fastest pass's median: a shared machine's
    slow spell (another process on a core) only ever adds time, and would otherwise skew the table."""
    import tvm
    from tvm import relax

    from export.tvm import compiler, knob_search, rewrite, thread_pool, tuning

    session = rpc.connect(whole_job=True) if rpc else None
    device = session.cpu() if session else tvm.cpu()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    timers = {}
    for rate, (plan, entries) in builds.items():
        built = compiler.build(tuning.zero_pipeline(rewrite.apply_plan(plan, knob_search.knobs_from(entries, spec),
                                                                       spec.vector_lanes())), spec, work_dir)
        lib = thread_pool.load(built, int(spec.config["num-cores"]), session, fcompile)
        vm = relax.VirtualMachine(lib, device)
        vm.set_input("main", tvm.runtime.tensor(x, device=device))
        timers[rate] = vm.time_evaluator("invoke_stateful", device, number=1, repeat=1)
    get = session.get_function if session else tvm.get_global_func
    configure, before = get("runtime.config_threadpool"), int(get("runtime.NumThreads")())
    configure(1, int(spec.config["num-cores"]))  # the build's cores, as its kernels were measured with
    try:
        medians = {rate: [] for rate in timers}
        for _ in range(3):
            samples = {rate: [] for rate in timers}
            for round_ in range(max(rounds // 3, 1) + 2):  # the first two rounds of a pass warm up
                for rate, timer in timers.items():
                    result = timer("main").results[0]
                    if round_ >= 2:
                        samples[rate].append(result)
            for rate, values in samples.items():
                medians[rate].append(float(np.median(values)))
    finally:
        configure(1, before)
    return {rate: min(values) * 1e3 for rate, values in medians.items()}


def layer_ms(entry: dict, rate: float) -> float:
    """A layer's ms at ``rate``, linear between the measured rates."""
    points = sorted((float(r), ms) for r, ms in entry["ms"].items())
    return float(np.interp(rate, [r for r, _ in points], [ms for _, ms in points]))


def rest_ms(table: dict, layers_ms: float) -> float:
    """The model beyond its pointwise layers in a build whose layers take ``layers_ms``: the other
    kernels plus the overhead, interpolated by the build's total kernel time."""
    kernels = table["rest_kernels_ms"] + layers_ms
    points = sorted(table["overhead_ms"])
    return table["rest_kernels_ms"] + float(np.interp(kernels, [k for k, _ in points], [o for _, o in points]))


def predict(table: dict, rates: dict[str, float]) -> float:
    """Predicted ms of a build with these per-layer rates (layers not named: dense), interpolating
    linearly between the measured rates."""
    unknown = [name for name in rates if name not in table["layers"]]
    if unknown:
        raise InvalidArgument(f"the latency table has no layer {unknown[0]!r} (it has "
                              f"{', '.join(list(table['layers'])[:5])}, ...)")
    layers = sum(layer_ms(entry, rates.get(name, 0.0)) for name, entry in table["layers"].items())
    return layers + rest_ms(table, layers)


def load(path) -> dict:
    table = files.read_json(path, "--table", "latency table")
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise InvalidArgument(f"--table {path} is not a latency table ({FORMAT!r}; onexn-plan measure writes one)")
    return table


def save(table: dict, path) -> None:
    files.write_json(path, table)

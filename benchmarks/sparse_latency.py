"""Whole-model latency: our TVM 1×N builds vs our TVM dense build vs onnxruntime vs TFLite (XNNPACK).

Models (``--models``): MobileNetV1, V2 and V3-Large (alpha 1.0, 224 px, or ``--alpha`` and ``--input-size``)
and the demo's model (V2, alpha 0.35, 64 px, 4 classes); batch 1, random weights with logits outputs. Latency does not depend
on weight values, only on which blocks are zero, so each model is exported once (ONNX NCHW + TFLite)
and its 1×N-pruned variants are made by masking the pointwise convolutions' ONNX weights with our
block-L1 masks (N = bsr, rate p). Every TVM build runs every operation on our kernels (the sidecar
says so) and is verified against onnxruntime by ``compile_onnx`` before it is timed; "TVM dense" is the
same kernels with every matrix dense (``onexn-tvm --dense``). Each thread count gets its own builds,
tuned with that many threads (``--num-cores``), as a deployment would.

Stages (``--stage``): ``build`` exports, tunes and compiles into ``--out`` (cached: a rerun skips what
exists; the knob measurements of a model are shared by its builds); ``time`` measures, per thread
count, every runtime of a model interleaved round by round, each runtime family (onnxruntime, TFLite,
TVM) in its own process so one's spinning thread pool cannot take the cores another asks for
(:func:`android_bench.host_runtimes.time_in_processes`); ``profile`` splits the bsr-4 builds' time
into pointwise / depthwise / the rest / overhead with the Relax VM instrument
(:mod:`android_bench.profile`); ``all`` does the three. Results: ``results.csv`` (one row per model,
threads, runtime, bsr, p), ``profile.json``, ``latency.png`` and the tables printed at the end, with
each sparse build's ratio to the best dense runtime of the same run, and the quartiles over rounds of
that ratio taken round by round (each round's runtimes run seconds apart, so a slow spell of a shared
host hits both sides of a round's ratio): how far a ratio near its goal can be trusted. With several
threads, every TVM process also times its thread pool's round trip after each turn: a cloud host
sometimes runs the vCPUs far apart (on a 2-vCPU Zen 5, 2.3 µs instead of 0.6, and a 2-thread build 2.2×
slower for as long as it lasts), so the table adds the ratio over the rounds where no TVM process saw
that ("near rounds"), and says in how many rounds it happened.

    python benchmarks/sparse_latency.py --out bench_out                       # the full grid
    python benchmarks/sparse_latency.py --out bench_out --models mobilenet_v1 --bsr 4 --threads 1
    python benchmarks/sparse_latency.py --out bench_out --models mobilenet_v2 --alpha 0.75 --input-size 160

Another width or input size is another model (``mobilenet_v2_a0.75_160``: its own directory, rows and
knob measurements); the goals are the architecture's, which hold at any width and size.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODELS = {  # name -> (architecture, alpha, input size, classes)
    "mobilenet_v1": ("mobilenet_v1", 1.0, 224, 1000),
    "mobilenet_v2": ("mobilenet_v2", 1.0, 224, 1000),
    "mobilenet_v3_large": ("mobilenet_v3_large", 1.0, 224, 1000),
    "demo": ("mobilenet_v2", 0.35, 64, 4),
}
GOALS = {("mobilenet_v1", 0.5): 1.6, ("mobilenet_v1", 0.7): 2.3, ("mobilenet_v1", 0.9): 3.7,
         ("mobilenet_v2", 0.5): 1.4, ("mobilenet_v2", 0.7): 2.0, ("mobilenet_v2", 0.9): 3.0, ("demo", 0.5): 1.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench_out"))
    p.add_argument("--stage", choices=("build", "time", "profile", "all"), default="all")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--bsr", nargs="+", type=int, default=[2, 4, 8])
    p.add_argument("--sparsity", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    p.add_argument("--number", type=int, default=10, help="timed runs per runtime per round")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per runtime per round (at least)")
    p.add_argument("--warmup-ms", type=float, default=50.0,
                   help="untimed runs per runtime per round last at least this long: cores back from idle "
                        "run slow for milliseconds")
    p.add_argument("--alpha", type=float, default=1.0, help="width of MobileNetV1/V2/V3-Large (not the demo's model)")
    p.add_argument("--input-size", type=int, default=224, help="input size (px) of MobileNetV1/V2/V3-Large")
    p.add_argument("--profile-time", help=argparse.SUPPRESS)  # internal: the profiling child process
    args = p.parse_args(argv)
    if not 0 < args.alpha <= 4:
        p.error(f"--alpha {args.alpha:g} is not allowed: it must be in (0, 4]")
    if not 0 <= args.warmup_ms <= 10_000:
        p.error(f"--warmup-ms {args.warmup_ms:g} is not allowed: it must be 0 to 10000")
    if not 32 <= args.input_size <= 1024:
        p.error(f"--input-size {args.input_size} is not allowed: it must be 32 to 1024 px")
    return args


def model_label(name: str, args) -> str:
    """The name results and files go under: the architecture's, with the width and size when not the default."""
    if name == "demo" or (args.alpha, args.input_size) == (1.0, 224):
        return name
    return f"{name}_a{args.alpha:g}_{args.input_size}"


def model_config(name: str, args) -> tuple:
    """``(architecture, alpha, input size, classes)`` of ``--models`` entry ``name`` with ``--alpha``/``--input-size``."""
    arch, alpha, size, classes = MODELS[name]
    return (arch, alpha, size, classes) if name == "demo" else (arch, args.alpha, args.input_size, classes)


# --- build ---------------------------------------------------------------------------------------

def export_model(name: str, config: tuple, out: Path) -> tuple[Path, Path]:
    """Dense ONNX (NCHW, logits) and TFLite files of a randomly initialised model."""
    onnx_path, tflite_path = out / f"{name}_dense.onnx", out / f"{name}_dense.tflite"
    if onnx_path.exists() and tflite_path.exists():
        return onnx_path, tflite_path
    from export import onnx_format, tflite_format
    from onexn_tf import models
    from onexn_tf._keras import keras

    arch, alpha, size, classes = config
    keras.utils.set_random_seed(0)
    model = models.build(arch, alpha=alpha, input_shape=(size, size, 3), classes=classes, classifier_activation=None)
    onnx_format.write(model, onnx_path, nchw=True)
    tflite_format.write(model, tflite_path)
    return onnx_path, tflite_path


def pruned_onnx(name: str, classes: int, dense: Path, bsr: int, sparsity: float, out: Path) -> Path:
    """The dense ONNX with every pointwise conv but the classifier 1×``bsr``-pruned at ``sparsity``."""
    path = out / f"{name}_bsr{bsr}_p{sparsity:g}.onnx"
    if path.exists():
        return path
    import onnx

    from export.tvm import onnx_graph

    model, _ = onnx_graph.block_prune_pointwise(onnx.load(str(dense)), bsr, sparsity,
                                                skip_out_channels=classes)
    onnx.save(model, str(path))
    return path


def _build(onnx_path, so: Path, work: Path, **options) -> dict:
    from export.tvm import compiler

    if so.exists():
        return json.loads(compiler.sidecar_path(so).read_text())
    return compiler.compile_onnx(onnx_path, so, work_dir=work, log=lambda *_: None,
                                 options=compiler.Options(progress=False, **options))


def build_all(args):
    """Per model and thread count, the dense build and every (bsr, p) build, tuned for that many cores
    (a build's knobs are measured with the threads it will run with)."""
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for base in args.models:
        name, config = model_label(base, args), model_config(base, args)
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        dense_onnx, tflite = export_model(name, config, out)
        work = out / "tvm_tuning"
        entry = manifest.get(name, {})
        entry.update({"onnx": str(dense_onnx), "tflite": str(tflite)})
        for threads in args.threads:
            t_out = out / f"threads{threads}"
            t_out.mkdir(exist_ok=True)
            builds = {"sparse": [], "summaries": {}}
            started = time.time()
            sidecar = _build(dense_onnx, t_out / "tvm_dense.so", work, dense=True, num_cores=threads)
            builds["tvm_dense"] = str(t_out / "tvm_dense.so")
            builds["summaries"]["tvm_dense"] = _summary(sidecar)
            print(f"{name} ({threads} thread(s)): dense build, {_describe(sidecar)}", flush=True)
            for bsr in args.bsr:
                for p in args.sparsity:
                    so = t_out / f"tvm_bsr{bsr}_p{p:g}.so"
                    sidecar = _build(pruned_onnx(name, config[3], dense_onnx, bsr, p, out), so, work, bsr=bsr,
                                     num_cores=threads)
                    builds["sparse"].append({"bsr": bsr, "sparsity": p, "tvm": str(so)})
                    builds["summaries"][so.stem] = _summary(sidecar)
                    print(f"{name} ({threads} thread(s)) bsr={bsr} p={p}: {_describe(sidecar)}", flush=True)
            builds["seconds"] = round(time.time() - started, 1)
            entry.setdefault("threads", {})[str(threads)] = builds
        manifest[name] = entry
        manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


def _summary(sidecar: dict) -> dict:
    return {"seconds": sidecar["seconds"], "leftover_ops": sidecar["leftover_ops"],
            "max_rel_error": sidecar["verification"]["max_rel_error"], "kernels": len(sidecar["kernels"]),
            "block_sparse_layers": len(sidecar["layers"])}


def _describe(sidecar: dict) -> str:
    left = sidecar["leftover_ops"] or "none"
    return (f"{len(sidecar['kernels'])} kernels ({len(sidecar['layers'])} block-sparse), left to TVM: {left}, "
            f"rel err {sidecar['verification']['max_rel_error']:.1e}, {sidecar['seconds']['total']:.0f} s "
            f"({sidecar['seconds'].get('kernel_tuning', 0):.0f} s knob search)")


# --- time ----------------------------------------------------------------------------------------

def _input(entry) -> np.ndarray:
    import onnxruntime as ort

    inputs = ort.InferenceSession(entry["onnx"], providers=["CPUExecutionProvider"]).get_inputs()
    shape = [d if isinstance(d, int) else 1 for d in inputs[0].shape]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def time_model(name: str, base: str, entry: dict, threads: int, args) -> list[dict]:
    from android_bench import host_runtimes, stats

    builds = entry["threads"][str(threads)]
    specs = {"onnxruntime": ("onnxruntime", entry["onnx"]), "tflite": ("tflite", entry["tflite"]),
             "tvm_dense": ("tvm", builds["tvm_dense"])}
    meta = {"onnxruntime": ("onnxruntime", "", 0.0), "tflite": ("tflite-xnnpack", "", 0.0),
            "tvm_dense": ("tvm-dense", "", 0.0)}
    for s in builds["sparse"]:
        key = f"tvm_bsr{s['bsr']}_p{s['sparsity']:g}"
        specs[key] = ("tvm", s["tvm"])
        meta[key] = ("tvm-bsr", s["bsr"], s["sparsity"])
    round_trips: dict = {}
    samples = host_runtimes.time_in_processes(specs, _input(entry), threads=threads, rounds=args.rounds,
                                              number=args.number, warmup=args.warmup,
                                              warmup_s=args.warmup_ms / 1e3, pool_us=round_trips)
    rounds = {key: stats.round_medians(ms, args.rounds) for key, ms in samples.items()}
    best_rounds = np.minimum(rounds["onnxruntime"], rounds["tflite"])  # the best dense runtime of each round
    far = stats.far_rounds(round_trips)  # None at 1 thread: nothing to hand over
    near = None if far is None else ~far
    trips = [v for values in round_trips.values() for v in values if v is not None]
    near_best = None if near is None else min(
        (m for m in (stats.median_of_rounds(samples[k], args.rounds, near) for k in ("onnxruntime", "tflite"))
         if m is not None), default=None)
    rows = []
    for key, ms in samples.items():
        runtime, bsr, p = meta[key]
        ms = np.asarray(ms)
        rows.append({"model": name, "architecture": base, "threads": threads, "runtime": runtime, "bsr": bsr, "sparsity": p,
                     "median_ms": float(np.median(ms)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
                     "p5_ms": float(np.percentile(ms, 5)), "p95_ms": float(np.percentile(ms, 95))})
        rows[-1]["x_best_dense_p25"], rows[-1]["x_best_dense_p75"] = stats.paired_ratio_quartiles(best_rounds,
                                                                                                   rounds[key])
        near_ms = None if near is None else stats.median_of_rounds(ms, args.rounds, near)
        rows[-1].update({"far_rounds": None if far is None else int(far.sum()),
                         "pool_us_fastest": min(trips) if trips else None,
                         "x_best_dense_near": near_best / near_ms if near_best and near_ms else None})
    best = min(r["median_ms"] for r in rows if r["runtime"] in ("onnxruntime", "tflite-xnnpack"))
    for r in rows:
        r["x_best_dense_runtime"] = best / r["median_ms"]
    return rows


def time_all(args):
    manifest = json.loads((args.out / "manifest.json").read_text())
    rows = []
    for base in args.models:
        name = model_label(base, args)
        if name not in manifest:
            continue
        for threads in args.threads:
            if str(threads) not in manifest[name].get("threads", {}):
                continue
            t = time.time()
            rows += time_model(name, base, manifest[name], threads, args)
            print(f"timed {name} with {threads} thread(s) in {time.time() - t:.0f} s", flush=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "latency.png")
    print_table(rows)
    return rows


def print_table(rows):
    print(f"\n{'model':28} {'thr':>3} {'runtime':15} {'bsr':>3} {'p':>4} {'median ms':>9} {'p5':>7} {'p95':>7} "
          f"{'x best dense':>12} {'rounds p25-p75':>14} {'near rounds':>11} {'goal':>5}")
    for r in rows:
        goal = GOALS.get((r["architecture"], r["sparsity"])) if r["bsr"] == 4 else None
        spread = f"{r['x_best_dense_p25']:.2f}-{r['x_best_dense_p75']:.2f}"
        near = "" if r["x_best_dense_near"] is None else f"{r['x_best_dense_near']:.2f}"
        print(f"{r['model']:28} {r['threads']:>3} {r['runtime']:15} {str(r['bsr']):>3} {r['sparsity']:>4} "
              f"{r['median_ms']:>9.3f} {r['p5_ms']:>7.3f} {r['p95_ms']:>7.3f} {r['x_best_dense_runtime']:>12.2f} "
              f"{spread:>14} {near:>11} {'' if goal is None else f'{goal:.1f}':>5}")
    probed = {(r["model"], r["threads"]): r for r in rows if r["far_rounds"] is not None}
    if probed:
        print("\nhost placement (our thread pool's round trip after each turn; 'near rounds' above: best dense "
              "runtime / this one over the rounds where no TVM process took 4x the fastest):")
    for (model, threads), r in probed.items():
        print(f"  {model:28} {threads} threads: fastest {r['pool_us_fastest']:.2f} us, far apart in "
              f"{r['far_rounds']} round(s)")
    by = {(r["model"], r["runtime"], r["threads"]): r["median_ms"] for r in rows if r["runtime"] != "tvm-bsr"}
    print("\nthread scaling (1 thread / 2 threads, same run):")
    for (model, runtime, threads), ms in by.items():
        if threads == 2 and (model, runtime, 1) in by:
            print(f"  {model:28} {runtime:15} {by[(model, runtime, 1)] / ms:.2f}x")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["threads"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (model, threads) in zip(axes[0], panels):
        mine = [r for r in rows if r["model"] == model and r["threads"] == threads]
        for bsr in sorted({r["bsr"] for r in mine if r["runtime"] == "tvm-bsr"}):
            pts = sorted((r["sparsity"], r["median_ms"]) for r in mine if r["bsr"] == bsr and r["runtime"] == "tvm-bsr")
            ax.plot(*zip(*pts), marker="o", label=f"TVM BSR 1x{bsr}")
        for r, style in zip([r for r in mine if r["runtime"] != "tvm-bsr"], ("--", "-.", ":")):
            ax.axhline(r["median_ms"], linestyle=style, linewidth=1, color="k", label=r["runtime"])
        ax.set_title(f"{model}, {threads} thread(s)")
        ax.set_xlabel("block sparsity p")
        ax.set_ylabel("median latency (ms)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- profile -------------------------------------------------------------------------------------

def profile_child(args):
    """Child process (TVM_NUM_THREADS set by the parent): the VM-instrument profile of one library."""
    from android_bench import profile

    library, traced, onnx_path = args.profile_time.split("|")
    from export.tvm import compiler

    sidecar = json.loads(compiler.sidecar_path(Path(library)).read_text())
    result = profile.profile(library, sidecar, _input({"onnx": onnx_path}), rounds=30, traced_library=traced)
    print(json.dumps(result))


def bytecode_twin(library: str, threads: int, twins: Path) -> str:
    """A ``--vm bytecode`` build of a compiled-VM library's model, for the VM instrument: the same ONNX,
    options and work dir, so the same kernels with the same knobs (nothing is measured again)."""
    from export.tvm import compiler

    sidecar = json.loads(compiler.sidecar_path(Path(library)).read_text())
    if sidecar.get("vm", "bytecode") == "bytecode":
        return library
    twin = twins / f"threads{threads}" / Path(library).name
    twin.parent.mkdir(parents=True, exist_ok=True)
    bsr = sidecar["bsr"]
    options = {"dense": True} if bsr is None else {"bsr": bsr["bsr"], "min_sparsity": bsr["min_sparsity"]}
    _build(sidecar["source"]["onnx"], twin, Path(sidecar["tuning"]["work_dir"]), num_cores=threads, vm="bytecode",
           **options)
    return str(twin)


def profile_all(args):
    from android_bench import profile
    from export.tvm import compiler

    manifest = json.loads((args.out / "manifest.json").read_text())
    profiles = []
    for name in (model_label(base, args) for base in args.models):
        entry = manifest.get(name)
        if entry is None:
            continue
        for threads in args.threads:
            builds = entry.get("threads", {}).get(str(threads))
            if builds is None:
                continue
            targets = [("tvm-dense", 0.0, builds["tvm_dense"])] + [
                ("tvm-bsr4", s["sparsity"], s["tvm"]) for s in builds["sparse"]
                if s["bsr"] == 4 and s["sparsity"] in (0.5, 0.9)]
            for label, p, library in targets:
                env = dict(os.environ, TVM_NUM_THREADS=str(threads))
                traced = bytecode_twin(library, threads, args.out / name / "bytecode_twins")
                cmd = [sys.executable, __file__, "--out", str(args.out), "--profile-time",
                       f"{library}|{traced}|{entry['onnx']}"]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                sidecar = json.loads(compiler.sidecar_path(Path(library)).read_text())
                result["apportioned_ms"] = profile.apportion_fused(result.pop("calls_ms"), sidecar)
                profiles.append({"model": name, "threads": threads, "build": label, "sparsity": p, **result})
    (args.out / "profile.json").write_text(json.dumps(profiles, indent=2))
    print("\nshare of end-to-end time; a fused pointwise -> depthwise call is split between the two in the ratio of "
          "its parts' own kernel times (its whole share in 'fused')")
    print(f"{'model':28} {'thr':>3} {'build':9} {'p':>4} {'e2e ms':>7} {'pointwise':>10} {'depthwise':>10} "
          f"{'rest':>7} {'overhead':>9} {'fused':>6} {'e2e/kernels':>11}")
    for r in profiles:
        a = r["apportioned_ms"]
        rest = sum(ms for k, ms in a.items() if k not in ("pointwise", "depthwise", profile.VM_CALLS))
        print(f"{r['model']:28} {r['threads']:>3} {r['build']:9} {r['sparsity']:>4} {r['end_to_end_ms']:>7.3f} "
              f"{_share(a.get('pointwise', 0), r):>10} {_share(a.get('depthwise', 0), r):>10} {_share(rest, r):>7} "
              f"{_share(r['overhead_ms'], r):>9} {_share(r['groups_ms'].get(profile.FUSED, 0), r):>6} "
              f"{r['end_to_end_ms'] / r['kernels_ms']:>11.3f}")
    return profiles


def _share(ms, r) -> str:
    return f"{100 * ms / r['end_to_end_ms']:.0f}%"


def main(argv=None):
    args = parse_args(argv)
    if args.profile_time:
        return profile_child(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("build", "all"):
        build_all(args)
    if args.stage in ("time", "all"):
        time_all(args)
    if args.stage in ("profile", "all"):
        profile_all(args)


if __name__ == "__main__":
    main()

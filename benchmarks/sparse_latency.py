"""Whole-model latency: our TVM BSR builds vs our TVM dense build vs onnxruntime vs TFLite (XNNPACK).

MobileNetV1 / V2 (alpha 1.0, 224 px, batch 1, random weights with logits outputs). Latency does not
depend on weight values, only on which blocks are zero, so each model is exported once (ONNX NCHW +
TFLite) and the 1×N-pruned variants are made by masking the pointwise convolutions' ONNX weights
with our block-L1 masks (N = bsr, rate p). Every sparse build is verified against onnxruntime by
``compile_onnx`` before it is timed.

Stages (``--stage``): ``build`` exports, tunes and compiles into ``--out`` (cached: a rerun skips
what exists, tuning records are shared by all builds of a model); ``time`` runs, per thread count,
one fresh process that times every runtime interleaved round by round (A B C … A B C …) so machine
noise hits all alike; ``all`` does both. Results: ``results.csv`` (one row per model, threads,
runtime, bsr, p), ``latency.png`` (latency vs sparsity) and a table with the ratio of each sparse
build to the best dense runtime.

    python benchmarks/sparse_latency.py --out bench_out                       # the full grid
    python benchmarks/sparse_latency.py --out bench_out --models mobilenet_v1 --bsr 4 --trials 8
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

MODELS = ("mobilenet_v1", "mobilenet_v2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench_out"))
    p.add_argument("--stage", choices=("build", "time", "all"), default="all")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bsr", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--sparsity", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--trials", type=int, default=16, help="MetaSchedule trials per dense task")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    p.add_argument("--number", type=int, default=5, help="runs per module per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--time-one", help=argparse.SUPPRESS)  # internal: the timing child process
    return p.parse_args(argv)


# --- build ---------------------------------------------------------------------------------------

def export_model(arch: str, size: int, out: Path) -> tuple[Path, Path]:
    """Dense ONNX (NCHW, logits) and TFLite files of a randomly initialised MobileNet."""
    onnx_path, tflite_path = out / f"{arch}_dense.onnx", out / f"{arch}_dense.tflite"
    if onnx_path.exists() and tflite_path.exists():
        return onnx_path, tflite_path
    from export import onnx_format, tflite_format
    from onexn_tf import models
    from onexn_tf._keras import keras

    keras.utils.set_random_seed(0)
    model = models.build(arch, alpha=1.0, input_shape=(size, size, 3), classes=1000, classifier_activation=None)
    onnx_format.write(model, onnx_path, nchw=True)
    tflite_format.write(model, tflite_path)
    return onnx_path, tflite_path


def pruned_onnx(dense: Path, bsr: int, sparsity: float, out: Path) -> Path:
    """The dense ONNX with every pointwise conv (except the classifier) 1×``bsr``-pruned at ``sparsity``."""
    path = out / f"{dense.stem.replace('_dense', '')}_bsr{bsr}_p{sparsity:g}.onnx"
    if path.exists():
        return path
    import onnx

    from export.tvm import onnx_graph

    model, _ = onnx_graph.block_prune_pointwise(onnx.load(str(dense)), bsr, sparsity, skip_out_channels=1000)
    onnx.save(model, str(path))
    return path


def build_all(args):
    from export.tvm import compiler

    manifest = {}
    for arch in args.models:
        out = args.out / arch
        out.mkdir(parents=True, exist_ok=True)
        dense_onnx, tflite = export_model(arch, args.size, out)
        work = out / "tvm_tuning"
        entry = {"onnx": str(dense_onnx), "tflite": str(tflite), "sparse": []}
        started = time.time()
        dense_so = out / "tvm_dense.so"
        if not dense_so.exists():
            sidecar = compiler.compile_onnx(dense_onnx, dense_so, work_dir=work,
                                            options=compiler.Options(dense=True, trials=args.trials))
            print(f"{arch}: dense build, {sidecar['tuning']['metaschedule']}", flush=True)
        entry["tvm_dense"] = str(dense_so)
        entry["dense_tuning_seconds"] = round(time.time() - started, 1)
        for bsr in args.bsr:
            for p in args.sparsity:
                onnx_path = pruned_onnx(dense_onnx, bsr, p, out)
                so = out / f"tvm_bsr{bsr}_p{p:g}.so"
                if not so.exists():
                    t = time.time()
                    sidecar = compiler.compile_onnx(onnx_path, so, work_dir=work,
                                                    options=compiler.Options(bsr=bsr, trials=args.trials))
                    print(f"{arch} bsr={bsr} p={p}: {len(sidecar['layers'])} BSR layers, rel err "
                          f"{sidecar['verification']['max_rel_error']:.1e}, {time.time() - t:.0f} s", flush=True)
                entry["sparse"].append({"bsr": bsr, "sparsity": p, "onnx": str(onnx_path), "tvm": str(so)})
        manifest[arch] = entry
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


# --- time ----------------------------------------------------------------------------------------

def _runners(entry, threads):
    """name -> (meta, zero-arg callable running one inference)."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from android_bench import host_runtimes

    inputs = ort.InferenceSession(entry["onnx"], providers=["CPUExecutionProvider"]).get_inputs()
    shape = [d if isinstance(d, int) else 1 for d in inputs[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    runners = {"onnxruntime": ({"runtime": "onnxruntime", "bsr": "", "sparsity": 0.0},
                               host_runtimes.onnxruntime_runner(entry["onnx"], x, threads)[0]),
               "tflite": ({"runtime": "tflite-xnnpack", "bsr": "", "sparsity": 0.0},
                          host_runtimes.tflite_runner(entry["tflite"], x.transpose(0, 2, 3, 1), threads)[0])}

    tx = tvm.runtime.tensor(x)

    def vm_runner(path):
        vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
        main = vm["main"]
        return lambda: main(tx)

    runners["tvm_dense"] = ({"runtime": "tvm-dense", "bsr": "", "sparsity": 0.0}, vm_runner(entry["tvm_dense"]))
    for s in entry["sparse"]:
        runners[f"tvm_bsr{s['bsr']}_p{s['sparsity']}"] = (
            {"runtime": "tvm-bsr", "bsr": s["bsr"], "sparsity": s["sparsity"]}, vm_runner(s["tvm"]))
    return runners


def time_one(args):
    """Child process (TVM_NUM_THREADS set by the parent): interleaved timing of one model's runtimes."""
    arch, threads = args.time_one.split(":")
    threads = int(threads)
    entry = json.loads((args.out / "manifest.json").read_text())[arch]
    runners = _runners(entry, threads)
    from android_bench import host_runtimes

    samples = host_runtimes.time_interleaved({name: run for name, (_, run) in runners.items()}, warmup=args.warmup,
                                             repeat=args.rounds, number=args.number)
    rows = []
    for name, (meta, _) in runners.items():
        ms = np.asarray(samples[name])
        rows.append({"model": arch, "threads": threads, **meta, "median_ms": float(np.median(ms)),
                     "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "p5_ms": float(np.percentile(ms, 5)),
                     "p95_ms": float(np.percentile(ms, 95))})
    print(json.dumps(rows))


def time_all(args):
    manifest = json.loads((args.out / "manifest.json").read_text())
    rows = []
    for arch in args.models:
        if arch not in manifest:
            continue
        for threads in args.threads:
            env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
            cmd = [sys.executable, __file__, "--out", str(args.out), "--time-one", f"{arch}:{threads}",
                   "--rounds", str(args.rounds), "--number", str(args.number), "--warmup", str(args.warmup)]
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows += json.loads(result.stdout.strip().splitlines()[-1])
            print(f"timed {arch} with {threads} thread(s)", flush=True)
    for row in rows:
        best = min(r["median_ms"] for r in rows if r["model"] == row["model"] and r["threads"] == row["threads"]
                   and r["runtime"] != "tvm-bsr")
        row["speedup_vs_best_dense"] = best / row["median_ms"]
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "latency.png")
    print_table(rows)


def print_table(rows):
    print(f"{'model':14} {'thr':>3} {'runtime':16} {'bsr':>3} {'p':>4} {'median ms':>10} {'p5':>8} {'p95':>8} "
          f"{'x best dense':>12}")
    for r in rows:
        print(f"{r['model']:14} {r['threads']:>3} {r['runtime']:16} {str(r['bsr']):>3} {r['sparsity']:>4} "
              f"{r['median_ms']:>10.2f} {r['p5_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['speedup_vs_best_dense']:>12.2f}")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["threads"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (model, threads) in zip(axes[0], panels):
        mine = [r for r in rows if r["model"] == model and r["threads"] == threads]
        for bsr in sorted({r["bsr"] for r in mine if r["runtime"] == "tvm-bsr"}):
            pts = sorted((r["sparsity"], r["median_ms"]) for r in mine if r["bsr"] == bsr and r["runtime"] == "tvm-bsr")
            ax.plot(*zip(*pts), marker="o", label=f"TVM BSR 1x{bsr}")
        for r in mine:
            if r["runtime"] != "tvm-bsr":
                ax.axhline(r["median_ms"], linestyle="--", linewidth=1, label=r["runtime"], color=None)
        ax.set_title(f"{model}, {threads} thread(s)")
        ax.set_xlabel("block sparsity p")
        ax.set_ylabel("median latency (ms)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    args = parse_args(argv)
    if args.time_one:
        return time_one(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("build", "all"):
        build_all(args)
    if args.stage in ("time", "all"):
        time_all(args)


if __name__ == "__main__":
    main()

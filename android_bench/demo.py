"""``onexn-demo``: the whole pipeline on bundled (generated) data, small enough for 2 CPU cores.

1. write the synthetic grating images as an image folder (``OUT/data``);
2. ``onexn-train`` a small MobileNet densely (``OUT/dense``);
3. ``onexn-train`` again from that model: 1×N pruning in one shot (the reference's recipe) with
   filter rearrangement, fine-tuning (``OUT/pruned``);
4. strip and permute channels physically so kept blocks are contiguous (``OUT/deployed_model.keras``
   and ``OUT/permutation.json``), evaluate dense / pruned / deployed top-1 and top-5;
5. ``onexn-export``: SavedModel, ONNX (NCHW) and TFLite, each verified (``OUT/exported``);
6. ``onexn-tvm``: host dense and 1×N builds, latency probes at higher sparsities, aarch64 builds
   (``OUT/tvm``);
7. ``onexn-bench`` over a local TVM RPC tracker + x86 server, the emulated ARM device when this host
   can prepare one, and onnxruntime / TFLite on the same input (``OUT/bench``);
8. ``OUT/report.md`` + ``OUT/report.json`` with the plots ``latency_vs_sparsity.png`` and
   ``layer_sparsity.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from onexn_tf import cli, files
from onexn_tf.options import ARCHITECTURES, CRITERIA, REARRANGE_POLICIES, check_n, check_sparsity
from training import synthetic, train


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="onexn-demo", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mobilenet_v2", choices=ARCHITECTURES)
    p.add_argument("--alpha", type=float, default=0.35, help="width multiplier (default 0.35)")
    p.add_argument("--image-size", type=int, default=64, help="input size in pixels (default 64)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--train-samples", type=int, default=768)
    p.add_argument("--val-samples", type=int, default=256)
    p.add_argument("--n", type=int, default=4, help="block height N (default 4)")
    p.add_argument("--sparsity", type=float, default=0.5, help="per-layer pruning rate p (default 0.5)")
    p.add_argument("--budget-speedup", type=float, metavar="S",
                   help="instead of one --sparsity: per-layer rates chosen by onexn-plan (latencies measured here) "
                        "for a predicted S x speedup over the dense build")
    p.add_argument("--criterion", default="block_l1", choices=CRITERIA)
    p.add_argument("--rearrange", default="groups", choices=REARRANGE_POLICIES,
                   help="filter rearrangement policy (default groups)")
    p.add_argument("--dense-epochs", type=int, default=4)
    p.add_argument("--prune-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-after", choices=("train", "export"), help="end the pipeline after this stage")
    p.add_argument("--probes", type=float, nargs="*", default=[0.7, 0.9],
                   help="extra sparsities pruned post hoc, for the latency curve (default 0.7 0.9)")
    p.add_argument("--trials", type=int, default=0,
                   help="MetaSchedule trials per TVM task our kernels do not cover (default 0; none in a MobileNet)")
    p.add_argument("--repeat", type=int, default=20, help="timing rounds per runtime (default 20)")
    p.add_argument("--emulated", choices=("auto", "yes", "no"), default="auto",
                   help="the emulated ARM device: auto = prepare and use it when this host can (default)")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default demo_out)")
    return p


def _check(args):
    for name in ("image_size", "classes", "train_samples", "val_samples", "batch_size", "dense_epochs",
                 "prune_epochs", "repeat"):
        if getattr(args, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed: it must be >= 1")
    if args.image_size < 32:
        raise cli.UsageError(f"--image-size={args.image_size} is not allowed: Keras MobileNets need at least 32 pixels")
    check_n(args.n, "--n")
    check_sparsity(args.sparsity, "--sparsity")
    if args.budget_speedup is not None and args.budget_speedup <= 0:
        raise cli.UsageError(f"--budget-speedup={args.budget_speedup:g} is not allowed: it must be positive")
    for p in args.probes:
        check_sparsity(p, "--probes")
    if args.trials < 0:
        raise cli.UsageError(f"--trials={args.trials} is not allowed: it must be >= 0")
    files.check_writable_dir(args.out, "--out")
    for job in ("dense", "pruned"):
        if (args.out / job).exists():
            raise cli.UsageError(f"{args.out / job} exists from an earlier demo: remove {args.out} or choose --out")
    foreign = sorted(p.name for p in args.out.iterdir() if p.name not in DEMO_NAMES) if args.out.is_dir() else []
    if foreign:  # never write the demo into a directory that holds something else
        raise cli.UsageError(f"--out {args.out} holds files the demo does not write ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}): choose a new or empty --out")


# What the demo writes into --out (its data may be reused by a rerun into the same directory).
DEMO_NAMES = {"data", "dense", "plan", "pruned", "deployed_model.keras", "permutation.json", "exported", "tvm", "bench",
              "report.json", "report.md", "latency_vs_sparsity.png", "layer_sparsity.png"}


def _train_args(args, job: str, *extra: str):
    common = ["--arch", args.arch, "--alpha", str(args.alpha), "--input-size", str(args.image_size),
              "--dataset", "folder", "--data-dir", str(args.out / "data"), "--train-batch-size",
              str(args.batch_size), "--eval-batch-size", "64", "--warmup-epochs", "0", "--lr-policy", "fixed",
              "--seed", str(args.seed), "--job-dir", str(args.out / job)]
    return train.build_parser().parse_args(common + list(extra))


def train_and_deploy(args) -> dict:
    """Stages 1–4: data, dense training, 1×N pruning, physical permutation, evaluation."""
    import onexn_tf  # TensorFlow from here on
    from onexn_tf import inspect, models
    from onexn_tf._keras import keras
    from training import data, evaluate

    data_dir = args.out / "data"
    if not data_dir.exists():
        print(f"[1/8] writing {args.train_samples}+{args.val_samples} synthetic images to {data_dir}")
        with files.atomic_path(data_dir) as tmp:
            synthetic.write_dataset(tmp, classes=args.classes, size=args.image_size, train=args.train_samples,
                                    val=args.val_samples, seed=args.seed)
    else:
        print(f"[1/8] reusing the synthetic images in {data_dir}")

    print(f"[2/8] dense training: {args.arch} alpha={args.alpha} {args.image_size}px, {args.dense_epochs} epochs")
    dense = train.run_job(_train_args(args, "dense", "--criterion", "dense", "--epochs", str(args.dense_epochs),
                                      "--lr", "0.05"))

    plan = plan_stage(args) if args.budget_speedup else None
    rates = ["--pr-config", str(args.out / "plan" / "rates.json")] if plan else ["--pr-target", str(args.sparsity)]
    print(f"[3/8] 1x{args.n} pruning at " + ("the planned rates" if plan else f"p={args.sparsity}")
          + f" ({args.criterion}, rearrange={args.rearrange}, one-shot), {args.prune_epochs} fine-tuning epochs")
    pruned = train.run_job(_train_args(
        args, "pruned", "--pretrained-model", str(args.out / "dense" / "model.keras"), "--criterion", args.criterion,
        "--N", str(args.n), *rates, "--rearrange", args.rearrange, "--epochs", str(args.prune_epochs), "--lr", "0.01"))

    print("[4/8] permute channels for deployment, evaluate")
    stripped = keras.models.load_model(args.out / "pruned" / "model.keras")
    orders = json.loads((args.out / "pruned" / "permutations.json").read_text())
    deployed, record = onexn_tf.deploy.permute_by_block_orders(stripped, orders)
    with files.atomic_path(args.out / "deployed_model.keras") as tmp:
        deployed.save(tmp)
    onexn_tf.rearrange.write_record(args.out / "permutation.json", record)
    splits = data.load(dataset="folder", data_dir=data_dir, size=args.image_size, batch_size=64,
                       preprocess=models.preprocess_input(args.arch), need_train=False)
    accuracy = {"dense": evaluate.evaluate(keras.models.load_model(args.out / "dense" / "model.keras"), splits.val),
                "pruned": evaluate.evaluate(stripped, splits.val),
                "deployed": evaluate.evaluate(deployed, splits.val)}
    layers = [inspect.LayerRecord(**{k: v for k, v in layer.items() if k != "exact"}) for layer in pruned["layers"]]
    print(inspect.format_table(layers))
    contiguous = inspect.report(deployed, n=args.n, criterion=args.criterion, layers=set(orders))
    sample = next(iter(splits.val))[0][:1].numpy()  # one real validation image, preprocessed (NHWC)
    return {
        "arch": args.arch, "alpha": args.alpha, "image_size": args.image_size, "classes": args.classes,
        "n": args.n, "sparsity": args.sparsity, "criterion": args.criterion, "rearrange": args.rearrange,
        "accuracy": accuracy, "plan": plan,
        "pruned_top1_per_epoch": [e["top1"] for e in pruned["epochs"]],
        "dense_top1_per_epoch": [e["top1"] for e in dense["epochs"]],
        "all_layers_exact_1xn": all(r.exact for r in layers) and all(r.structured for r in contiguous),
        "permuted_channel_groups": sum(g["permuted"] for g in record["groups"]),
        "layers": [{**layer, "exact": r.exact} for layer, r in zip(pruned["layers"], layers)],
    }, sample


def plan_stage(args) -> dict:
    """Per-layer rates for ``--budget-speedup``: the dense model's latency table measured here (its
    kernel timings land in the TVM builds' work dir, which reuses them), then the knapsack."""
    from android_bench import planning
    from export import onnx_format
    from export.tvm import latency_table
    from onexn_tf._keras import keras

    plan_dir = args.out / "plan"
    plan_dir.mkdir(exist_ok=True)
    dense = keras.models.load_model(args.out / "dense" / "model.keras", compile=False)
    onnx_format.write(dense, plan_dir / "dense.onnx", nchw=True)
    print(f"[2b/8] onexn-plan: the dense model's latency table on this machine, then rates for a predicted "
          f"{args.budget_speedup:g}x speedup (kept block L1)")
    table = latency_table.measure(plan_dir / "dense.onnx", bsr=args.n, work_dir=args.out / "tvm" / "tvm_tuning",
                                  log=lambda m: print(f"  {m}"))
    latency_table.save(table, plan_dir / "table.json")
    plan = planning.choose(dense, table, speedup=args.budget_speedup)
    files.write_json(plan_dir / "rates.json", plan["rates"])
    files.write_json(plan_dir / "rates_plan.json", plan)
    print(f"  predicted {plan['predicted_ms']:.3f} ms (dense {plan['dense_predicted_ms']:.3f} ms); rates "
          + ", ".join(f"{name} {rate:g}" for name, rate in plan["rates"].items()))
    return {"speedup": args.budget_speedup, **plan}


def export_stage(args) -> dict:
    from export import exporter

    print(f"[5/8] export SavedModel, ONNX (NCHW) and TFLite, each verified, to {args.out / 'exported'} "
          "(logits: without the final softmax, so every later check compares logits)")
    report = exporter.export(args.out / "pruned", args.out / "exported", options=exporter.Options(nchw=True),
                             logits=True, progress=lambda m: print(f"  {m}"))
    return {"artifacts": report["artifacts"], "logits": True}


def measure_stage(args, sample_nhwc) -> tuple[dict, list[dict], dict]:
    import shutil

    import numpy as np

    from android_bench import pipeline, report

    options = pipeline.Options(n=args.n, probes=tuple(args.probes), trials=args.trials, repeat=args.repeat,
                               emulated=args.emulated)
    exported = args.out / "exported"
    cross = shutil.which("aarch64-linux-gnu-g++") is not None
    print(f"[6/8] TVM builds (our kernels, knobs measured here; "
          f"aarch64 {'linked with aarch64-linux-gnu-g++' if cross else 'as .tar: no aarch64-linux-gnu-g++'})")
    builds = pipeline.compile_builds(exported / "model.onnx", args.out / "tvm", options, classes=args.classes,
                                     log=print)
    print("[7/8] latency")
    x = np.ascontiguousarray(sample_nhwc.transpose(0, 3, 1, 2))
    measured = pipeline.measure(builds, exported / "model.onnx", exported / "model.tflite", x, args.out / "bench",
                                options, log=print)
    build_rows = [{"label": b.label, "target": b.target, "path": str(b.path), "bsr_layers": len(b.sidecar["layers"]),
                   "sparsity": b.sparsity, "trained": b.trained,
                   "max_rel_error": b.sidecar["verification"]["max_rel_error"],
                   "seconds": b.sidecar["seconds"]["total"]} for b in builds]
    latency = {"settings": {"threads": options.threads, "repeat": options.repeat, "warmup": options.warmup,
                            "trials": options.trials},
               "rows": report.latency_rows(measured), "host": measured["host"], "runtimes": measured["runtimes"],
               "arm": measured["arm"],
               "plot": report.plot_latency(measured, args.out / report.LATENCY_PLOT)}
    if measured["arm"] is None:
        latency["arm_skipped"] = ("--emulated no" if args.emulated == "no" else
                                  "no emulated ARM device could be prepared on this host (see the log)")
    return latency, build_rows


def main(args) -> int:
    _check(args)
    started = time.time()
    summary, sample = train_and_deploy(args)
    if args.stop_after != "train":
        summary["export"] = export_stage(args)
    if args.stop_after is None:
        summary["latency"], summary["builds"] = measure_stage(args, sample)
        if summary["plan"]:  # the plan's prediction against the trained model's build, measured
            row = next(r for r in summary["latency"]["rows"] if r["label"] == f"tvm_1x{args.n}")
            if row["median"]:
                summary["plan"].update(measured_ms=row["median"],
                                       prediction_error=summary["plan"]["predicted_ms"] / row["median"] - 1)
    from android_bench import report

    print("[8/8] report")
    report.plot_layer_sparsity(summary["layers"], None if summary["plan"] else args.sparsity,
                               args.out / report.LAYER_PLOT)
    summary["machine"] = {"cores": os.cpu_count()}
    summary["wall_time_s"] = round(time.time() - started, 1)
    files.write_json(args.out / "report.json", summary)
    print(f"wrote {report.write(summary, args.out)} and {args.out / 'report.json'}")
    if "latency" in summary:
        print(format_latency(summary["latency"]["rows"]))
    print(json.dumps({k: summary[k] for k in ("accuracy", "all_layers_exact_1xn", "wall_time_s")}, indent=2))
    return 0 if summary["all_layers_exact_1xn"] else 1


def format_latency(rows) -> str:
    lines = [f"{'runtime':<24} {'sparsity':>8} {'median ms':>10} {'vs TVM dense':>13} {'vs best dense':>14}"]
    for r in rows:
        sparsity = "-" if r["sparsity"] is None else f"{r['sparsity']:.2f}"
        vs = ["-" if v is None else f"{v:.2f}x" for v in (r["speedup_vs_tvm_dense"], r["speedup_vs_best_dense"])]
        median = "-" if r["median"] is None else f"{r['median']:.3f}"
        lines.append(f"{r['label']:<24} {sparsity:>8} {median:>10} {vs[0]:>13} {vs[1]:>14}")
    return "\n".join(lines)


def run(argv=None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

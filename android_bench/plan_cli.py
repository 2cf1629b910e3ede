"""``onexn-plan``: per-layer pruning rates chosen for a latency budget, with latencies measured by
our kernels on the target.

    onexn-plan measure exported/model.onnx --out table.json                         # this machine
    onexn-plan measure model.onnx --out phone.json --target android-arm64 \\
        --rpc-tracker 127.0.0.1:9190 --rpc-key pixel                                # on the phone
    onexn-plan choose runs/v2_dense --table table.json --speedup 1.5 --out rates.json
    onexn-plan choose dense.keras --table table.json --budget-ms 4.0 --score sensitivity \\
        --dataset folder --data-dir data/ --out rates.json
    onexn-train ... --pretrained-model dense.keras --pr-config rates.json            # then train with it

measure: every pointwise layer's kernel at each rate (--rates, default 0 0.3 0.5 0.6 0.7 0.8 0.9 0.95)
plus the rest of the model, timed with tuned knobs (cached in --work-dir, so a second call measures
nothing). choose: the rate of each layer the reference prunes (--full: the classifier too) that keeps
the most importance — the kept block L1 (--score l1) or the validation loss after pruning that layer
alone (--score sensitivity) — with the predicted latency under --budget-ms, or under the dense
prediction / --speedup; an exact multiple-choice knapsack. Writes the --pr-config file (OUT) and
OUT's plan (OUT with _plan.json: predicted latency, budget, each layer's cost and score).
Exit codes: 0 done; 2 a usage error (a bad file or option, a budget no plan can meet).
"""
from __future__ import annotations

import sys
from pathlib import Path

from onexn_tf import cli, files
from onexn_tf.options import ARCHITECTURES

SCORES = ("l1", "sensitivity")


def build_parser():
    p = cli.doc_parser("onexn-plan", __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="time every pointwise layer at each rate on the target")
    m.add_argument("onnx", type=Path, help="ONNX model (onexn-export --formats onnx --onnx-layout nchw)")
    m.add_argument("--out", type=Path, required=True, help="the latency table (JSON)")
    m.add_argument("--target", default="host", help="host, aarch64-linux or android-arm64 (see onexn-tvm)")
    m.add_argument("--num-cores", type=int, help="cores the builds will run on")
    m.add_argument("--bsr", type=int, default=4, help="block rows (the model's N; default 4)")
    m.add_argument("--rates", type=float, nargs="+", help="rates to time (default 0 0.3 0.5 0.6 0.7 0.8 0.9 0.95)")
    m.add_argument("--work-dir", type=Path, help="kernel timings cache (default: <out dir>/tvm_tuning)")
    m.add_argument("--rpc-tracker", type=cli.host_port, metavar="HOST:PORT", help="measure through this tracker")
    m.add_argument("--rpc-key", help="device key at the tracker")
    m.add_argument("--rpc", type=cli.host_port, metavar="HOST:PORT", help="measure on this RPC server directly")
    m.add_argument("--force", action="store_true", help="replace an existing --out")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    c = sub.add_parser("choose", help="choose each layer's rate for a latency budget")
    c.add_argument("model", type=Path, help="the dense (or pretrained) Keras model, or an onexn-train job dir")
    c.add_argument("--table", type=Path, required=True, help="a latency table from onexn-plan measure")
    budget = c.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-ms", type=float, help="predicted latency to stay under, in ms")
    budget.add_argument("--speedup", type=float, help="budget = the table's dense prediction / SPEEDUP")
    c.add_argument("--score", choices=SCORES, default="l1", help="importance: kept block L1, or measured loss")
    c.add_argument("--full", action="store_true", help="plan the classifier layers too")
    c.add_argument("--arch", choices=ARCHITECTURES, help="--score sensitivity: the input preprocessing (default: "
                   "the job's, or the model's name)")
    c.add_argument("--dataset", help="--score sensitivity: tfds name or 'folder' (default: the job's)")
    c.add_argument("--data-dir", help="--score sensitivity: image folder or tfds data_dir (default: the job's)")
    c.add_argument("--batches", type=int, default=4, help="--score sensitivity: validation batches (default 4)")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--out", type=Path, required=True, help="the --pr-config file to write (JSON)")
    c.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def plan_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_plan.json")


def measure(args) -> int:
    from onexn_tf import rpc as rpc_address

    if not args.onnx.is_file():
        raise cli.UsageError(f"{args.onnx}: no such ONNX file")
    files.check_new_file(args.out, "--out", args.force)
    rpc = rpc_address.from_flags(args.rpc_tracker, args.rpc_key, args.rpc)
    from export.tvm import bsr, latency_table, targets  # TVM from here on

    targets.check_name(args.target)
    bsr.check_block(args.bsr, 1)
    work_dir = args.work_dir or args.out.parent / "tvm_tuning"
    files.check_writable_dir(work_dir, "--work-dir")
    print(f"measuring {args.onnx} on {args.target}" + (" (on the device)" if rpc else ""), flush=True)
    table = latency_table.measure(args.onnx, target=args.target, num_cores=args.num_cores, bsr=args.bsr,
                                  rates=args.rates or latency_table.RATES, work_dir=work_dir, rpc=rpc,
                                  progress=not args.quiet, log=lambda m: print(m, flush=True))
    latency_table.save(table, args.out)
    print(f"wrote {args.out}: {len(table['layers'])} pointwise layers at rates "
          f"{', '.join(f'{r:g}' for r in table['rates'])}; dense end to end {table['dense_end_to_end_ms']:.3f} ms, "
          f"of which the rest of the model {table['rest_ms']:.3f} ms ({table['seconds']:.0f} s)")
    return 0


def choose(args) -> int:
    from export.tvm import latency_table  # its reading and prediction need neither TVM nor TensorFlow
    from onexn_tf import jobs

    if args.budget_ms is not None and args.budget_ms <= 0:
        raise cli.UsageError(f"--budget-ms={args.budget_ms:g} is not allowed: it must be positive")
    if args.speedup is not None and args.speedup <= 0:
        raise cli.UsageError(f"--speedup={args.speedup:g} is not allowed: it must be positive")
    if args.batches < 1 or args.batch_size < 1:
        raise cli.UsageError("--batches and --batch-size must be >= 1")
    if not args.model.exists():
        raise cli.UsageError(f"{args.model}: no such model file, SavedModel or onexn-train job directory")
    files.check_new_file(args.out, "--out", args.force)
    table = latency_table.load(args.table)
    job = jobs.read_config(args.model) if jobs.is_job(args.model) else {}
    dataset, data_dir = args.dataset or job.get("dataset"), args.data_dir or job.get("data_dir")
    if args.score == "sensitivity" and not (dataset and (data_dir or dataset != "folder")):
        raise cli.UsageError("--score sensitivity needs validation data: --dataset and --data-dir (or a job dir)")
    from training.evaluate import load_model, model_file  # TensorFlow from here on

    model = load_model(model_file(args.model))
    import onexn_tf
    from android_bench import planning

    if onexn_tf.pruning_wrappers(model):
        model = onexn_tf.strip(model)
    scores = None
    if args.score == "sensitivity":
        layers = onexn_tf.models.prunable_layers(model, full=args.full)
        scores = _sensitivity(model, layers, [float(r) for r in table["rates"]], table["bsr"], dataset, data_dir, job,
                              args)
    plan = planning.choose(model, table, budget_ms=args.budget_ms, speedup=args.speedup, full=args.full, scores=scores)
    report = {"model": str(args.model), "table": str(args.table), "target": table["target"]["name"],
              "score": args.score, **plan}
    files.write_json(args.out, plan["rates"])
    files.write_json(plan_path(args.out), report)
    for row in plan["layers"]:
        print(f"  {row['layer']:40s} p={row['rate']:<5g} {row['ms']:.4f} ms  score {row['score']:.4f}")
    print(f"wrote {args.out} (plan: {plan_path(args.out)}): predicted {plan['predicted_ms']:.3f} ms for a budget of "
          f"{plan['budget_ms']:.3f} ms; dense {plan['dense_predicted_ms']:.3f} ms ({plan['predicted_speedup']:.2f}x); "
          f"{args.score} score {plan['total_score']:.3f}")
    return 0


def _sensitivity(model, layers, rates, n, dataset, data_dir, job, args):
    from export.source import guess_arch
    from onexn_tf import models
    from training import data, sensitivity

    arch = args.arch or job.get("arch") or guess_arch(model)
    if arch is None:
        raise cli.UsageError("--score sensitivity: give --arch (the model's input preprocessing)")
    splits = data.load(dataset=dataset, data_dir=data_dir, size=model.input_shape[1], batch_size=args.batch_size,
                       preprocess=models.preprocess_input(arch), cache="none", need_train=False,
                       val_fraction=job.get("val_fraction"))
    batches = sensitivity.batches_of(splits.val, args.batches)
    print(f"sensitivity: {len(layers)} layers x {len(rates) - 1} rates on {sum(len(b[0]) for b in batches)} "
          "validation images", flush=True)
    return sensitivity.scores(model, layers, rates, batches, n=n, progress=lambda name: print(f"  {name}", flush=True))


def main(args) -> int:
    return measure(args) if args.command == "measure" else choose(args)


def run(argv=None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

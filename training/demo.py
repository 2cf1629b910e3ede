"""``onexn-demo``: the project's main job on bundled (generated) data, small enough for 2 CPU cores.

1. write the synthetic grating images as an image folder (``OUT/data``);
2. ``onexn-train`` a small MobileNet densely (``OUT/dense``);
3. ``onexn-train`` again from that model: 1×N pruning in one shot (the reference's recipe) with
   filter rearrangement, fine-tuning (``OUT/pruned``);
4. strip and permute channels physically so kept blocks are contiguous (``OUT/deployed_model.keras``
   and ``OUT/permutation.json``), evaluate dense / pruned / deployed top-1 and top-5, print the
   per-layer table and write ``OUT/report.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onexn_tf
from onexn_tf import files, inspect, models
from onexn_tf._keras import keras
from training import cli, data, evaluate, synthetic, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onexn-demo", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mobilenet_v2", choices=models.ARCHITECTURES)
    p.add_argument("--alpha", type=float, default=0.35, help="width multiplier (default 0.35)")
    p.add_argument("--image-size", type=int, default=64, help="input size in pixels (default 64)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--train-samples", type=int, default=768)
    p.add_argument("--val-samples", type=int, default=256)
    p.add_argument("--n", type=int, default=4, help="block height N (default 4)")
    p.add_argument("--sparsity", type=float, default=0.5, help="per-layer pruning rate p (default 0.5)")
    p.add_argument("--criterion", default="block_l1", choices=onexn_tf.masks.CRITERIA)
    p.add_argument("--rearrange", default="groups", choices=onexn_tf.rearrange.POLICIES,
                   help="filter rearrangement policy (default groups)")
    p.add_argument("--dense-epochs", type=int, default=4)
    p.add_argument("--prune-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default demo_out)")
    return p


def _check(args):
    for name in ("image_size", "classes", "train_samples", "val_samples", "batch_size", "dense_epochs",
                 "prune_epochs"):
        if getattr(args, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed: it must be >= 1")
    if args.image_size < 32:
        raise cli.UsageError(f"--image-size={args.image_size} is not allowed: Keras MobileNets need at least 32 pixels")
    onexn_tf.masks.check_n(args.n)
    onexn_tf.masks.check_sparsity(args.sparsity, "--sparsity")
    files.check_writable_dir(args.out)
    for job in ("dense", "pruned"):
        if (args.out / job).exists():
            raise cli.UsageError(f"{args.out / job} exists from an earlier demo: remove {args.out} or choose --out")


def _train_args(args, job: str, *extra: str):
    common = ["--arch", args.arch, "--alpha", str(args.alpha), "--input-size", str(args.image_size),
              "--dataset", "folder", "--data-dir", str(args.out / "data"), "--train-batch-size",
              str(args.batch_size), "--eval-batch-size", "64", "--warmup-epochs", "0", "--lr-policy", "fixed",
              "--bn-momentum", "0.9", "--seed", str(args.seed), "--job-dir", str(args.out / job)]
    return train.build_parser().parse_args(common + list(extra))


def main(args) -> int:
    _check(args)
    started = time.time()
    data_dir = args.out / "data"
    if not data_dir.exists():
        print(f"[1/4] writing {args.train_samples}+{args.val_samples} synthetic images to {data_dir}")
        with files.atomic_path(data_dir) as tmp:
            synthetic.write_dataset(tmp, classes=args.classes, size=args.image_size, train=args.train_samples,
                                    val=args.val_samples, seed=args.seed)
    else:
        print(f"[1/4] reusing the synthetic images in {data_dir}")

    print(f"[2/4] dense training: {args.arch} alpha={args.alpha} {args.image_size}px, {args.dense_epochs} epochs")
    dense = train.run_job(_train_args(args, "dense", "--criterion", "dense", "--epochs", str(args.dense_epochs),
                                      "--lr", "0.05"))

    print(f"[3/4] 1x{args.n} pruning at p={args.sparsity} ({args.criterion}, rearrange={args.rearrange}, one-shot), "
          f"{args.prune_epochs} fine-tuning epochs")
    pruned = train.run_job(_train_args(
        args, "pruned", "--pretrained-model", str(args.out / "dense" / "model.keras"), "--criterion", args.criterion,
        "--N", str(args.n), "--pr-target", str(args.sparsity), "--rearrange", args.rearrange,
        "--epochs", str(args.prune_epochs), "--lr", "0.01"))

    print("[4/4] permute channels for deployment, evaluate, report")
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
    summary = {
        "arch": args.arch, "alpha": args.alpha, "image_size": args.image_size, "n": args.n,
        "sparsity": args.sparsity, "criterion": args.criterion, "rearrange": args.rearrange,
        "accuracy": accuracy,
        "pruned_top1_per_epoch": [e["top1"] for e in pruned["epochs"]],
        "dense_top1_per_epoch": [e["top1"] for e in dense["epochs"]],
        "all_layers_exact_1xn": all(r.exact for r in layers) and all(r.structured for r in contiguous),
        "permuted_channel_groups": sum(g["permuted"] for g in record["groups"]),
        "layers": pruned["layers"],
        "wall_time_s": round(time.time() - started, 1),
    }
    files.write_json(args.out / "report.json", summary)
    print(json.dumps({k: summary[k] for k in ("accuracy", "all_layers_exact_1xn", "wall_time_s")}, indent=2))
    return 0 if summary["all_layers_exact_1xn"] else 1


def run(argv=None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

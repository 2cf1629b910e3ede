"""``onexn-demo``: the project's main job on bundled data, small enough for 2 CPU cores.

Train a small MobileNet densely on synthetic gratings, prune it 1×N in one shot (the reference's
recipe) with filter rearrangement, fine-tune, strip and permute channels physically so kept blocks
are contiguous, and print the per-layer report plus dense vs pruned accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import onexn_tf
from onexn_tf import files, inspect, models
from onexn_tf._keras import keras, tf
from training import cli
from training.synthetic import make_images


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
    for name in ("image_size", "classes", "train_samples", "val_samples", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed: it must be >= 1")
    for name in ("dense_epochs", "prune_epochs"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed: it must be >= 0")
    if args.image_size < 32:
        raise ValueError(f"--image-size={args.image_size} is not allowed: Keras MobileNets need at least 32 pixels")
    onexn_tf.masks.check_n(args.n)
    onexn_tf.masks.check_sparsity(args.sparsity, "--sparsity")
    files.check_writable_dir(args.out)


def _short_run_batchnorm(model, momentum=0.9):
    """Keras MobileNets use BN momentum 0.999, tuned for ImageNet-length runs; a demo of ~100 steps
    would evaluate with almost untouched moving statistics (chance accuracy)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def _compile(model, lr):
    optimizer = keras.optimizers.SGD(lr, momentum=0.9)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1")])
    optimizer.build(model.trainable_variables)  # slots up front: fit() traces its step once, not twice


def _top1(model, x, y) -> float:
    predictions = model.predict(x, batch_size=64, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == y))


def main(args) -> int:
    _check(args)
    keras.utils.set_random_seed(args.seed)
    verbose = 1 if sys.stdout.isatty() else 2
    started = time.time()
    preprocess = models.preprocess_input(args.arch)
    x_train, y_train = make_images(args.train_samples, classes=args.classes, size=args.image_size, seed=args.seed)
    x_val, y_val = make_images(args.val_samples, classes=args.classes, size=args.image_size, seed=args.seed + 1)
    x_train, x_val = preprocess(x_train.astype("float32")), preprocess(x_val.astype("float32"))

    model = models.build(args.arch, alpha=args.alpha, input_shape=(args.image_size, args.image_size, 3),
                         classes=args.classes)
    _short_run_batchnorm(model)
    print(f"[1/4] dense training: {args.arch} alpha={args.alpha} {args.image_size}px, {args.dense_epochs} epochs")
    _compile(model, 0.05)
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.dense_epochs, verbose=verbose)
    dense_top1 = float(model.evaluate(x_val, y_val, verbose=0)[1])

    print(f"[2/4] 1x{args.n} pruning at p={args.sparsity} ({args.criterion}, rearrange={args.rearrange}), "
          f"{args.prune_epochs} fine-tuning epochs")
    pruned = onexn_tf.prune_1xn(model, n=args.n, sparsity=args.sparsity, criterion=args.criterion,
                                rearrange=args.rearrange, seed=args.seed)
    _short_run_batchnorm(pruned)
    onexn_tf.update_masks(pruned)  # one-shot masks from the trained weights, before fine-tuning
    _compile(pruned, 0.01)
    oneshot_top1 = float(pruned.evaluate(x_val, y_val, verbose=0)[1])
    pruned.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.prune_epochs, verbose=verbose,
               callbacks=[onexn_tf.UpdatePruningStep()])
    pruned_top1 = float(pruned.evaluate(x_val, y_val, verbose=0)[1])

    print("[3/4] strip, permute channels, inspect")
    deployed, permutation_record = onexn_tf.deployable(pruned)
    deployed_top1 = _top1(deployed, x_val, y_val)
    records = inspect.report(pruned)
    print(inspect.format_table(records))
    # After the physical permutation every kept block must be contiguous in natural channel order.
    contiguous = inspect.report(deployed, n=args.n, criterion=args.criterion, layers=set(onexn_tf.permutations(pruned)))

    print(f"[4/4] writing {args.out}")
    args.out.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(args.out / "pruned_model.keras") as tmp:
        deployed.save(tmp)
    onexn_tf.rearrange.write_record(args.out / "permutation.json", permutation_record)
    summary = {
        "arch": args.arch, "alpha": args.alpha, "image_size": args.image_size, "n": args.n,
        "sparsity": args.sparsity, "criterion": args.criterion, "rearrange": args.rearrange,
        "top1": {"dense": dense_top1, "pruned_one_shot": oneshot_top1, "pruned_fine_tuned": pruned_top1,
                 "deployed": deployed_top1},
        "all_layers_exact_1xn": all(r.exact for r in records) and all(r.structured for r in contiguous),
        "permuted_channel_groups": sum(g["permuted"] for g in permutation_record["groups"]),
        "layers": inspect.to_dicts(records),
        "wall_time_s": round(time.time() - started, 1),
    }
    files.write_json(args.out / "report.json", summary)
    print(json.dumps({k: summary[k] for k in ("top1", "all_layers_exact_1xn", "wall_time_s")}, indent=2))
    return 0 if summary["all_layers_exact_1xn"] else 1


def run(argv=None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

"""``onexn-train``: the reference's ``imagenet.py`` job with Keras ``model.fit``.

    onexn-train --arch mobilenet_v2 --dataset imagenet2012 --data-dir ~/tfds --manual-dir ~/imagenet \\
        --pretrained-model imagenet --pr-target 0.5 --N 4 --criterion block_l1 --rearrange reference \\
        --epochs 180 --train-batch-size 256 --lr 0.01 --lr-policy cos --job-dir runs/v2_1x4

Job directory: ``config.json``; ``backup/`` (Keras BackupAndRestore: ``--resume`` continues from the
last completed epoch after a crash or kill); ``checkpoints/last`` (TF checkpoint, every epoch) and
``checkpoints/best`` (best validation top-1); ``log.csv``; ``tensorboard/`` (with tfmot
pruning summaries); and, when the run has finished, ``model.keras`` (the stripped model of the best
epoch), ``permutations.json`` (each pruned layer's block order) and ``results.json`` — written last,
so its presence means the job is complete.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import onexn_tf
from onexn_tf import batchnorm, cli, files, inspect, jobs, masks, models, provenance, rearrange
from onexn_tf._keras import keras, tf
from training import data, distribute, recipe, transforms

CRITERIA = onexn_tf.masks.CRITERIA + ("dense",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onexn-train", description="Train / fine-tune a 1×N-pruned MobileNet "
                                "(the reference's recipe on Keras model.fit).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="mobilenet_v2", choices=models.ARCHITECTURES)
    g.add_argument("--alpha", type=float, default=1.0, help="width multiplier")
    g.add_argument("--input-size", type=int, default=224, help="square input size in pixels")
    g.add_argument("--pretrained-model", help="'imagenet' (Keras weights, needs internet) or a local "
                   ".h5 / .keras / SavedModel path (a whole model or weights for --arch)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="folder", help="a tensorflow-datasets name (e.g. imagenet2012) or "
                   "'folder' for DATA_DIR/<split>/<class>/<image>")
    g.add_argument("--data-dir", help="image folder root, or the tfds data_dir")
    g.add_argument("--manual-dir", help="tfds manual_dir (where imagenet2012's tar files are)")
    g.add_argument("--train-split", default=None, help="default: train")
    g.add_argument("--val-split", default=None, help="default: validation, val or test")
    g.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="DATA_DIR is one class-per-folder tree (DATA_DIR/<class>/<image>): hold out this "
                        "fraction of each class for validation (a fixed split by file name)")
    g.add_argument("--cache", default="auto", choices=("auto", "memory", "none"))
    g.add_argument("--augment", default="reference", choices=transforms.MODES,
                   help="training augmentation: reference = random resized crops of 8-100%% of the area + "
                        "flips (ImageNet's); light = crops of 64-100%%, no flip; none = resize + centre crop")
    g.add_argument("--crop-scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="random-crop area range, fractions of the image (default: the --augment mode's)")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on for reference, off for light and none)")
    g = p.add_argument_group("pruning")
    g.add_argument("--pr-target", type=float, default=0.5, help="per-layer pruning rate p")
    g.add_argument("--N", dest="n", type=int, default=4, help="block height (output channels per block)")
    g.add_argument("--criterion", default="block_l1", choices=CRITERIA,
                   help="the seed's --conv_type: BlockL1Conv=block_l1, BlockRandomConv=block_random, "
                        "UnstructureConv=weight, StructureConv=filter, DenseConv=dense")
    g.add_argument("--rearrange", nargs="?", const="reference", default="none", choices=rearrange.POLICIES,
                   help="filter rearrangement policy (bare --rearrange: reference)")
    g.add_argument("--partial", default="inside", choices=masks.PARTIAL_MODES)
    g.add_argument("--full", action="store_true", help="prune the classifier layers too")
    g.add_argument("--schedule", default="oneshot", choices=("oneshot", "gradual"),
                   help="oneshot: mask once at the first step (reference); gradual: polynomial 0 -> p")
    g.add_argument("--pruning-end-epoch", type=int, default=None, help="gradual: reach p by this epoch "
                   "(default: half of --epochs)")
    g.add_argument("--pruning-frequency", type=int, default=100, help="gradual: steps between mask updates")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=180)
    g.add_argument("--train-batch-size", type=int, default=256, help="global batch size")
    g.add_argument("--eval-batch-size", type=int, default=256)
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--lr-policy", default="cos", choices=recipe.LR_POLICIES)
    g.add_argument("--lr-decay-step", type=int, nargs="+", default=[50, 100], help="step policy: decay epochs")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="step policy: factor per decay")
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--weight-decay", type=float, default=4e-5, help="L2 on every trainable weight")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--mixed-precision", action="store_true", help="mixed_float16 compute")
    g.add_argument("--bn-momentum", type=float, default=None, help="BatchNorm moving-average momentum "
                   "(default: from the run's length, so the averages forget their start within two epochs: "
                   "0.999 as in Keras' MobileNets for ImageNet-length epochs, down to 0.9 for small datasets)")
    g.add_argument("--bn-recalibration", type=int, default=20, metavar="BATCHES",
                   help="after one-shot pruning, re-estimate the BatchNorm statistics over this many "
                        "training batches before the first evaluation (0: off)")
    g = p.add_argument_group("job")
    g.add_argument("--job-dir", type=Path, required=True)
    g.add_argument("--resume", action="store_true", help="continue an interrupted job in --job-dir")
    g.add_argument("--strategy", default="auto", choices=distribute.STRATEGIES)
    g.add_argument("--gpus", type=int, nargs="+", default=None, help="GPU ids for the mirrored strategy")
    g.add_argument("--logical-cpus", type=int, default=0, help=argparse.SUPPRESS)  # tests: split the CPU
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--verbose", type=int, default=None, choices=(0, 1, 2), help="Keras verbosity "
                   "(default: progress bar on a terminal, a line per epoch otherwise)")
    return p


def check_args(args) -> None:
    """Every user mistake that can be caught before loading data or building a model."""
    positive = {"input_size": 32, "epochs": 1, "train_batch_size": 1, "eval_batch_size": 1, "pruning_frequency": 1}
    for name, low in positive.items():
        if getattr(args, name) < low:
            raise cli.UsageError(f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed: it must be >= {low}")
    masks.check_n(args.n)
    masks.check_sparsity(args.pr_target, "--pr-target")
    if args.bn_momentum is not None and not 0 <= args.bn_momentum < 1:
        raise cli.UsageError(f"--bn-momentum={args.bn_momentum} is not allowed: it must be in [0, 1)")
    if args.bn_recalibration < 0:
        raise cli.UsageError(f"--bn-recalibration={args.bn_recalibration} is not allowed: it must be >= 0")
    data.check_val_fraction(args.val_fraction, args.dataset)
    augmentation_of(args)
    if not 0 <= args.label_smoothing < 1:
        raise cli.UsageError(f"--label-smoothing={args.label_smoothing} is not allowed: it must be in [0, 1)")
    for name in ("lr", "alpha"):
        if getattr(args, name) <= 0:
            raise cli.UsageError(f"--{name}={getattr(args, name):g} is not allowed: it must be positive")
    if args.pretrained_model and args.pretrained_model != "imagenet" and not Path(args.pretrained_model).exists():
        raise cli.UsageError(f"--pretrained-model {args.pretrained_model}: no such file or directory")
    files.check_writable_dir(args.job_dir)
    job = args.job_dir
    finished = jobs.is_finished(job)
    backup = jobs.has_backup(job)
    if args.resume and finished and not backup:
        raise cli.UsageError(f"--job-dir {job} holds a finished run (results.json): nothing to resume")
    if not args.resume and backup:
        raise cli.UsageError(f"--job-dir {job} already holds a started run: pass --resume to continue it, "
                             "or choose another --job-dir")
    if not args.resume and finished:  # the same answer as --resume gives: there is nothing to continue
        raise cli.UsageError(f"--job-dir {job} holds a finished run (results.json): nothing to resume; "
                             "choose another --job-dir")


def config_values(args) -> dict:
    """The job's options for config.json, with every local path made absolute, so the job dir can be
    read (onexn-eval, onexn-export) from any working directory."""
    values = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    for key in ("data_dir", "manual_dir", "job_dir", "pretrained_model"):
        if values.get(key) and values[key] != "imagenet" and "://" not in values[key]:  # not gs://, s3://
            values[key] = str(Path(values[key]).expanduser().resolve())
    return values


def augmentation_of(args) -> transforms.Augmentation:
    return transforms.augmentation(args.augment, args.crop_scale, args.hflip)


def recalibrates(args) -> bool:
    return args.criterion != "dense" and args.schedule == "oneshot" and args.bn_recalibration > 0


def build_training_model(args, classes: int, steps_per_epoch: int):
    model = jobs.build_model(args, classes, steps_per_epoch)
    lr = recipe.ReferenceLR(args.lr, args.lr_policy, args.epochs, steps_per_epoch, args.warmup_epochs,
                            args.lr_decay_step, args.lr_gamma)
    if args.optimizer == "sgd":
        optimizer = recipe.TorchSGD(lr, momentum=args.momentum, nesterov=args.nesterov, l2_decay=args.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(lr, weight_decay=args.weight_decay or None)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="top1"),
                           keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")])
    model.optimizer.build(model.trainable_variables)  # slots now: fit() traces its step once, not twice
    return model


class EpochExtras(keras.callbacks.Callback):
    """Adds the epoch's wall time and learning rate to the logs (so CSVLogger records them)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_time_s"] = round(time.time() - self._start, 3)
            # With a schedule, Keras keeps the rate of the last step in a (possibly mirrored) variable.
            logs["lr"] = float(keras.backend.get_value(self.model.optimizer.learning_rate))


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """Best-by-top-1 weights that remember the best value across a resume (from the CSV log)."""

    def __init__(self, filepath, previous_best: float | None):
        super().__init__(filepath, monitor="val_top1", mode="max", save_best_only=True, save_weights_only=True)
        if previous_best is not None:
            self.best = previous_best


def read_log(path: Path) -> list[dict]:
    """Rows of the CSV log, one per epoch (a resumed epoch's later row wins)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) if k != "epoch" else int(v) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]
    return sorted({row["epoch"]: row for row in rows}.values(), key=lambda row: row["epoch"])


def run_job(args) -> dict:
    """Run (or resume) a training job; returns the results written to ``results.json``."""
    started = time.time()
    check_args(args)
    strategy = distribute.make_strategy(args.strategy, gpus=args.gpus, logical_cpus=args.logical_cpus)
    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    preprocess = models.preprocess_input(args.arch)
    augmentation = augmentation_of(args)
    splits = data.load(dataset=args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir,
                       train_split=args.train_split, val_split=args.val_split, size=args.input_size,
                       batch_size=args.train_batch_size, eval_batch_size=args.eval_batch_size,
                       preprocess=preprocess, cache=args.cache, seed=args.seed, augmentation=augmentation,
                       val_fraction=args.val_fraction)
    steps_per_epoch = data.steps(splits.train_examples, args.train_batch_size)
    momentum = jobs.bn_momentum(args, steps_per_epoch)
    with strategy.scope():
        model = build_training_model(args, splits.num_classes, steps_per_epoch)
    job = args.job_dir  # nothing is written before the data and the pruned model are known to be valid
    chief = distribute.is_chief(strategy)
    if chief:
        (job / "checkpoints").mkdir(parents=True, exist_ok=True)
        files.write_json(job / jobs.CONFIG, {**config_values(args),
                                               "num_classes": splits.num_classes, "steps_per_epoch": steps_per_epoch,
                                               "augmentation": augmentation.to_dict(), "bn_momentum_used": momentum})

    history = read_log(job / "log.csv")
    best_so_far = max((row.get("val_top1", -1.0) for row in history), default=None)
    # Every worker backs up and checkpoints (Keras sends non-chief copies to temporary folders); the
    # chief alone writes the log and TensorBoard summaries.
    callbacks = [keras.callbacks.BackupAndRestore(str(job / "backup")), EpochExtras()]
    if args.criterion != "dense":
        callbacks.append(onexn_tf.UpdatePruningStep())
    recalibration = None
    if recalibrates(args):
        recalibration = batchnorm.RecalibrateBatchNorm(splits.train, args.bn_recalibration,
                                                       log=print if chief else None)
        callbacks.append(recalibration)
    if chief:
        summaries = onexn_tf.PruningSummaries if args.criterion != "dense" else keras.callbacks.TensorBoard
        callbacks.append(summaries(log_dir=str(job / "tensorboard")))
    callbacks += [
        # TF-format checkpoints: h5 weight loading fails on mirrored BatchNorm statistics.
        keras.callbacks.ModelCheckpoint(str(job / "checkpoints" / "last"), save_weights_only=True),
        BestCheckpoint(str(job / "checkpoints" / "best"), best_so_far),
    ]
    if chief:
        callbacks.append(keras.callbacks.CSVLogger(str(job / "log.csv"), append=True))
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    with data.naming_bad_images(args.dataset, args.data_dir):
        model.fit(splits.train, validation_data=splits.val, epochs=args.epochs, callbacks=callbacks, verbose=verbose)

    best_path = job / "checkpoints" / "best"
    if Path(f"{best_path}.index").exists():
        model.load_weights(str(best_path)).expect_partial()
    with data.naming_bad_images(args.dataset, args.data_dir):
        final_top1, final_top5 = [float(v) for v in model.evaluate(splits.val, verbose=0)[1:3]]
    history = read_log(job / "log.csv")
    results = {
        "arch": args.arch, "alpha": args.alpha, "input_size": args.input_size, "dataset": args.dataset,
        "num_classes": splits.num_classes, "train_examples": splits.train_examples,
        "val_examples": splits.val_examples, "n": args.n, "criterion": args.criterion,
        "pr_target": args.pr_target if args.criterion != "dense" else 0.0, "rearrange": args.rearrange,
        "partial": args.partial, "full": args.full, "schedule": args.schedule,
        "augmentation": augmentation.to_dict(), "val_fraction": args.val_fraction,
        "bn_momentum": momentum,
        # used: batches of this invocation's pass (None: the job resumed after its first epoch's pass)
        "bn_recalibration": {"batches": args.bn_recalibration if recalibrates(args) else 0,
                             "used": recalibration.used if recalibration else None},
        "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
        "epochs": [{"epoch": row["epoch"], "top1": row.get("val_top1"), "top5": row.get("val_top5"),
                    "loss": row.get("loss"), "val_loss": row.get("val_loss"), "train_top1": row.get("top1"),
                    "lr": row.get("lr"), "time_s": row.get("epoch_time_s")} for row in history],
        "best": {"top1": final_top1, "top5": final_top5,
                 "epoch": max(history, key=lambda r: r.get("val_top1", -1))["epoch"] if history else None},
        "layers": inspect.to_dicts(inspect.report(model)) if onexn_tf.pruning_wrappers(model) else [],
        "epochs_time_s": round(sum(row.get("epoch_time_s", 0.0) for row in history), 1),  # all runs of the job
        "wall_time_s": round(time.time() - started, 1),  # this invocation, setup and final evaluation included
        "versions": provenance.tool_versions(),
    }
    # Every worker strips (reading mirrored BatchNorm statistics is a collective op); the chief writes.
    stripped = onexn_tf.strip(model) if onexn_tf.pruning_wrappers(model) else model
    if chief:
        with files.atomic_path(job / jobs.MODEL) as tmp:
            stripped.save(tmp)
        files.write_json(job / jobs.PERMUTATIONS,
                         {name: perm.tolist() for name, perm in onexn_tf.permutations(model).items()})
        files.write_json(job / jobs.RESULTS, results)
    return results


def main(args) -> int:
    results = run_job(args)
    print(json.dumps({"best": results["best"], "job_dir": str(args.job_dir)}, indent=2))
    return 0


def run(argv=None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

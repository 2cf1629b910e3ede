"""The work of an ``onexn-train`` job (see :mod:`training.train` for the command and the job
directory's layout): check the options, build the data and the pruned model, ``model.fit`` with
backup, checkpoints and logs, then write the stripped model and ``results.json``."""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import onexn_tf
from onexn_tf import batchnorm, files, inspect, jobs, models, provenance
from onexn_tf._keras import keras
from training import data, distribute, recipe, transforms


def config_values(args) -> dict:
    """The job's options for config.json, with every local path made absolute, so the job dir can be
    read (onexn-eval, onexn-export) from any working directory."""
    values = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    for key in ("data_dir", "manual_dir", "job_dir", "pretrained_model", "pr_config"):
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


def warn_oversized_n(model, n: int) -> None:
    """A block taller than a layer's output channels covers all of them (input-channel pruning there):
    legal, but rarely what ``--N`` was meant to do, so it is said once."""
    widths = {w.layer.name: int(w.layer.kernel.shape[-1]) for w in onexn_tf.pruning_wrappers(model)}
    narrow = sorted(name for name, width in widths.items() if width < n)
    if narrow:
        every = "every pruned layer has" if len(narrow) == len(widths) else f"{len(narrow)} of {len(widths)} pruned layers have"
        print(f"onexn-train: warning: --N {n}: {every} fewer output channels (e.g. {narrow[0]}: {widths[narrow[0]]}); "
              "their blocks cover all output channels of an input channel", file=sys.stderr)


def run_job(args) -> dict:
    """Run (or resume) a training job whose options :func:`training.train.check_args` accepted;
    returns the results written to ``results.json``."""
    started = time.time()
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
    warn_oversized_n(model, args.n)
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
        "arch": args.arch, "alpha": args.alpha, "input_size": args.input_size, "xnnpack": args.xnnpack,
        "dataset": args.dataset,
        "num_classes": splits.num_classes, "train_examples": splits.train_examples,
        "val_examples": splits.val_examples, "n": args.n, "criterion": args.criterion,
        "pr_target": (None if args.layer_rates else args.pr_target) if args.criterion != "dense" else 0.0,
        "layer_rates": args.layer_rates, "rearrange": args.rearrange,
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



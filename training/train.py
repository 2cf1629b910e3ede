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
import json
import sys
from pathlib import Path

from onexn_tf import cli, files, jobs
from onexn_tf.options import ARCHITECTURES, PARTIAL_MODES, REARRANGE_POLICIES, check_n, check_sparsity
from training.options import (AUGMENT_MODES, LR_POLICIES, STRATEGIES, TRAIN_CRITERIA, augmentation,
                              check_cluster, check_val_fraction, load_pr_config)


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="onexn-train", description="Train / fine-tune a 1×N-pruned MobileNet "
                                "(the reference's recipe on Keras model.fit).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="mobilenet_v2", choices=ARCHITECTURES)
    g.add_argument("--alpha", type=float, default=1.0, help="width multiplier")
    g.add_argument("--input-size", type=int, default=224, help="square input size in pixels")
    g.add_argument("--pretrained-model", help="'imagenet' (Keras weights, needs internet) or a local "
                   ".h5 / .keras / SavedModel path (a whole model or weights for --arch)")
    g.add_argument("--xnnpack", action="store_true",
                   help="symmetric padding before every stride-2 conv (same layers and weights), so TFLite's "
                        "XNNPACK can run the pruned model on its sparse path (see README, Android with TFLite)")
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
    g.add_argument("--augment", default="reference", choices=AUGMENT_MODES,
                   help="training augmentation: reference = random resized crops of 8-100%% of the area + "
                        "flips (ImageNet's); light = crops of 64-100%%, no flip; none = resize + centre crop")
    g.add_argument("--crop-scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="random-crop area range, fractions of the image (default: the --augment mode's)")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on for reference, off for light and none)")
    g = p.add_argument_group("pruning")
    g.add_argument("--pr-target", type=float, default=0.5, help="per-layer pruning rate p")
    g.add_argument("--pr-config", type=Path, metavar="FILE.json",
                   help='a rate per layer instead of --pr-target: {"layer": p, ...} (the seed\'s pr_cfg; '
                        "onexn-plan choose writes one); only the named layers are pruned")
    g.add_argument("--N", dest="n", type=int, default=4, help="block height (output channels per block)")
    g.add_argument("--criterion", default="block_l1", choices=TRAIN_CRITERIA,
                   help="the seed's --conv_type: BlockL1Conv=block_l1, BlockRandomConv=block_random, "
                        "UnstructureConv=weight, StructureConv=filter, DenseConv=dense")
    g.add_argument("--rearrange", nargs="?", const="reference", default="none", choices=REARRANGE_POLICIES,
                   help="filter rearrangement policy (bare --rearrange: reference)")
    g.add_argument("--partial", default="inside", choices=PARTIAL_MODES)
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
    g.add_argument("--lr-policy", default="cos", choices=LR_POLICIES)
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
    g.add_argument("--strategy", default="auto", choices=STRATEGIES,
                   help="auto: mirrored over every GPU, else one device; multiworker: the cluster in the TF_CONFIG "
                        "environment variable of every worker")
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
    check_n(args.n, "--N")
    check_sparsity(args.pr_target, "--pr-target")
    args.layer_rates = load_pr_config(args.pr_config) if args.pr_config else None
    if args.layer_rates and args.criterion == "dense":
        raise cli.UsageError("--pr-config sets pruning rates: it needs a pruning --criterion, not dense")
    if args.bn_momentum is not None and not 0 <= args.bn_momentum < 1:
        raise cli.UsageError(f"--bn-momentum={args.bn_momentum} is not allowed: it must be in [0, 1)")
    if args.bn_recalibration < 0:
        raise cli.UsageError(f"--bn-recalibration={args.bn_recalibration} is not allowed: it must be >= 0")
    check_val_fraction(args.val_fraction, args.dataset)
    if args.strategy == "multiworker":
        check_cluster()
    augmentation(args.augment, args.crop_scale, args.hflip)
    if not 0 <= args.label_smoothing < 1:
        raise cli.UsageError(f"--label-smoothing={args.label_smoothing} is not allowed: it must be in [0, 1)")
    for name in ("lr", "alpha"):
        if getattr(args, name) <= 0:
            raise cli.UsageError(f"--{name}={getattr(args, name):g} is not allowed: it must be positive")
    if args.pretrained_model and args.pretrained_model != "imagenet" and not Path(args.pretrained_model).exists():
        raise cli.UsageError(f"--pretrained-model {args.pretrained_model}: no such file or directory")
    files.check_writable_dir(args.job_dir, "--job-dir")
    job = args.job_dir
    if args.resume and not jobs.is_job(job):
        raise cli.UsageError(f"--resume: --job-dir {job} holds no onexn-train run (no {jobs.CONFIG}): nothing to "
                             "resume; drop --resume to start a new run")
    if job.is_dir() and not jobs.is_job(job) and any(job.iterdir()):  # never train into someone else's files
        raise cli.UsageError(f"--job-dir {job} is not empty and holds no onexn-train run: choose a new or empty "
                             "--job-dir")
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


def run_job(args) -> dict:
    """Run (or resume) the job ``args`` describes; returns the results written to ``results.json``.
    The options are checked first; TensorFlow is imported only then."""
    check_args(args)
    from training import fit_job

    return fit_job.run_job(args)


def main(args) -> int:
    try:
        results = run_job(args)
    except KeyboardInterrupt:
        started = jobs.is_job(args.job_dir)
        print("onexn-train: interrupted" + (f"; continue the job with --resume --job-dir {args.job_dir} (from its last "
                                            "completed epoch)" if started else ""), file=sys.stderr)
        return 130
    print(json.dumps({"best": results["best"], "job_dir": str(args.job_dir)}, indent=2))
    return 0


def run(argv=None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

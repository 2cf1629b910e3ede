"""``onexn-eval``: top-1 / top-5 of a saved model (pruned, stripped, or a finished onexn-train job).

    onexn-eval runs/v2_1x4 --dataset imagenet2012 --data-dir ~/tfds
    onexn-eval model.keras --arch mobilenet_v2 --input-size 224 --dataset folder --data-dir data/
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from onexn_tf import cli, files, jobs
from onexn_tf.errors import first_line
from onexn_tf.options import ARCHITECTURES
from training.options import check_val_fraction


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="onexn-eval", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="a .keras / .h5 / SavedModel path, or an onexn-train --job-dir")
    p.add_argument("--arch", choices=ARCHITECTURES, help="for its preprocessing (default: from the job)")
    p.add_argument("--input-size", type=int, help="default: the model's input size")
    p.add_argument("--dataset", default=None, help="tfds name or 'folder' (default: the job's)")
    p.add_argument("--data-dir", help="image folder root or tfds data_dir (default: the job's)")
    p.add_argument("--manual-dir")
    p.add_argument("--split", default=None, help="default: validation, val or test")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="DATA_DIR is one DATA_DIR/<class>/<image> tree: evaluate the held-out fraction F, "
                        "the same images onexn-train --val-fraction F held out (default: the job's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    return p


def model_file(path: Path) -> Path:
    """The file to load for MODEL: itself, or a finished job's stripped model."""
    if jobs.is_job(path):
        if not (path / jobs.MODEL).exists():
            raise cli.UsageError(f"job {path} has no {jobs.MODEL}: the run has not finished (resume it with "
                                 "onexn-train --resume, or export a checkpoint with onexn-export --checkpoint last)")
        if not jobs.is_finished(path):
            print(f"onexn-eval: warning: job {path} is unfinished (no {jobs.RESULTS}); evaluating its "
                  f"{jobs.MODEL}", file=sys.stderr)
        path = path / jobs.MODEL
    if not path.exists():
        raise cli.UsageError(f"{path}: no such model file or directory")
    return path


def load_model(path: Path):
    """The Keras model in ``path`` (a file :func:`model_file` returned)."""
    from onexn_tf._keras import keras

    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, IOError) as error:
        raise cli.UsageError(f"{path} is not a Keras model: {first_line(error)}") from None


def evaluate(model, dataset) -> dict:
    """Top-1 / top-5 of ``model`` over a dataset of (images, one-hot labels) batches."""
    import numpy as np

    from training.metrics import TopK

    counter = TopK()
    for images, labels in dataset:
        counter.update(model(images, training=False).numpy(), np.argmax(labels.numpy(), axis=-1))
    return {**counter.result(), "examples": counter.count}


def main(args) -> int:
    if args.batch_size < 1:
        raise cli.UsageError(f"--batch-size={args.batch_size} is not allowed: it must be >= 1")
    if not args.model.exists():  # before asking for --arch: the path is the first thing wrong
        raise cli.UsageError(f"{args.model}: no such model file, SavedModel or onexn-train job directory")
    job = jobs.read_config(args.model) if jobs.is_job(args.model) else {}
    arch = args.arch or job.get("arch")
    if not arch:
        raise cli.UsageError("--arch is required (it selects the input preprocessing) unless MODEL is a job dir")
    dataset = args.dataset or job.get("dataset")
    if not dataset:
        raise cli.UsageError("--dataset is required unless MODEL is a job dir")
    val_fraction = args.val_fraction if args.val_fraction is not None else job.get("val_fraction")
    check_val_fraction(val_fraction, dataset)
    data_dir = args.data_dir or job.get("data_dir")
    path = model_file(args.model)
    if args.json:
        files.check_new_file(args.json, "--json", args.force)
    import onexn_tf  # TensorFlow from here on: every check that needs none is done
    from onexn_tf import models
    from training import data

    model = load_model(path)
    built_for = model.input_shape[1]
    if args.input_size and built_for is not None and args.input_size != built_for:
        raise cli.UsageError(f"--input-size {args.input_size} does not match the model, which takes "
                             f"{built_for}x{built_for} images (omit --input-size to use it)")
    size = args.input_size or built_for
    splits = data.load(dataset=dataset, data_dir=data_dir,
                       manual_dir=args.manual_dir or job.get("manual_dir"), val_split=args.split or job.get("val_split"),
                       size=size, batch_size=args.batch_size, preprocess=models.preprocess_input(arch),
                       cache="none", need_train=False, val_fraction=val_fraction)
    if model.output_shape[-1] != splits.num_classes:
        raise cli.UsageError(f"the model predicts {model.output_shape[-1]} classes; the dataset has {splits.num_classes}")
    result = {"model": str(args.model), "arch": arch, "input_size": size, "dataset": dataset,
              "val_fraction": val_fraction,
              "pruned_layers": len(onexn_tf.pruning_wrappers(model))}
    with data.naming_bad_images(dataset, data_dir):
        result.update(evaluate(model, splits.val))
    print(json.dumps(result, indent=2))
    if args.json:
        files.write_json(args.json, result)
    return 0


def run(argv=None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

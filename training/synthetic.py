"""Deterministic synthetic image-classification data: the project's bundled demo/test data.

Each class is a sinusoidal grating with its own orientation, frequency and colour, drawn with a
random phase, contrast and noise. A small MobileNet learns it in a few epochs on a CPU, so demos
and tests show real accuracy changes without downloading anything.
"""
from __future__ import annotations

import numpy as np

from onexn_tf.errors import InvalidArgument


def make_images(num_samples: int, *, classes: int = 4, size: int = 64, seed: int = 0,
                noise: float = 24.0) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [num, size, size, 3], labels int32 [num])``, balanced classes, fixed by ``seed``."""
    if classes < 2:
        raise InvalidArgument(f"classes={classes!r} is not allowed: it must be at least 2")
    if size < 8:
        raise InvalidArgument(f"size={size!r} is not allowed: images must be at least 8 pixels")
    style = np.random.default_rng(1234)  # class appearance is the same for every seed
    angles = np.pi * np.arange(classes) / classes
    freqs = style.uniform(2.0, 5.0, classes)
    colours = style.uniform(0.3, 1.0, (classes, 3))
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_samples) % classes).astype(np.int32)
    rng.shuffle(labels)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    images = np.empty((num_samples, size, size, 3), np.uint8)
    for i, c in enumerate(labels):
        angle = angles[c] + rng.normal(0, 0.08)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freqs[c] * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        contrast = rng.uniform(50, 100)
        pixels = 127.5 + contrast * wave[:, :, None] * colours[c] + rng.normal(0, noise, (size, size, 3))
        images[i] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images, labels


def write_dataset(root, *, classes: int = 4, size: int = 64, train: int = 768, val: int = 256, seed: int = 0) -> dict:
    """The synthetic gratings as an image folder (``root/{train,val}/<class>/*.png``), for ``--dataset folder``."""
    from training.data import write_image_folder

    names = [f"grating_{c}" for c in range(classes)]
    counts = {}
    for split, count, split_seed in (("train", train, seed), ("val", val, seed + 1)):
        images, labels = make_images(count, classes=classes, size=size, seed=split_seed)
        counts[split] = write_image_folder(root, images, labels, split, names)
    return counts


def build_parser():
    from onexn_tf import cli

    p = cli.Parser(prog="onexn-make-data", description="Write the bundled synthetic dataset "
                                "(class-per-subfolder PNGs) that onexn-train --dataset folder reads.")
    p.add_argument("out", help="output directory (DATA_DIR/train/<class>, DATA_DIR/val/<class>)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="image size in pixels")
    p.add_argument("--train", type=int, default=768, help="training images")
    p.add_argument("--val", type=int, default=256, help="validation images")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args) -> int:
    from pathlib import Path

    from onexn_tf import files

    for name in ("train", "val"):
        if getattr(args, name) < 1:
            raise InvalidArgument(f"--{name}={getattr(args, name)} is not allowed: it must be >= 1")
    out = files.check_writable_dir(Path(args.out))
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose a new directory")
    with files.atomic_path(out) as tmp:
        counts = write_dataset(tmp, classes=args.classes, size=args.size, train=args.train, val=args.val,
                               seed=args.seed)
    print(f"wrote {counts['train']} training and {counts['val']} validation images of {args.classes} classes "
          f"({args.size}px) to {out}")
    return 0


def run(argv=None) -> int:
    from onexn_tf import cli

    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    import sys

    sys.exit(run())

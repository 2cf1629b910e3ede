"""Input pipelines: tensorflow-datasets by name, an image folder with split folders, or one
class-per-folder tree split by ``val_fraction``.

Train: the chosen augmentation (``transforms``; the reference's by default). Eval: resize the
shorter side to size·256/224, centre crop. Then the architecture's own preprocessing (Keras
MobileNets: V1/V2 scale to [-1, 1], V3 rescales inside the model) and one-hot labels (label
smoothing needs them). ``tf.data`` with parallel maps, optional caching, prefetch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import zlib
from pathlib import Path

import numpy as np

from onexn_tf._keras import tf
from onexn_tf.cli import UsageError
from onexn_tf.errors import first_line
from training import transforms
from training.options import check_val_fraction  # noqa: F401 (re-exported)
from training.transforms import Augmentation

AUTOTUNE = tf.data.AUTOTUNE
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
_CACHE_LIMIT_BYTES = 1 << 30  # "auto" caches a split whose decoded, cropped images fit in 1 GiB


@dataclasses.dataclass
class Splits:
    train: tf.data.Dataset | None
    val: tf.data.Dataset
    num_classes: int
    train_examples: int
    val_examples: int
    class_names: list[str]


def _decoded(image):
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 3 and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return image


def pipeline(ds: tf.data.Dataset, *, size: int, training: bool, batch_size: int, preprocess, num_classes: int,
             examples: int, cache: str = "auto", seed: int = 0,
             augmentation: Augmentation | None = None) -> tf.data.Dataset:
    """(image uint8 HxWx3, label) pairs -> batches of (preprocessed float32 images, one-hot labels)."""
    augmentation = augmentation or transforms.augmentation("reference")
    ds = ds.map(lambda image, label: (_decoded(image), label), num_parallel_calls=AUTOTUNE)
    fits = examples * size * size * 3 * (4 if training else 1) <= _CACHE_LIMIT_BYTES
    if training:
        if cache == "memory" or (cache == "auto" and fits):
            # Decoded originals of a small set, resized once so the cache stays small; crops stay random.
            ds = ds.map(lambda image, label: (tf.cast(transforms.resize_shorter(image, 2 * size), tf.uint8), label),
                        num_parallel_calls=AUTOTUNE).cache()
        ds = ds.shuffle(min(examples, 10_000), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda image, label: (transforms.train_transform(image, size, augmentation), label),
                    num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda image, label: (transforms.eval_transform(image, size), label), num_parallel_calls=AUTOTUNE)
        if cache == "memory" or (cache == "auto" and fits):
            ds = ds.cache()
    ds = ds.map(lambda image, label: (preprocess(tf.cast(image, tf.float32)),
                                      tf.one_hot(tf.cast(label, tf.int32), num_classes)),
                num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def steps(examples: int, batch_size: int) -> int:
    return max(1, math.ceil(examples / batch_size))


def _check_folder(root: Path) -> None:
    """DATA_DIR/<split>/<class>/<image>: every split folder must hold images in class subfolders."""
    if not root.is_dir():
        raise UsageError(f"--data-dir {root} is not a directory")
    splits = sorted(p for p in root.iterdir() if p.is_dir())
    if not splits:
        raise UsageError(f"--data-dir {root} has no split folders; expected DATA_DIR/<split>/<class>/<image> "
                         "(e.g. train/ and val/)")
    classes = {}
    for split_dir in splits:
        images = {c.name: [f for f in c.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES]
                  for c in split_dir.iterdir() if c.is_dir()}
        classes[split_dir.name] = sorted(name for name, found in images.items() if found)
        if not classes[split_dir.name]:
            raise UsageError(f"{split_dir} holds no images in class subfolders (jpg, png, bmp, gif)")
        check_image_headers([f for found in images.values() for f in found])
    check_classes(root, classes)


_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8", b"BM", b"GIF8")  # PNG, JPEG, BMP, GIF: what decode_image reads


def check_image_headers(paths) -> None:
    """Refuse, before any work, image files that are not images at all (empty, text, another format):
    their first bytes must be a PNG, JPEG, BMP or GIF signature. (A file damaged further in is found
    when decoding fails: :func:`find_undecodable`.)"""
    bad = []
    for path in paths:
        with open(path, "rb") as f:
            if not f.read(8).startswith(_IMAGE_MAGIC):
                bad.append(path)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise UsageError(f"{bad[0]}{more} is not a PNG, JPEG, BMP or GIF image (by its first bytes): "
                         "remove or replace it")


@contextlib.contextmanager
def naming_bad_images(dataset: str, data_dir):
    """Turn a decode failure while reading an image folder into one line naming the file."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        bad = find_undecodable(data_dir) if dataset == "folder" and data_dir else None
        if bad is None:
            raise
        raise UsageError(f"{bad} cannot be decoded as an image ({first_line(error, 160)}): remove or replace it") from None


def find_undecodable(root) -> Path | None:
    """The first image under ``root`` that TensorFlow cannot decode (scanned only after a decode
    error, to name the file)."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES:
            try:
                _decode_file(str(path))
            except tf.errors.OpError:
                return path
    return None


def check_classes(root: Path, classes: dict[str, list[str]]) -> None:
    """Refuse data a classifier cannot learn or be scored on: fewer than two classes (100 % top-1 means
    nothing), or split folders naming different classes (labels would be re-indexed silently)."""
    names = sorted({name for split in classes.values() for name in split})
    if len(names) < 2:
        raise UsageError(f"--data-dir {root} has {len(names)} class folder ({', '.join(names)}): "
                         "classification needs at least 2")
    differing = {split: sorted(set(names) - set(split_classes)) for split, split_classes in classes.items()
                 if set(split_classes) != set(names)}
    if differing:
        missing = "; ".join(f"{split}/ lacks {', '.join(lacks)}" for split, lacks in sorted(differing.items()))
        raise UsageError(f"--data-dir {root}: the split folders hold different classes ({missing}); every "
                         "split needs the same class folders, or labels would not match across splits")


def _folder_builder(root: Path):
    import tensorflow_datasets as tfds

    _check_folder(root)
    return tfds.folder_dataset.ImageFolder(str(root))


def _tfds_builder(name: str, data_dir, manual_dir):
    with _quiet_tfds():  # its "Downloading and preparing ..." and absl notices are not ours to print
        return _prepared_tfds_builder(name, data_dir, manual_dir)


def _prepared_tfds_builder(name: str, data_dir, manual_dir):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise UsageError(f"--dataset {name!r} is not a tensorflow-datasets dataset "
                         f"({first_line(error)})") from None
    if not builder.is_prepared():
        config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:  # tfds raises many kinds here (a failed download, a missing tar file, ...)
            where = f"--data-dir {data_dir}" if data_dir else "tfds' default data_dir (~/tensorflow_datasets)"
            raise UsageError(f"tfds dataset {name!r} is not prepared in {where} and could not be prepared here "
                             f"({first_line(error, 200)}): prepare it where it can be downloaded (`tfds build {name} "
                             "--data_dir DIR`) and pass --data-dir DIR, or give --manual-dir with its downloaded "
                             "files") from None
    return builder


@contextlib.contextmanager
def _quiet_tfds():
    import io

    from absl import logging as absl_logging

    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logging.set_verbosity(level)


def _split(builder, wanted: str | None, fallbacks: tuple[str, ...], what: str) -> str:
    available = list(builder.info.splits.keys())
    for name in ([wanted] if wanted else list(fallbacks)):
        if name in available:
            return name
    raise UsageError(f"no {what} split {wanted or ' / '.join(fallbacks)!r} in {builder.info.name}: "
                     f"available splits are {available}")


def split_by_fraction(root: Path, fraction: float) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    """A class-per-folder tree (ROOT/<class>/<image>) split into (train, val) lists of (path, label).

    Per class, the ``fraction`` of its images whose file-name hash ranks lowest go to validation (at
    least one; at least one stays for training): the split is the same on every machine and run,
    needs no seed, and an image added later does not move the others across the split.
    """
    check_val_fraction(fraction)
    if not root.is_dir():
        raise UsageError(f"--data-dir {root} is not a directory")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UsageError(f"--data-dir {root} has no class folders; --val-fraction reads DATA_DIR/<class>/<image>")
    check_classes(root, {root.name: [c.name for c in classes]})
    train, val = [], []
    for label, folder in enumerate(classes):
        images = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES)
        if not images:
            nested = any(c.is_dir() for c in folder.iterdir())
            hint = " (it holds folders: for DATA_DIR/<split>/<class>/<image> drop --val-fraction)" if nested else ""
            raise UsageError(f"class folder {folder} holds no images (jpg, png, bmp, gif){hint}")
        check_image_headers(images)
        if len(images) < 2:
            raise UsageError(f"class folder {folder} holds 1 image: --val-fraction needs at least 2 per class")
        count = min(len(images) - 1, max(1, round(fraction * len(images))))
        ranked = sorted(images, key=lambda f: (zlib.crc32(f.name.encode()), f.name))
        val += [(str(f), label) for f in sorted(ranked[:count])]
        train += [(str(f), label) for f in sorted(ranked[count:])]
    return train, val, [c.name for c in classes]


def _decode_file(path):
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def _file_dataset(items: list[tuple[str, int]]) -> tf.data.Dataset:
    paths, labels = zip(*items)
    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.array(labels, np.int64)))
    return ds.map(lambda path, label: (_decode_file(path), label), num_parallel_calls=AUTOTUNE)


def load(*, dataset: str, data_dir=None, manual_dir=None, train_split=None, val_split=None, size: int,
         batch_size: int, eval_batch_size: int | None = None, preprocess, cache: str = "auto", seed: int = 0,
         need_train: bool = True, augmentation: Augmentation | None = None,
         val_fraction: float | None = None) -> Splits:
    """Train and validation pipelines for ``dataset`` ("folder" = an image folder at ``data_dir``;
    with ``val_fraction``, one class-per-folder tree split deterministically)."""
    def make(raw, training, examples, num_classes):
        return pipeline(raw, size=size, training=training, batch_size=batch_size if training else
                        (eval_batch_size or batch_size), preprocess=preprocess, num_classes=num_classes,
                        examples=examples, cache=cache, seed=seed, augmentation=augmentation)

    if val_fraction is not None:
        check_val_fraction(val_fraction, dataset)
        if not data_dir:
            raise UsageError("--val-fraction needs --data-dir DATA_DIR (DATA_DIR/<class>/<image>)")
        train_items, val_items, names = split_by_fraction(Path(data_dir), val_fraction)
        val = make(_file_dataset(val_items), False, len(val_items), len(names))
        train = make(_file_dataset(train_items), True, len(train_items), len(names)) if need_train else None
        return Splits(train, val, len(names), len(train_items) if need_train else 0, len(val_items), names)

    if dataset == "folder":
        if not data_dir:
            raise UsageError("--dataset folder needs --data-dir DATA_DIR (DATA_DIR/<split>/<class>/<image>)")
        builder = _folder_builder(Path(data_dir))
    else:
        builder = _tfds_builder(dataset, data_dir, manual_dir)
    val_name = _split(builder, val_split, ("validation", "val", "test"), "validation")
    features = builder.info.features
    label = features["label"] if "label" in features else None
    if label is None or not hasattr(label, "num_classes"):
        raise UsageError(f"dataset {builder.info.name!r} has no 'label' class feature to classify")
    num_classes = int(label.num_classes)
    if num_classes < 2:
        raise UsageError(f"dataset {builder.info.name!r} has {num_classes} class: classification needs at least 2")

    def split_ds(name, training):
        ds = builder.as_dataset(split=name, as_supervised=True, shuffle_files=training,
                                read_config=_read_config(seed))
        return ds, int(builder.info.splits[name].num_examples)

    val_raw, val_examples = split_ds(val_name, False)
    val = make(val_raw, False, val_examples, num_classes)
    train, train_examples = None, 0
    if need_train:
        train_name = _split(builder, train_split, ("train",), "training")
        train_raw, train_examples = split_ds(train_name, True)
        train = make(train_raw, True, train_examples, num_classes)
    names = list(label.names) if hasattr(label, "names") else [str(i) for i in range(num_classes)]
    return Splits(train, val, num_classes, train_examples, val_examples, names)


def _read_config(seed):
    import tensorflow_datasets as tfds

    return tfds.ReadConfig(shuffle_seed=seed)


def write_image_folder(root, images: np.ndarray, labels: np.ndarray, split: str, class_names=None) -> int:
    """Write ``images`` as ``root/split/<class>/<index>.png`` (the layout ``--dataset folder`` reads)."""
    root = Path(root)
    count = 0
    for index, (image, label) in enumerate(zip(images, labels)):
        name = class_names[label] if class_names else f"class_{int(label):03d}"
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(folder / f"{index:05d}.png"), tf.io.encode_png(image))
        count += 1
    return count

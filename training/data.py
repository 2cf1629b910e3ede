"""Input pipelines: tensorflow-datasets by name or an image folder, with the reference's transforms.

Train: random resized crop (area 8–100 %, aspect 3/4–4/3) + horizontal flip. Eval: resize the
shorter side to size·256/224, centre crop. Then the architecture's own preprocessing (Keras
MobileNets: V1/V2 scale to [-1, 1], V3 rescales inside the model) and one-hot labels (label
smoothing needs them). ``tf.data`` with parallel maps, optional caching, prefetch.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from onexn_tf._keras import tf
from onexn_tf.cli import UsageError

AUTOTUNE = tf.data.AUTOTUNE
_EVAL_RESIZE = 256 / 224
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


def train_transform(image, size: int, seed=None):
    """The reference's RandomResizedCrop(size, scale=(0.08, 1)) + RandomHorizontalFlip."""
    shape = tf.shape(image)
    box = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, extent, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=box, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
        max_attempts=10, use_image_if_no_bounding_boxes=True, seed=seed)
    crop = tf.slice(image, begin, extent)
    crop = tf.image.resize(crop, (size, size), method="bilinear", antialias=True)
    return tf.image.random_flip_left_right(crop, seed=seed)


def eval_transform(image, size: int):
    """Resize the shorter side to round(size·256/224), then centre-crop size×size."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = round(size * _EVAL_RESIZE) / tf.reduce_min(shape)
    resized = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), method="bilinear",
                              antialias=True)
    return tf.image.resize_with_crop_or_pad(resized, size, size)


def _decoded(image):
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 3 and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return image


def pipeline(ds: tf.data.Dataset, *, size: int, training: bool, batch_size: int, preprocess, num_classes: int,
             examples: int, cache: str = "auto", seed: int = 0) -> tf.data.Dataset:
    """(image uint8 HxWx3, label) pairs -> batches of (preprocessed float32 images, one-hot labels)."""
    ds = ds.map(lambda image, label: (_decoded(image), label), num_parallel_calls=AUTOTUNE)
    fits = examples * size * size * 3 * (4 if training else 1) <= _CACHE_LIMIT_BYTES
    if training:
        if cache == "memory" or (cache == "auto" and fits):
            # Decoded originals of a small set, resized once so the cache stays small; crops stay random.
            ds = ds.map(lambda image, label: (tf.cast(eval_transform(image, 2 * size), tf.uint8), label),
                        num_parallel_calls=AUTOTUNE).cache()
        ds = ds.shuffle(min(examples, 10_000), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda image, label: (train_transform(image, size), label), num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda image, label: (eval_transform(image, size), label), num_parallel_calls=AUTOTUNE)
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
    for split_dir in splits:
        images = [f for c in split_dir.iterdir() if c.is_dir() for f in c.iterdir()
                  if f.suffix.lower() in _IMAGE_SUFFIXES]
        if not images:
            raise UsageError(f"{split_dir} holds no images in class subfolders (jpg, png, bmp, gif)")


def _folder_builder(root: Path):
    import tensorflow_datasets as tfds

    _check_folder(root)
    return tfds.folder_dataset.ImageFolder(str(root))


def _tfds_builder(name: str, data_dir, manual_dir):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise UsageError(f"--dataset {name!r} is not a tensorflow-datasets dataset "
                         f"({str(error).splitlines()[0][:200]})") from None
    if not builder.is_prepared():
        config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:  # tfds raises many kinds here; the user needs the first line
            hint = f" (manual_dir {manual_dir})" if manual_dir else ""
            raise UsageError(f"cannot prepare tfds dataset {name!r}{hint}: "
                             f"{str(error).strip().splitlines()[0][:300]}") from None
    return builder


def _split(builder, wanted: str | None, fallbacks: tuple[str, ...], what: str) -> str:
    available = list(builder.info.splits.keys())
    for name in ([wanted] if wanted else list(fallbacks)):
        if name in available:
            return name
    raise UsageError(f"no {what} split {wanted or ' / '.join(fallbacks)!r} in {builder.info.name}: "
                     f"available splits are {available}")


def load(*, dataset: str, data_dir=None, manual_dir=None, train_split=None, val_split=None, size: int,
         batch_size: int, eval_batch_size: int | None = None, preprocess, cache: str = "auto", seed: int = 0,
         need_train: bool = True) -> Splits:
    """Train and validation pipelines for ``dataset`` ("folder" = an image folder at ``data_dir``)."""
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

    def split_ds(name, training):
        ds = builder.as_dataset(split=name, as_supervised=True, shuffle_files=training,
                                read_config=_read_config(seed))
        return ds, int(builder.info.splits[name].num_examples)

    val_raw, val_examples = split_ds(val_name, False)
    val = pipeline(val_raw, size=size, training=False, batch_size=eval_batch_size or batch_size,
                   preprocess=preprocess, num_classes=num_classes, examples=val_examples, cache=cache, seed=seed)
    train, train_examples = None, 0
    if need_train:
        train_name = _split(builder, train_split, ("train",), "training")
        train_raw, train_examples = split_ds(train_name, True)
        train = pipeline(train_raw, size=size, training=True, batch_size=batch_size, preprocess=preprocess,
                         num_classes=num_classes, examples=train_examples, cache=cache, seed=seed)
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

"""Image transforms: the training augmentation a user chooses, and the one evaluation transform.

ImageNet's recipe (random resized crops down to 8 % of the area, horizontal flips) destroys the
class of centred or orientation-coded images (characters, digits, the demo's gratings, where a flip
turns 45° into 135°), so the augmentation is a choice:

- ``reference``: RandomResizedCrop(scale 0.08–1, aspect 3/4–4/3) + horizontal flip (the seed's);
- ``light``: random crops of 64–100 % of the area (so shifts of up to a fifth of the side), aspect
  0.9–1.1, no flip;
- ``none``: the evaluation transform (resize the shorter side, centre crop), no flip.

``--crop-scale`` and ``--hflip/--no-hflip`` override a mode's crop range and flip. Evaluation always
resizes the shorter side to size·256/224 and centre-crops, for every mode.
"""
from __future__ import annotations

from onexn_tf._keras import tf
from training.options import AUGMENT_MODES as MODES, Augmentation, augmentation  # noqa: F401 (re-exported)

EVAL_RESIZE = 256 / 224


def crop_box(shape, aug: Augmentation, seed=None):
    """``(begin, extent)`` of a random crop whose area is within ``aug.crop_scale`` of the image's."""
    box = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, extent, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=box, area_range=aug.crop_scale, aspect_ratio_range=aug.aspect,
        max_attempts=10, use_image_if_no_bounding_boxes=True, seed=seed)
    return begin, extent


def train_transform(image, size: int, aug: Augmentation = augmentation("reference"), seed=None):
    """A training sample: the mode's crop resized to size×size, then the flip if the mode has one."""
    if aug.crop_scale is None:
        out = eval_transform(image, size)
    else:
        begin, extent = crop_box(tf.shape(image), aug, seed)
        out = tf.image.resize(tf.slice(image, begin, extent), (size, size), method="bilinear", antialias=True)
    return tf.image.random_flip_left_right(out, seed=seed) if aug.hflip else out


def resize_shorter(image, side):
    """Resize so the shorter side is ``side`` pixels (aspect kept)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.reduce_min(shape)
    return tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), method="bilinear", antialias=True)


def eval_transform(image, size: int):
    """Resize the shorter side to round(size·256/224), then centre-crop size×size."""
    return tf.image.resize_with_crop_or_pad(resize_shorter(image, round(size * EVAL_RESIZE)), size, size)

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

import dataclasses

from onexn_tf._keras import tf
from onexn_tf.errors import InvalidArgument

EVAL_RESIZE = 256 / 224
MODES = ("reference", "light", "none")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What the training transform does; ``crop_scale`` None = no random crop (the eval transform)."""
    mode: str = "reference"
    crop_scale: tuple[float, float] | None = (0.08, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True

    def to_dict(self) -> dict:
        return {"mode": self.mode, "crop_scale": list(self.crop_scale) if self.crop_scale else None,
                "aspect": [round(a, 6) for a in self.aspect], "hflip": self.hflip}


_PRESETS = {
    "reference": Augmentation("reference", (0.08, 1.0), (3 / 4, 4 / 3), True),
    "light": Augmentation("light", (0.64, 1.0), (0.9, 1 / 0.9), False),
    "none": Augmentation("none", None, (1.0, 1.0), False),
}


def augmentation(mode: str = "reference", crop_scale=None, hflip: bool | None = None) -> Augmentation:
    """A mode's preset with the user's overrides, checked (``InvalidArgument`` names the flag)."""
    if mode not in _PRESETS:
        raise InvalidArgument(f"--augment {mode!r} is not allowed: choose one of {', '.join(MODES)}")
    preset = _PRESETS[mode]
    if crop_scale is not None:
        low, high = (float(v) for v in crop_scale)
        if mode == "none":
            raise InvalidArgument("--crop-scale needs --augment reference or light (none takes no random crop)")
        if not 0 < low <= high <= 1:
            raise InvalidArgument(f"--crop-scale {low:g} {high:g} is not allowed: it needs 0 < MIN <= MAX <= 1 "
                                  "(fractions of the image area)")
        preset = dataclasses.replace(preset, crop_scale=(low, high))
    if hflip is not None:
        preset = dataclasses.replace(preset, hflip=bool(hflip))
    return preset


def crop_box(shape, aug: Augmentation, seed=None):
    """``(begin, extent)`` of a random crop whose area is within ``aug.crop_scale`` of the image's."""
    box = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, extent, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=box, area_range=aug.crop_scale, aspect_ratio_range=aug.aspect,
        max_attempts=10, use_image_if_no_bounding_boxes=True, seed=seed)
    return begin, extent


def train_transform(image, size: int, aug: Augmentation = _PRESETS["reference"], seed=None):
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

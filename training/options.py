"""The training stage's options, their allowed values and their checks, in plain Python, so
``onexn-train`` / ``onexn-eval`` check their arguments before TensorFlow is imported."""
from __future__ import annotations

import dataclasses
import json
import os

from onexn_tf.cli import UsageError
from onexn_tf.errors import InvalidArgument
from onexn_tf.options import CRITERIA as PRUNING_CRITERIA

LR_POLICIES = ("cos", "step", "exp", "fixed")
AUGMENT_MODES = ("reference", "light", "none")
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
TRAIN_CRITERIA = PRUNING_CRITERIA + ("dense",)


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
        raise InvalidArgument(f"--augment {mode!r} is not allowed: choose one of {', '.join(AUGMENT_MODES)}")
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


def check_val_fraction(fraction: float | None, dataset: str | None = "folder") -> None:
    """``--val-fraction``: a fraction strictly between 0 and 1, of an image folder (not a tfds dataset)."""
    if fraction is None:
        return
    if not 0 < fraction < 1:
        raise UsageError(f"--val-fraction={fraction:g} is not allowed: it must be between 0 and 1 (exclusive)")
    if dataset != "folder":
        raise UsageError("--val-fraction needs --dataset folder (one DATA_DIR/<class>/<image> tree)")


TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


def check_cluster() -> None:
    """``--strategy multiworker``: the cluster comes from ``TF_CONFIG``, which must be set and be JSON."""
    if "TF_CONFIG" not in os.environ:
        raise UsageError("--strategy multiworker needs the cluster in the TF_CONFIG environment variable, set on "
                         f"every worker (index 0 on the chief), e.g. {TF_CONFIG_EXAMPLE}")
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as error:
        raise UsageError(f"TF_CONFIG is not valid JSON ({error}): e.g. {TF_CONFIG_EXAMPLE}") from None


def load_pr_config(path) -> dict[str, float]:
    """``--pr-config FILE.json``: ``{"layer": rate, ...}``, every rate in [0, 1) (0: the layer stays
    dense). Which layers exist and can be pruned is checked against the model when it is built."""
    from onexn_tf import files

    rates = files.read_json(path, "--pr-config")
    if not isinstance(rates, dict) or not rates:
        raise UsageError(f'--pr-config {path} must hold a JSON object of layer rates, e.g. {{"conv_pw_1": 0.5}}')
    for name, rate in rates.items():
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise UsageError(f"--pr-config {path}: layer {name!r} has rate {rate!r}: rates must be numbers in [0, 1)")
    return {name: float(rate) for name, rate in rates.items()}

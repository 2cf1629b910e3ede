"""The four Keras MobileNets and the layers the reference prunes in each.

The builders pass through to ``tf.keras.applications`` (``weights="imagenet"`` downloads from the
Keras hub; ``weights=None`` or a local weights file work offline).
"""
from __future__ import annotations

from onexn_tf.errors import InvalidArgument
from onexn_tf import selection, xnnpack_ready
from onexn_tf._keras import keras
from onexn_tf.masks import check_choice, kernel_dims

from onexn_tf.options import ARCHITECTURES  # re-exported

_BUILDERS = {
    "mobilenet_v1": keras.applications.MobileNet,
    "mobilenet_v2": keras.applications.MobileNetV2,
    "mobilenet_v3_small": keras.applications.MobileNetV3Small,
    "mobilenet_v3_large": keras.applications.MobileNetV3Large,
}

# The reference's classifier layers: pruned only with full=True (V3: its two head FCs).
CLASSIFIER_LAYERS = {
    "mobilenet_v1": ("conv_preds",),
    "mobilenet_v2": ("predictions",),
    "mobilenet_v3_small": ("Conv_2", "Logits"),
    "mobilenet_v3_large": ("Conv_2", "Logits"),
}

# Keras applications' own input scaling, so callers feed what each model expects.
_PREPROCESS = {
    "mobilenet_v1": keras.applications.mobilenet.preprocess_input,
    "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
    "mobilenet_v3_small": keras.applications.mobilenet_v3.preprocess_input,
    "mobilenet_v3_large": keras.applications.mobilenet_v3.preprocess_input,
}


def check_arch(arch: str) -> str:
    return check_choice(arch, ARCHITECTURES, "arch")


def build(arch: str, *, alpha: float = 1.0, input_shape=(224, 224, 3), classes: int = 1000, weights=None,
          xnnpack: bool = False, **kwargs) -> keras.Model:
    """A Keras MobileNet: ``arch`` in :data:`ARCHITECTURES`; other keyword arguments go to Keras.

    ``xnnpack=True``: the same layers, names and weights, with symmetric padding before every stride-2
    conv and rank-4 constants (:mod:`onexn_tf.xnnpack_ready`), so that TFLite's XNNPACK can run the
    pruned model on its sparse path."""
    check_arch(arch)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise InvalidArgument(f"classes={classes!r} is not allowed: it must be a positive integer")
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise InvalidArgument(f"alpha={alpha!r} is not allowed: it must be a positive number")
    model = _BUILDERS[arch](input_shape=tuple(input_shape), alpha=alpha, classes=classes, weights=weights, **kwargs)
    return xnnpack_ready.xnnpack_ready(model) if xnnpack else model


def preprocess_input(arch: str):
    """The function mapping RGB pixels in [0, 255] to what ``arch`` expects."""
    return _PREPROCESS[check_arch(arch)]


def prunable_layers(model: keras.Model, *, full: bool = False) -> list[str]:
    """Names of the layers the reference prunes in ``model`` (see :mod:`onexn_tf.selection`)."""
    return selection.default_selection(model, full=full)


def partial_block_layers(model: keras.Model, n: int, *, full: bool = True) -> list[tuple[str, int, int]]:
    """(layer, C_out, C_out % N) for every prunable layer whose C_out is not a multiple of N."""
    out = []
    by_name = {layer.name: layer for layer in selection.leaf_layers(model)}
    for name in prunable_layers(model, full=full):
        c_out = kernel_dims(by_name[name].kernel.shape)[1]
        if c_out % n:
            out.append((name, c_out, c_out % n))
    return out

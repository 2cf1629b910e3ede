"""Which layers of a model get a 1×N mask.

The reference prunes every pointwise (1×1) convolution and, only with ``--full``, the classifier
layers. One structural rule reproduces its choice on all four Keras MobileNets without name lists:
*candidates* are Conv2D / Dense layers whose kernel is 1×1; the *head* is the candidates after the
model's last global pooling (V1 ``conv_preds``; V2 ``predictions``; V3 ``Conv_2`` and ``Logits``,
the reference's two classifier FCs); the head is selected only with ``full=True``. Stem and
depthwise convolutions are never candidates (3×3 kernels, DepthwiseConv2D).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Union

from onexn_tf.errors import InvalidArgument
from onexn_tf._keras import keras

LayerFilter = Union[Callable[[keras.layers.Layer], bool], Iterable[str], None]

_GLOBAL_POOLING = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


def leaf_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Layers in model order, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def unprunable_reason(layer) -> str | None:
    """Why ``layer`` cannot take a 1×N mask, or None if it can."""
    if not isinstance(layer, keras.layers.Layer):
        return f"{layer!r} is not a Keras layer"
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return f"layer {layer.name!r} ({type(layer).__name__}) is not prunable: its kernel is [kh, kw, C_out, C_in]"
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        return None
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return (f"layer {layer.name!r} (DepthwiseConv2D) is not prunable: a depthwise kernel has one output per "
                "input channel, so there are no 1×N output blocks")
    return (f"layer {layer.name!r} ({type(layer).__name__}) has nothing prunable: only Conv2D and Dense "
            "kernels take 1×N masks")


def is_pointwise(layer) -> bool:
    if isinstance(layer, keras.layers.Dense):
        return True
    return unprunable_reason(layer) is None and tuple(layer.kernel_size) == (1, 1)


def default_selection(model: keras.Model, full: bool = False) -> list[str]:
    """Names of the layers the reference would prune (see module docstring)."""
    layers = list(leaf_layers(model))
    last_pool = max((i for i, layer in enumerate(layers) if isinstance(layer, _GLOBAL_POOLING)), default=None)
    candidates = [(i, layer) for i, layer in enumerate(layers) if is_pointwise(layer)]
    if last_pool is None:
        head = {candidates[-1][0]} if candidates else set()
    else:
        head = {i for i, _ in candidates if i > last_pool}
    return [layer.name for i, layer in candidates if full or i not in head]


def select_layers(model: keras.Model, *, full: bool = False, layer_filter: LayerFilter = None) -> list[str]:
    """Names of the layers to prune: the default rule, or exactly what ``layer_filter`` picks.

    ``layer_filter`` is a callable ``layer -> bool`` (asked for every layer) or a collection of layer
    names; either replaces the default rule (and ``full``). Every picked layer must be prunable.
    """
    layers = list(leaf_layers(model))
    if layer_filter is None:
        names = default_selection(model, full)
    elif callable(layer_filter):
        names = [layer.name for layer in layers if layer_filter(layer)]
    else:
        if isinstance(layer_filter, str):
            layer_filter = [layer_filter]
        names = list(dict.fromkeys(layer_filter))
        known = {layer.name for layer in layers}
        missing = [name for name in names if name not in known]
        if missing:
            raise InvalidArgument(f"layer_filter names layers that are not in model {model.name!r}: {missing}")
    by_name = {layer.name: layer for layer in layers}
    for name in names:
        reason = unprunable_reason(by_name[name])
        if reason:
            raise InvalidArgument(reason)
    if not names:
        raise InvalidArgument(f"no prunable layer selected in model {model.name!r}: the selection is empty "
                         "(pass layer_filter to choose Conv2D or Dense layers)")
    return names

"""Cloning a functional/Sequential Keras model with its weights copied and no layer shared."""
from __future__ import annotations

from typing import Callable

from onexn_tf.errors import InvalidArgument
from onexn_tf._keras import keras

# transform(layer) -> (weights for the new layer, factory making the new layer)
Transform = Callable[[keras.layers.Layer], tuple[list, Callable[[], keras.layers.Layer]]]


def check_graph_model(model) -> None:
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise InvalidArgument(f"model {model.name!r} is a subclassed model: only functional and Sequential models "
                         "are supported")


def fresh(layer):
    """A new, unbuilt layer with ``layer``'s config."""
    return layer.__class__.from_config(layer.get_config())


def copy_layer(layer):
    return layer.get_weights(), lambda: fresh(layer)


def clone(model, transform: Transform = copy_layer):
    """Clone ``model``; ``transform`` decides each layer's replacement and the weights it gets.

    Unlike ``keras.models.clone_model`` (fresh weights) and tfmot's cloning (shared layers), the
    result carries copied weights and shares nothing with ``model``.
    """
    check_graph_model(model)
    copies = []

    def clone_layer(layer):
        if isinstance(layer, keras.Model) and hasattr(layer, "layers"):
            return clone(layer, transform)
        weights, make = transform(layer)
        new_layer = make()
        copies.append((new_layer, weights))
        return new_layer

    result = keras.models.clone_model(model, clone_function=clone_layer)
    for new_layer, weights in copies:
        if weights:
            new_layer.set_weights(weights)
    return result

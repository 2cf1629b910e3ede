"""SavedModel with a ``serving_default`` signature: input ``input`` (NHWC float32), output ``output``.

Only the variables and one traced serving function are saved (no Keras layer objects), so TF
Serving, ``tf.saved_model.load`` and converters get a plain graph.
"""
from __future__ import annotations

import numpy as np

from onexn_tf._keras import tf

ARTIFACT = "saved_model"


def serving_module(model):
    """A tf.Module holding the model's variables and one traced serving function (no Keras objects)."""
    spec = tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32, name="input")
    module = tf.Module()
    module.variables_to_save = list(model.weights)

    @tf.function(input_signature=[spec])
    def serve(input):  # noqa: A002  (the signature's input name)
        return {"output": model(input, training=False)}

    module.serve = serve
    return module


def write(model, path) -> None:
    module = serving_module(model)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def check(path, x: np.ndarray):
    """(outputs on ``x``, rank-2/4 weights by name) of a written SavedModel, loaded once."""
    loaded = tf.saved_model.load(str(path))
    outputs = loaded.signatures["serving_default"](input=tf.constant(x))["output"].numpy()
    return outputs, {v.name: v.numpy() for v in loaded.variables_to_save if v.shape.rank in (2, 4)}

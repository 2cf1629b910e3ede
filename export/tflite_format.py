"""TFLite fp32, optionally with ``EXPERIMENTAL_SPARSITY`` (weights stored sparse, densified at load).

Outputs come from the interpreter with its default delegates (XNNPACK), as deployed. Weights are
read from an interpreter without delegates that keeps every tensor, after one invocation, so
sparse-encoded constants are seen through their ``Densify`` outputs.
"""
from __future__ import annotations

import warnings

import numpy as np

from onexn_tf._keras import tf


def artifact(sparse: bool) -> str:
    return "model_sparse.tflite" if sparse else "model.tflite"


def write(model, path, *, sparse: bool = False) -> None:
    # From one traced serving function: from_keras_model would first re-serialise the whole Keras
    # model as a SavedModel (about 5x slower on a MobileNet).
    from export.savedmodel_format import serving_module

    module = serving_module(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    with open(path, "wb") as f:
        f.write(converter.convert())


_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _interpreter(path, x, **kwargs):
    with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated": still the interpreter TF ships
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path), **kwargs)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter


def check(path, x: np.ndarray):
    """(outputs of the interpreter with its default delegates, weight inputs of conv/FC ops by name)."""
    interpreter = _interpreter(path, x)
    outputs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    interpreter = _interpreter(
        path, x[:1], experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    # The weight input of every conv / fully-connected op: a constant, or the output of the Densify op
    # that expands a sparse-encoded constant (kept and readable thanks to preserve_all_tensors).
    weight_indices = {op["inputs"][1] for op in interpreter._get_ops_details() if op["op_name"] in _WEIGHTED_OPS}
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    return outputs, {f"{i}:{names[i]}": interpreter.get_tensor(i).copy() for i in sorted(weight_indices)}

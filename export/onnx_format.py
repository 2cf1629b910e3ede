"""ONNX through tf2onnx; run with onnxruntime; weights are the graph's float initializers.

Opsets 13–18 (18 is the newest tf2onnx 1.17 writes; onnxruntime 1.32 and TVM 0.27's Relax ONNX
importer both run it). The input is named ``input``, NHWC like Keras unless ``nchw``.
"""
from __future__ import annotations

import logging

import numpy as np

from onexn_tf._keras import tf
from onexn_tf.errors import InvalidArgument

ARTIFACT = "model.onnx"
from export.options import DEFAULT_OPSET, OPSETS  # re-exported


def check_opset(opset: int) -> int:
    if opset not in OPSETS:
        raise InvalidArgument(f"--opset {opset} is not supported: choose {OPSETS.start}..{OPSETS.stop - 1} "
                              f"(default {DEFAULT_OPSET}, the newest tf2onnx writes and onnxruntime and TVM run)")
    return opset


def write(model, path, *, opset: int = DEFAULT_OPSET, nchw: bool = False) -> None:
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    spec = (tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=check_opset(opset),
                                          inputs_as_nchw=["input"] if nchw else None, output_path=str(path))
    del proto


def check(path, x: np.ndarray, *, nchw: bool = False):
    """(onnxruntime outputs on ``x``, float rank-2/4 initializers and constants by name)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw else x
    outputs = session.run(None, {session.get_inputs()[0].name: feed})[0]
    model = onnx.load(str(path))
    found = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:  # weights folded into Constant nodes count too
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return outputs, {name: a for name, a in found.items() if a.dtype == np.float32 and a.ndim in (2, 4)}

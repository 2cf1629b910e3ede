"""The dense runtimes we compete with, timed in this process on the same input: onnxruntime (CPU
provider) and the TFLite interpreter (XNNPACK delegate, TensorFlow's default for float models).

Each runner is a zero-argument callable doing one inference; :func:`time_interleaved` takes one
sample of every runner per round (as ``onexn-bench`` does on a device), so drift hits them alike.
"""
from __future__ import annotations

import os
import time
import warnings

import numpy as np


def onnxruntime_runner(path, x: np.ndarray, threads: int = 1):
    """(runner, output) for an ONNX model on input ``x`` (in the model's own layout)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return (lambda: session.run(None, feed)), session.run(None, feed)[0]


def tflite_runner(path, x_nhwc: np.ndarray, threads: int = 1):
    """(runner, output) for a TFLite model on an NHWC input."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from onexn_tf._keras import tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ascontiguousarray(x_nhwc))
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()
    return interpreter.invoke, output


def time_interleaved(runners: dict, *, warmup: int = 5, repeat: int = 30, number: int = 1) -> dict:
    """name -> per-run latencies (ms): ``repeat`` rounds, each timing ``number`` runs of every runner."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    samples = {name: [] for name in runners}
    for _ in range(repeat):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(number):
                run()
            samples[name].append((time.perf_counter() - start) / number * 1e3)
    return samples

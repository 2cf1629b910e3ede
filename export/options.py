"""The export stage's choices as plain values, so ``onexn-export`` parses its arguments before
TensorFlow is imported."""

FORMATS = ("savedmodel", "onnx", "tflite", "tflite_sparse")
DEFAULT_FORMATS = ("savedmodel", "onnx", "tflite")
OPSETS = range(13, 19)
DEFAULT_OPSET = 18

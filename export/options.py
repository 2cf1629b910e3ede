"""The export stage's choices as plain values, so ``onexn-export`` parses its arguments before
TensorFlow is imported."""
from onexn_tf.errors import InvalidArgument

FORMATS = ("savedmodel", "onnx", "tflite", "tflite_sparse")
DEFAULT_FORMATS = ("savedmodel", "onnx", "tflite")
OPSETS = range(13, 19)
DEFAULT_OPSET = 18


def check_require_xnnpack_sparse(formats, require: bool) -> None:
    if require and "tflite_sparse" not in formats:
        raise InvalidArgument("--require-xnnpack-sparse checks the tflite_sparse artifact: add tflite_sparse to "
                              "--formats")

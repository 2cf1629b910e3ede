"""The one place that decides which Keras the project uses.

tfmot 0.8 only works with Keras 2 (the ``tf-keras`` package). ``TF_USE_LEGACY_KERAS=1`` must be set
before TensorFlow resolves ``tf.keras``; every module of the project imports Keras from here, so the
variable is set before anything else touches TensorFlow.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]

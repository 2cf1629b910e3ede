"""Where the project's modules get TensorFlow and Keras 2 from.

tfmot 0.8 only works with Keras 2 (the ``tf-keras`` package); ``TF_USE_LEGACY_KERAS=1`` must be set
before TensorFlow resolves ``tf.keras``. The package ``__init__`` sets it, and it always runs before
this module, so every ``from onexn_tf._keras import keras`` sees Keras 2.
"""
import os

assert os.environ.get("TF_USE_LEGACY_KERAS") == "1", "onexn_tf/__init__.py sets TF_USE_LEGACY_KERAS first"

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]

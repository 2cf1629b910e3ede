"""Where the project's modules get TensorFlow and Keras 2 from.

tfmot 0.8 only works with Keras 2 (the ``tf-keras`` package); ``TF_USE_LEGACY_KERAS=1`` must be set
before TensorFlow resolves ``tf.keras``. The package ``__init__`` sets it, and it always runs before
this module, so every ``from onexn_tf._keras import keras`` sees Keras 2.

TensorFlow is started here and only here (every other import of it, tfmot's and tf2onnx's included,
comes after this module), inside :func:`onexn_tf.native_logs.quiet_stderr`, so its C++ start-up
notices never reach a user's terminal. The device listing runs the CUDA probe inside the same window;
it does not initialise the runtime, so logical devices can still be configured afterwards.
"""
import os

assert os.environ.get("TF_USE_LEGACY_KERAS") == "1", "onexn_tf/__init__.py sets TF_USE_LEGACY_KERAS first"

from onexn_tf.native_logs import quiet_stderr  # noqa: E402

with quiet_stderr():
    import tensorflow as tf  # noqa: E402

    tf.config.list_physical_devices()
    import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]

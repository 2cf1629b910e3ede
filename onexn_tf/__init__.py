"""onexn_tf: 1×N block pruning for tf.keras models, on top of tensorflow-model-optimization.

Importing this package selects Keras 2 (``TF_USE_LEGACY_KERAS=1``), which tfmot requires.
"""
from onexn_tf import _keras  # noqa: F401  (must run before anything imports TensorFlow's Keras)
from onexn_tf import channels, cloning, deploy, files, inspect, masks, models, rearrange, schedules, selection
from onexn_tf.masks import MaskSpec, compute_mask
from onexn_tf.pruning import (Prune1xN, PruningSummaries, UpdatePruningStep, layer_masks, permutations, prune_1xn,
                              pruning_wrappers, strip, update_masks)
from onexn_tf.deploy import deployable
from onexn_tf.schedules import ConstantSparsity, OneShotSparsity, PolynomialDecay

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity", "MaskSpec", "channels", "deploy", "deployable", "rearrange", "OneShotSparsity", "PolynomialDecay", "Prune1xN", "PruningSummaries",
    "UpdatePruningStep", "compute_mask", "inspect", "layer_masks", "masks", "models", "permutations",
    "prune_1xn", "pruning_wrappers", "schedules", "selection", "strip", "update_masks",
]

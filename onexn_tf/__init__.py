"""onexn_tf: 1×N block pruning for tf.keras models, on top of tensorflow-model-optimization.

Importing this package selects Keras 2 (``TF_USE_LEGACY_KERAS=1``, which tfmot requires) — the one
place that does, and the earliest: a package's ``__init__`` runs before any of its modules.
TensorFlow itself is imported lazily, on first use of a name below, so tools that only need the
small pure-Python modules (errors, files, the TVM compiler) start fast and keep ``sys.modules``
small (TVMScript parsing slows down with every loaded module).
"""
import importlib
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_SUBMODULES = ("channels", "cloning", "deploy", "files", "inspect", "masks", "models", "rearrange", "schedules",
               "selection", "pruning", "errors", "provenance", "cli", "jobs", "rpc", "native_logs", "batchnorm", "options",
               "xnnpack_ready")
_NAMES = {
    "MaskSpec": "masks", "compute_mask": "masks",
    "Prune1xN": "pruning", "PruningSummaries": "pruning", "UpdatePruningStep": "pruning", "layer_masks": "pruning",
    "permutations": "pruning", "prune_1xn": "pruning", "pruning_wrappers": "pruning", "strip": "pruning",
    "update_masks": "pruning", "deployable": "deploy",
    "RecalibrateBatchNorm": "batchnorm", "recalibrate_batchnorm": "batchnorm",
    "ConstantSparsity": "schedules", "OneShotSparsity": "schedules", "PolynomialDecay": "schedules",
}

__all__ = sorted(set(_NAMES) | set(_SUBMODULES) - {"errors", "provenance", "pruning", "cloning", "files", "cli", "jobs",
                                                   "rpc", "native_logs", "options"})


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | set(_SUBMODULES))

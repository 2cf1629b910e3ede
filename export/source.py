"""What to export: a pruned model, a stripped model (+ block orders), or an onexn-train job directory.

Whatever comes in leaves as the *deployed* Keras model: masks re-applied, wrappers stripped, channels
physically permuted so every pruned kernel's kept blocks are contiguous runs of N output channels.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import onexn_tf
from onexn_tf import cloning, jobs, masks, models, schedules
from onexn_tf._keras import keras
from onexn_tf.errors import InvalidArgument, first_line

PREPROCESSING = {
    "mobilenet_v1": "RGB pixels in [0, 255] mapped to [-1, 1] (x / 127.5 - 1)",
    "mobilenet_v2": "RGB pixels in [0, 255] mapped to [-1, 1] (x / 127.5 - 1)",
    "mobilenet_v3_small": "RGB pixels in [0, 255] as they are (the model rescales inside)",
    "mobilenet_v3_large": "RGB pixels in [0, 255] as they are (the model rescales inside)",
}


@dataclasses.dataclass
class ExportSource:
    deployed: keras.Model
    record: dict  # permutation record (onexn_tf.rearrange.permutation_record)
    spec: masks.MaskSpec
    targets: dict[str, float | None]  # pruned layer -> target sparsity (None: unknown)
    arch: str | None
    description: str

    @property
    def pruned_layers(self) -> list[str]:
        return list(self.targets)

    def expected_kernels(self) -> dict[str, np.ndarray]:
        """Pruned layers' deployed kernels: their zeros are the (permuted) Keras masks."""
        return {name: self.deployed.get_layer(name).kernel.numpy() for name in self.targets}

    def preprocessing(self) -> str:
        return PREPROCESSING.get(self.arch, "unknown (not a known MobileNet): feed what the Keras model was fed")


def without_softmax(model):
    """The model minus a final softmax (Keras MobileNets end in one), so it outputs logits."""
    last = model.layers[-1]
    softmax = keras.activations.get("softmax")
    if isinstance(last, keras.layers.Activation) and last.activation is softmax:
        return keras.Model(model.inputs, last.input, name=model.name)
    if getattr(last, "activation", None) is softmax:
        def transform(layer):
            if layer is not last:
                return cloning.copy_layer(layer)
            config = dict(layer.get_config(), activation="linear")
            return layer.get_weights(), lambda: layer.__class__.from_config(config)
        return cloning.clone(model, transform)
    raise InvalidArgument(f"--logits: model {model.name!r} does not end in a softmax (its outputs are already logits "
                          "or something else)")


def guess_arch(model) -> str | None:
    """The Keras applications name their MobileNets recognisably."""
    name = model.name.lower()
    for prefix, arch in (("mobilenetv3small", "mobilenet_v3_small"), ("mobilenetv3large", "mobilenet_v3_large"),
                         ("mobilenetv2", "mobilenet_v2"), ("mobilenet_", "mobilenet_v1")):
        if name.startswith(prefix):
            return arch
    return None


def _load_keras(path: Path):
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises OSError, ValueError, KeyError, ... for non-models
        raise InvalidArgument(f"{path} is not a Keras model (.keras, .h5 or SavedModel): "
                              f"{first_line(error)}") from None


def _from_pruned(pruned, description: str, arch: str | None) -> ExportSource:
    wrappers = onexn_tf.pruning_wrappers(pruned)
    spec = wrappers[0].spec
    deployed, record = onexn_tf.deployable(pruned)
    targets = {w.layer.name: schedules.final_sparsity(w.pruning_schedule) for w in wrappers}
    return ExportSource(deployed, record, masks.MaskSpec(spec.n, spec.criterion, spec.partial), targets,
                        arch or guess_arch(deployed), description)


def _from_stripped(stripped, orders: dict | None, *, n: int | None, criterion: str, partial: str,
                   target: float | dict | None, arch: str | None, description: str) -> ExportSource:
    """``target``: the rate of every pruned layer, or a rate per layer name (None: unknown)."""
    if n is None:
        raise InvalidArgument("the model has no pruning wrappers: give --n (its block height N) to check the export")
    if orders:
        deployed, record = onexn_tf.deploy.permute_by_block_orders(stripped, orders)
        pruned = list(orders)
    else:
        deployed, record = onexn_tf.rearrange.permute_channels(stripped, {})
        pruned = [layer.name for layer in deployed.layers if hasattr(layer, "kernel")
                  and onexn_tf.selection.unprunable_reason(layer) is None and np.any(layer.kernel.numpy() == 0)]
    spec = masks.MaskSpec(n=n, criterion=criterion, partial=partial)
    targets = {name: target.get(name) if isinstance(target, dict) else target for name in pruned}
    return ExportSource(deployed, record, spec, targets, arch or guess_arch(deployed), description)


def load_source(path, *, checkpoint: str | None = None, arch: str | None = None, n: int | None = None,
                criterion: str = "block_l1", permutations=None) -> ExportSource:
    """``path``: a model file or job directory, or an in-memory (pruned or stripped) Keras model."""
    if arch is not None:
        models.check_arch(arch)
    if isinstance(path, keras.Model):
        model, where = path, path.name
    else:
        path = Path(path)
        if not path.exists():
            raise InvalidArgument(f"{path}: no such model file or job directory")
        if jobs.is_job(path):
            return _from_job(path, checkpoint, arch)
        if checkpoint:
            raise InvalidArgument("--checkpoint needs an onexn-train job directory as the source")
        model, where = _load_keras(path), str(path)
    if onexn_tf.pruning_wrappers(model):
        return _from_pruned(model, f"pruned model {where}", arch)
    orders = json.loads(Path(permutations).read_text()) if permutations else None
    return _from_stripped(model, orders, n=n, criterion=criterion, partial="inside", target=None, arch=arch,
                          description=f"stripped model {where}")


def _from_job(job: Path, checkpoint: str | None, arch: str | None) -> ExportSource:
    config = jobs.read_config(job)
    arch = arch or config.get("arch")
    finished = jobs.is_finished(job) and (job / jobs.MODEL).exists()
    if checkpoint or not finished:
        where = f"checkpoint {checkpoint or 'best'}" + ("" if finished else f" of an unfinished run (no {jobs.RESULTS})")
        model, settings = jobs.rebuild_pruned_model(job, checkpoint or "best")
        if not onexn_tf.pruning_wrappers(model):
            return _from_stripped(model, None, n=settings.n, criterion="block_l1", partial=settings.partial, target=None,
                                  arch=arch, description=f"job {job} (dense), {where}")
        return _from_pruned(model, f"job {job}, {where}", arch)
    results = jobs.read_results(job)
    stripped = _load_keras(job / jobs.MODEL)
    orders = json.loads((job / jobs.PERMUTATIONS).read_text()) if (job / jobs.PERMUTATIONS).exists() else {}
    dense = results.get("criterion") == "dense"
    return _from_stripped(stripped, orders or None, n=results.get("n", 4),
                          criterion="block_l1" if dense else results["criterion"], partial=results.get("partial", "inside"),
                          target=None if dense else _job_targets(results), arch=arch, description=f"job {job}")


def _job_targets(results: dict) -> float | dict | None:
    """A finished job's target rates: per layer as trained (``--pr-config`` or not), else ``pr_target``."""
    per_layer = {layer["layer"]: layer["target_sparsity"] for layer in results.get("layers", [])}
    return per_layer or results.get("pr_target")

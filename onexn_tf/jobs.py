"""The onexn-train job directory: the contract between the stage that writes it (``training``) and the
stages that read it (``onexn-eval``, ``export``).

    JOB/config.json          the job's settings (every onexn-train option) + num_classes, steps_per_epoch
    JOB/checkpoints/{last,best}   TF checkpoints of the pruned training model (wrappers, masks, weights)
    JOB/backup/              Keras BackupAndRestore state while a run is unfinished
    JOB/model.keras          the stripped model of the best epoch        } written when the run has
    JOB/permutations.json    each pruned layer's block order             } finished; results.json
    JOB/results.json         accuracy, per-layer sparsity, timings       } last of all

Readers rebuild the pruned model from ``config.json`` + a checkpoint with :func:`rebuild_pruned_model`,
which builds exactly what the trainer built (:func:`build_model`) without its optimizer or data. The
checks on a job directory are plain file reads, so commands answer them before TensorFlow is imported
(building a model imports it).
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import onexn_tf
from onexn_tf.errors import InvalidArgument, first_line

CONFIG = "config.json"
RESULTS = "results.json"
MODEL = "model.keras"
PERMUTATIONS = "permutations.json"

# What the pruned model depends on, with the values a config.json written before a setting existed
# implies (the trainer's defaults).
MODEL_SETTINGS = {
    "arch": "mobilenet_v2", "alpha": 1.0, "input_size": 224, "pretrained_model": None, "bn_momentum": None,
    "mixed_precision": False, "criterion": "block_l1", "n": 4, "pr_target": 0.5, "rearrange": "none",
    "partial": "inside", "full": False, "schedule": "oneshot", "pruning_end_epoch": None,
    "pruning_frequency": 100, "epochs": 180, "seed": 0, "xnnpack": False, "layer_rates": None,
}


def is_job(path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).exists()


def is_finished(job) -> bool:
    """``results.json`` is written last: its presence means the run completed."""
    return (Path(job) / RESULTS).exists()


def read_config(job) -> dict:
    return json.loads((Path(job) / CONFIG).read_text())


def read_results(job) -> dict:
    return json.loads((Path(job) / RESULTS).read_text())


def has_backup(job) -> bool:
    """True when BackupAndRestore left a checkpoint (it deletes it, not its folder, when a run ends)."""
    return any(path.is_file() for path in (Path(job) / "backup").rglob("*"))


def settings_from_config(config: dict) -> types.SimpleNamespace:
    """The settings a job was started with, the model-defining ones defaulted for older configs."""
    settings = {**MODEL_SETTINGS, **config}
    if "job_dir" in settings:
        settings["job_dir"] = Path(settings["job_dir"])
    return types.SimpleNamespace(**settings)


def load_pretrained(settings, classes: int):
    """The dense starting model: Keras ImageNet weights, a saved model, or weights for the architecture;
    with ``settings.xnnpack`` made XNNPACK-ready (:mod:`onexn_tf.xnnpack_ready`), weights kept."""
    from onexn_tf import xnnpack_ready

    model = _load_pretrained(settings, classes)
    return xnnpack_ready.xnnpack_ready(model) if settings.xnnpack else model


def _load_pretrained(settings, classes: int):
    from onexn_tf import models
    from onexn_tf._keras import keras

    shape = (settings.input_size, settings.input_size, 3)
    source = settings.pretrained_model
    if source == "imagenet":
        if classes != 1000:
            raise InvalidArgument(f"--pretrained-model imagenet has 1000 classes; the dataset has {classes}")
        return models.build(settings.arch, alpha=settings.alpha, input_shape=shape, weights="imagenet")
    if source and (Path(source).is_dir() or source.endswith(".keras") or _h5_has_model(source)):
        try:
            model = keras.models.load_model(source, compile=False)
        except Exception as error:  # a damaged or foreign file: Keras raises many kinds here
            raise InvalidArgument(f"--pretrained-model {source} is not a Keras model ({first_line(error)})") from None
        if onexn_tf.pruning_wrappers(model):
            model = onexn_tf.strip(model)
        if model.output_shape[-1] != classes:
            raise InvalidArgument(f"--pretrained-model {source} predicts {model.output_shape[-1]} classes; "
                                  f"the dataset has {classes}")
        return model
    model = models.build(settings.arch, alpha=settings.alpha, input_shape=shape, classes=classes)
    if source:
        if not (_is_hdf5(source) or Path(f"{source}.index").exists()):
            raise InvalidArgument(f"--pretrained-model {source} is not a Keras model or weights file: give a .keras, "
                                  ".h5 or SavedModel path, or a TF checkpoint prefix")
        try:
            model.load_weights(source)
        except (ValueError, OSError) as error:
            raise InvalidArgument(f"--pretrained-model {source} does not fit {settings.arch} alpha={settings.alpha} "
                                  f"with {classes} classes: {first_line(error)}") from None
        except Exception as error:  # a damaged checkpoint (the reader's DataLossError, ...)
            raise InvalidArgument(f"--pretrained-model {source} cannot be read as weights ({first_line(error)})") from None
    return model


def _is_hdf5(path: str) -> bool:
    import h5py

    return Path(path).is_file() and h5py.is_hdf5(path)


def _h5_has_model(path: str) -> bool:
    if not path.endswith((".h5", ".hdf5")):
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except OSError as error:
        raise InvalidArgument(f"--pretrained-model {path} is not an HDF5 file ({first_line(error)})") from None


def make_schedule(settings, steps_per_epoch: int):
    """The job's pruning schedule: one for every layer (``--pr-target``), or with ``--pr-config`` a
    mapping layer -> schedule (None for a layer at rate 0, which stays dense)."""
    end_epoch = settings.pruning_end_epoch if settings.pruning_end_epoch is not None else max(1, settings.epochs // 2)

    def schedule(rate: float):
        if settings.schedule == "oneshot":
            return onexn_tf.OneShotSparsity(rate)
        return onexn_tf.PolynomialDecay(0.0, rate, begin_step=1, end_step=max(2, end_epoch * steps_per_epoch),
                                        frequency=settings.pruning_frequency)

    if settings.layer_rates:
        return {name: schedule(rate) if rate > 0 else None for name, rate in settings.layer_rates.items()}
    return schedule(settings.pr_target)


def bn_momentum(settings, steps_per_epoch: int) -> dict:
    """The BatchNorm momentum a job trains with and where it came from (recorded in config/results):
    ``--bn-momentum``, else one chosen from the run's length (a model's own lower momentum is kept)."""
    from onexn_tf import batchnorm

    if settings.bn_momentum is not None:
        return {"value": settings.bn_momentum, "source": "--bn-momentum"}
    return {"value": batchnorm.run_length_momentum(steps_per_epoch, settings.epochs),
            "source": f"run length ({steps_per_epoch} steps per epoch, {settings.epochs} epochs; at most the model's own)"}


def build_model(settings, classes: int, steps_per_epoch: int):
    """The job's model before compilation: the starting model, its BatchNorm momentum (``--bn-momentum``,
    else :func:`batchnorm.run_length_momentum`), the mixed-precision output, and the pruning wrappers."""
    from onexn_tf import batchnorm
    from onexn_tf._keras import keras

    model = load_pretrained(settings, classes)
    momentum = bn_momentum(settings, steps_per_epoch)
    batchnorm.set_momentum(model, momentum["value"], only_lower=momentum["source"] != "--bn-momentum")
    if settings.mixed_precision:  # a float32 softmax output, as Keras' mixed-precision guide asks
        model = keras.Model(model.inputs, keras.layers.Activation("linear", dtype="float32", name="output_float32")(
            model.outputs[0]), name=model.name)
    if settings.criterion != "dense":
        if settings.layer_rates:
            check_layer_rates(model, settings.layer_rates)
        model = onexn_tf.prune_1xn(model, n=settings.n, pruning_schedule=make_schedule(settings, steps_per_epoch),
                                   criterion=settings.criterion, rearrange=settings.rearrange,
                                   partial=settings.partial, full=settings.full, seed=settings.seed)
    return model


def check_layer_rates(model, rates: dict) -> None:
    """``--pr-config``'s layers against the model: each must exist and be prunable."""
    from onexn_tf import selection

    layers = {layer.name: layer for layer in selection.leaf_layers(model)}
    prunable = selection.default_selection(model, full=True)
    unknown = [name for name in rates if name not in layers]
    if unknown:
        raise InvalidArgument(f"--pr-config names layers that are not in the model: {unknown} (its prunable layers: "
                              f"{', '.join(prunable[:5])}{', ...' if len(prunable) > 5 else ''})")
    for name in rates:
        reason = selection.unprunable_reason(layers[name])
        if reason:
            raise InvalidArgument(f"--pr-config: {reason}")


def rebuild_pruned_model(job, checkpoint: str = "best"):
    """``(model, settings)``: the job's pruned training model (wrappers, masks, permutations) restored
    from a checkpoint, without an optimizer."""
    job = Path(job)
    config = read_config(job)
    if "num_classes" not in config:
        raise InvalidArgument(f"{job / CONFIG} lacks num_classes (written by an older onexn-train)")
    prefix = job / "checkpoints" / checkpoint
    if not Path(f"{prefix}.index").exists():
        raise InvalidArgument(f"job {job} has no '{checkpoint}' checkpoint ({prefix}.index)")
    settings = settings_from_config(config)
    if settings.pretrained_model == "imagenet" or (settings.pretrained_model
                                                  and not Path(settings.pretrained_model).exists()):
        settings.pretrained_model = None  # only the architecture matters: the checkpoint holds every weight
    model = build_model(settings, config["num_classes"], config["steps_per_epoch"])
    status = model.load_weights(str(prefix))
    status.assert_existing_objects_matched()  # every model variable restored (optimizer slots may be left)
    status.expect_partial()
    return model, settings

"""Pruning schedules: tfmot's own, plus the reference's one-shot mask."""
from __future__ import annotations

from onexn_tf._keras import keras, tf  # first: TensorFlow starts there, quietly
from onexn_tf.errors import InvalidArgument
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule as tfmot_schedule
from onexn_tf.masks import check_sparsity

ConstantSparsity = tfmot_schedule.ConstantSparsity
PolynomialDecay = tfmot_schedule.PolynomialDecay
PruningSchedule = tfmot_schedule.PruningSchedule


@keras.utils.register_keras_serializable(package="onexn_tf")
class OneShotSparsity(PruningSchedule):
    """Compute the mask once, at ``begin_step``, and keep it for the rest of training.

    This is the reference's behaviour: masks come from the (pretrained) weights before fine-tuning
    starts and never change. Pruning steps count from 1 (tfmot's wrapper increments its step before
    the mask update of a training batch), so the default ``begin_step=1`` is the first batch.
    """

    def __init__(self, target_sparsity: float, begin_step: int = 1):
        self.target_sparsity = check_sparsity(target_sparsity, "target_sparsity")
        if isinstance(begin_step, bool) or not isinstance(begin_step, int) or begin_step < 0:
            raise InvalidArgument(f"begin_step={begin_step!r} is not allowed: it must be an integer >= 0")
        self.begin_step = begin_step

    def __call__(self, step):
        should_prune = tf.math.equal(tf.cast(step, tf.int64), self.begin_step)
        return should_prune, tf.constant(self.target_sparsity, dtype=tf.float32)

    def get_config(self):
        return {
            "class_name": self.__class__.__name__,
            "config": {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step},
        }


SCHEDULES = {
    "ConstantSparsity": ConstantSparsity,
    "PolynomialDecay": PolynomialDecay,
    "OneShotSparsity": OneShotSparsity,
}


def final_sparsity(schedule: PruningSchedule) -> float:
    """The sparsity a schedule ends at (what an exported model is expected to have)."""
    for attr in ("target_sparsity", "final_sparsity"):
        if hasattr(schedule, attr):
            return float(getattr(schedule, attr))
    end = getattr(schedule, "end_step", -1)
    return float(schedule(tf.constant(max(end, 0) if end >= 0 else 2**40, tf.int64))[1])


def deserialize(config) -> PruningSchedule:
    """A schedule from its ``get_config()`` (tfmot's, ours, or any registered custom one)."""
    if isinstance(config, PruningSchedule):
        return config
    return keras.utils.deserialize_keras_object(config, custom_objects=SCHEDULES)

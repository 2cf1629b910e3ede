"""BatchNorm statistics that settle on short runs: a momentum chosen from the run's length, and a
re-estimation pass after one-shot pruning.

Keras MobileNets use momentum 0.999: the moving averages keep 0.999^k of their start after k steps,
i.e. 37 % after 1,000 steps. That suits ImageNet (5,000 steps an epoch) but on a small dataset the
statistics of the dense start (or of unpruned weights) never leave, and evaluation sits at chance
while training accuracy rises. Pruning papers re-estimate the statistics after pruning ("BN
recalibration", AdaBN): a pass over training batches with the weights fixed.
"""
from __future__ import annotations

import math

from onexn_tf._keras import keras, tf

MOMENTUM_FLOOR = 0.9      # PyTorch's default (its momentum=0.1): an average over ≈ 10 batches
MOMENTUM_CEILING = 0.999  # the Keras MobileNets' own, kept for ImageNet-length runs
FORGET_EPOCHS = 2         # the start's weight falls below FORGET_RESIDUAL within this many epochs
FORGET_RESIDUAL = 0.01


def run_length_momentum(steps_per_epoch: int, epochs: int) -> float:
    """The momentum whose moving averages keep ≤ 1 % of their start after two epochs (or the whole
    run, if shorter), within [0.9, 0.999]: ImageNet at batch 256 (5,005 steps) gets 0.999, a
    1,000-image folder at batch 32 gets 0.9."""
    horizon = max(1, min(FORGET_EPOCHS, epochs) * steps_per_epoch)
    momentum = math.exp(math.log(FORGET_RESIDUAL) / horizon)
    return round(min(MOMENTUM_CEILING, max(MOMENTUM_FLOOR, momentum)), 6)


def batchnorm_layers(model) -> list:
    return [layer for layer in model.submodules if isinstance(layer, keras.layers.BatchNormalization)]


def set_momentum(model, momentum: float, only_lower: bool = False) -> int:
    """Set every BatchNorm layer's momentum (with ``only_lower``, where it is above ``momentum``);
    returns how many layers there are."""
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.momentum = min(layer.momentum, float(momentum)) if only_lower else float(momentum)
    return len(layers)


def recalibrate_batchnorm(model, images, batches: int) -> int:
    """Re-estimate every BatchNorm layer's moving mean and variance as the exact average over
    ``batches`` batches of ``images`` (an iterable of input batches, or of (input, label) pairs),
    the weights unchanged. Returns the number of batches used.

    Each batch runs in training mode with momentum 0 (one traced function, so the moving statistics
    become that batch's), and the batches' statistics are averaged here, whatever the layers' own
    momentum. Pruning wrappers' step counters are restored afterwards, so a schedule does not see the
    forward passes as training steps.
    """
    layers = batchnorm_layers(model)
    if not layers or batches < 1:
        return 0
    momenta = [layer.momentum for layer in layers]
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

    steps = [(layer.pruning_step, layer.pruning_step.numpy()) for layer in pruning_wrapper.collect_prunable_layers(model)]
    sums, used = None, 0
    try:
        for layer in layers:
            layer.momentum = 0.0
        forward = tf.function(lambda x: model(x, training=True))
        for batch in images:
            if used == batches:
                break
            forward(batch[0] if isinstance(batch, (tuple, list)) else batch)
            stats = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
            sums = stats if sums is None else [(m0 + m, v0 + v) for (m0, v0), (m, v) in zip(sums, stats)]
            used += 1
        for layer, (mean_sum, var_sum) in zip(layers, sums or []):
            layer.moving_mean.assign(mean_sum / used)
            layer.moving_variance.assign(var_sum / used)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for var, value in steps:
            var.assign(value)
    return used


class RecalibrateBatchNorm(keras.callbacks.Callback):
    """Re-estimates the BatchNorm statistics once, before the first evaluation of the run's first
    epoch (after one-shot pruning, the dense model's statistics no longer fit the pruned weights)."""

    def __init__(self, images, batches: int, log=print):
        super().__init__()
        self.images, self.batches, self.log = images, int(batches), log
        self.used = None
        self._epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_test_begin(self, logs=None):
        if self._epoch == 0 and self.used is None:
            self.used = recalibrate_batchnorm(self.model, self.images, self.batches)
            if self.log:
                self.log(f"BatchNorm statistics re-estimated over {self.used} training batches "
                         f"({len(batchnorm_layers(self.model))} layers)")

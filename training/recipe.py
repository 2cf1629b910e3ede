"""The reference's optimisation recipe in Keras: its learning-rate policies and PyTorch-style SGD.

Reference (``imagenet.py``): lr policies ``cos`` (0.5·lr·(1 + cos(π·(epoch − 5)/(epochs − 5))), with
the epoch as an integer), ``step`` (× gamma at each decay epoch), ``exp`` (× 0.96 per epoch) and
``fixed``; for every policy the first ``warmup`` epochs are multiplied by a linear ramp per
iteration, (1 + step + epoch·steps_per_epoch) / (warmup·steps_per_epoch). Optimiser: torch SGD,
momentum 0.9, L2 weight decay 4e-5 added to every gradient, learning rate applied after momentum.
"""
from __future__ import annotations

import math

from onexn_tf._keras import keras, tf
from onexn_tf.errors import InvalidArgument
from onexn_tf.masks import check_choice

from training.options import LR_POLICIES  # re-exported


@keras.utils.register_keras_serializable(package="onexn_tf")
class ReferenceLR(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate at a global step, exactly as the reference's ``adjust_learning_rate``."""

    def __init__(self, base_lr: float, policy: str, epochs: int, steps_per_epoch: int, warmup_epochs: int = 5,
                 decay_epochs=(50, 100), gamma: float = 0.1, exp_decay: float = 0.96):
        check_choice(policy, LR_POLICIES, "lr policy")
        if steps_per_epoch < 1 or epochs < 1:
            raise InvalidArgument(f"epochs={epochs} and steps_per_epoch={steps_per_epoch} must be >= 1")
        self.base_lr = float(base_lr)
        self.policy = policy
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_epochs = int(warmup_epochs)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.gamma = float(gamma)
        self.exp_decay = float(exp_decay)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        epoch = tf.math.floor(step / self.steps_per_epoch)
        in_epoch = step - epoch * self.steps_per_epoch
        lr = tf.constant(self.base_lr, tf.float32)
        if self.policy == "cos":
            span = max(self.epochs - self.warmup_epochs, 1)
            lr = 0.5 * lr * (1.0 + tf.cos(math.pi * (epoch - self.warmup_epochs) / span))
        elif self.policy == "step":
            passed = tf.add_n([tf.cast(epoch >= e, tf.float32) for e in self.decay_epochs]) if self.decay_epochs \
                else tf.constant(0.0)
            lr = lr * tf.pow(self.gamma, passed)
        elif self.policy == "exp":
            lr = lr * tf.pow(self.exp_decay, epoch)
        if self.warmup_epochs > 0:
            ramp = (1.0 + in_epoch + epoch * self.steps_per_epoch) / (self.warmup_epochs * self.steps_per_epoch)
            lr = tf.where(epoch < self.warmup_epochs, lr * ramp, lr)
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "policy": self.policy, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch, "warmup_epochs": self.warmup_epochs,
                "decay_epochs": list(self.decay_epochs), "gamma": self.gamma, "exp_decay": self.exp_decay}


@keras.utils.register_keras_serializable(package="onexn_tf")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD as ``torch.optim.SGD``: g += wd·w; buf = momentum·buf + g; w -= lr·buf (nesterov optional).

    Keras' SGD scales the gradient by the learning rate before the momentum accumulates and its
    ``weight_decay`` is decoupled; with a changing learning rate both differ from the reference.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=False, l2_decay=4e-5, name="TorchSGD", **kwargs):
        super().__init__(name=name, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.l2_decay = float(l2_decay)

    def build(self, var_list):
        super().build(var_list)
        if hasattr(self, "_built") and self._built:
            return
        self._built = True
        self.momentums = [self.add_variable_from_reference(model_variable=var, variable_name="m")
                          for var in var_list]

    def update_step(self, gradient, variable):
        lr = tf.cast(self.learning_rate, variable.dtype)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        if self.l2_decay:
            gradient = gradient + self.l2_decay * variable
        buf = self.momentums[self._index_dict[self._var_key(variable)]]
        buf.assign(self.momentum * buf + gradient)
        step = gradient + self.momentum * buf if self.nesterov else buf
        variable.assign_sub(lr * step)

    def get_config(self):
        config = super().get_config()
        config.update(learning_rate=self._serialize_hyperparameter(self._learning_rate), momentum=self.momentum,
                      nesterov=self.nesterov, l2_decay=self.l2_decay)
        return config

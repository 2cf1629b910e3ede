"""Fit a 1×N-pruned model under MirroredStrategy on two logical CPUs; print a JSON verdict.

Runs in its own process: logical devices must be configured before TensorFlow initialises.
"""
import json
import sys

import numpy as np

import onexn_tf
from onexn_tf import masks
from onexn_tf._keras import keras, tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
schedule_name = sys.argv[1] if len(sys.argv) > 1 else "oneshot"

with strategy.scope():
    keras.utils.set_random_seed(0)
    base = onexn_tf.models.build("mobilenet_v1", alpha=0.25, input_shape=(32, 32, 3), classes=4,
                                 classifier_activation=None)
    schedule = (onexn_tf.PolynomialDecay(0.0, 0.5, begin_step=1, end_step=4, frequency=1)
                if schedule_name == "gradual" else None)
    model = onexn_tf.prune_1xn(base, n=4, rearrange=True, full=True,
                               **({"pruning_schedule": schedule} if schedule else {"sparsity": 0.5}))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (48, 32, 32, 3)).astype("float32")
y = rng.integers(0, 4, 48)
model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])

result = {"replicas": strategy.num_replicas_in_sync, "layers": {}}
for wrapper in onexn_tf.pruning_wrappers(model):
    mask_var = wrapper.pruning_vars[0][1]
    copies = [v.numpy() for v in getattr(mask_var, "values", [mask_var])]
    kernels = [v.numpy() for v in getattr(wrapper.layer.kernel, "values", [wrapper.layer.kernel])]
    perm = onexn_tf.permutations(model)[wrapper.layer.name]
    counts = masks.block_counts(copies[0] * kernels[0], wrapper.spec, perm)
    result["layers"][wrapper.layer.name] = {
        "step": int(wrapper.pruning_step.numpy()),
        "replicas_agree": all(np.array_equal(c, copies[0]) for c in copies)
        and all(np.array_equal(k, kernels[0]) for k in kernels),
        "zero_blocks": counts.zero_blocks, "blocks": counts.num_blocks, "mixed": counts.mixed_blocks,
        "pruned_kernel_weights_are_zero": bool(np.all(kernels[0][copies[0] == 0] == 0)),
    }
print("RESULT " + json.dumps(result))

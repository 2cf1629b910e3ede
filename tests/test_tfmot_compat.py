"""Self-test against stock tfmot: our 1×N mask on a Dense kernel equals tfmot's block_size=(1, N).

We subclass tfmot internals (pinned version); this catches a tfmot change that breaks the parity.
Only shapes with C_out % N == 0 are compared: for other widths stock tfmot scores blocks with
centred 'SAME' pooling windows (22 = 5·4 + 2 gets one pad column on each side) but expands the
mask left-aligned, so its partial blocks are not the ones it scored; ours keep blocks aligned.
"""
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

from onexn_tf import masks
from onexn_tf._keras import keras


@pytest.mark.parametrize("shape, n, p", [((16, 24), 4, 0.5), ((32, 64), 8, 0.75), ((10, 30), 2, 0.4),
                                         ((64, 32), 16, 0.25), ((8, 64), 32, 0.5)])
def test_block_l1_equals_stock_tfmot_block_mask(shape, n, p):
    rng = np.random.default_rng(sum(shape) + n)
    kernel = rng.normal(size=shape).astype(np.float32)
    layer = tfmot.sparsity.keras.prune_low_magnitude(
        keras.layers.Dense(shape[1]), block_size=(1, n), block_pooling_type="AVG",
        pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(p, begin_step=0, frequency=1))
    layer.build((None, shape[0]))
    layer.layer.kernel.assign(kernel)
    _, stock_mask = layer.pruning_obj._maybe_update_block_mask(layer.layer.kernel)
    ours = masks.compute_mask(kernel, p, n=n).mask
    # tfmot keeps round(B·(1-p)) blocks; ours prunes floor(B·p): the same count for these shapes.
    assert stock_mask.numpy().sum() == ours.sum()
    np.testing.assert_array_equal(stock_mask.numpy(), ours)

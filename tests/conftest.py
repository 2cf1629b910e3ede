"""Shared fixtures: small models, synthetic data, strict numpy checks independent of the library."""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import pytest

import onexn_tf
from onexn_tf._keras import keras

SMALL = {  # (alpha, input size): small enough to trace and fit in seconds on 2 cores
    "mobilenet_v1": (0.25, 32),
    "mobilenet_v2": (0.35, 32),
    "mobilenet_v3_small": (0.35, 32),
    "mobilenet_v3_large": (0.35, 32),
}


@functools.lru_cache(maxsize=None)
def small_model(arch: str, classes: int = 5, seed: int = 0):
    """A small MobileNet with non-degenerate outputs: it returns logits (a softmax over random weights
    is flat) and its BatchNorm layers are calibrated (random-init V3 activations fade to ~1e-8).

    Cached: tests must not modify it (prune_1xn and strip clone; they never do).
    """
    keras.utils.set_random_seed(seed)
    alpha, size = SMALL[arch]
    model = onexn_tf.models.build(arch, alpha=alpha, input_shape=(size, size, 3), classes=classes,
                                  classifier_activation=None)
    calibrate_batchnorm(model, synthetic_batch(model, 16, seed=seed + 100, arch=arch)[0], seed=seed)
    return model


def calibrate_batchnorm(model, x, seed: int = 0):
    """Random BN scale/shift, and moving statistics set to the batch statistics of ``x``."""
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for bn in bns:
        bn.gamma.assign(rng.uniform(0.5, 1.5, bn.gamma.shape).astype("float32"))
        bn.beta.assign(rng.uniform(-0.3, 0.3, bn.beta.shape).astype("float32"))
        bn._saved_momentum, bn.momentum = bn.momentum, 0.0
    model(x, training=True)  # momentum 0: moving mean/var := this batch's statistics
    for bn in bns:
        bn.momentum = bn._saved_momentum
        del bn._saved_momentum


def tiny_model(classes: int = 5, seed: int = 0):
    """Two 1×1 convs and a classifier: the quickest model that exercises conv and Dense wrappers."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 16))
    h = keras.layers.Conv2D(32, 1, name="pw1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.Conv2D(24, 1, name="pw2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    outputs = keras.layers.Dense(classes, name="fc")(h)
    return keras.Model(inputs, outputs, name="tiny")


def compile_sgd(model, lr=0.05, run_eagerly=False, **kwargs):
    """SGD with momentum; its slots are built up front so fit() traces the train step once, not twice."""
    optimizer = keras.optimizers.SGD(lr, momentum=0.9, **kwargs)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=run_eagerly)
    optimizer.build(model.trainable_variables)
    return model


def synthetic_batch(model, count: int = 16, seed: int = 0, arch: str | None = None):
    """Random inputs (pixels through ``arch``'s preprocessing when given) and labels."""
    rng = np.random.default_rng(seed)
    shape = (count,) + tuple(model.input_shape[1:])
    if arch is None:
        x = rng.uniform(-1.0, 1.0, shape).astype("float32")
    else:
        x = onexn_tf.models.preprocess_input(arch)(rng.uniform(0.0, 255.0, shape).astype("float32"))
    y = rng.integers(0, model.output_shape[-1], count)
    return x, y


def expected_pruned_blocks(num_blocks: int, p) -> int:
    """floor(B·p) in exact decimal arithmetic, as the user wrote p."""
    return math.floor(Fraction(str(p)) * num_blocks)


def block_ids(c_in: int, c_out: int, n: int) -> np.ndarray:
    """Independent statement of a 1×N block ('inside' mode): [C_in, C_out] -> block index."""
    groups = -(-c_out // n)
    return np.arange(c_in)[:, None] * groups + np.arange(c_out)[None, :] // n


def assert_exact_1xn(kernel: np.ndarray, n: int, p, perm=None):
    """Every 1×N block (formed in ``perm`` order) is all-zero or all-non-zero; floor(B·p) are zero."""
    k = kernel.reshape(-1, *kernel.shape[-2:]) if kernel.ndim == 4 else kernel[None]
    nonzero = np.abs(k).sum(axis=0) != 0  # [C_in, C_out]: a (c_in, c_out) pair is kept iff any tap is
    taps_all = (k != 0).all(axis=0) | (k == 0).all(axis=0)
    assert taps_all.all(), "a kernel has a pair (c_in, c_out) with some taps pruned and some not"
    if perm is not None:
        nonzero = nonzero[:, perm]
    c_in, c_out = nonzero.shape
    ids = block_ids(c_in, c_out, n).ravel()
    per_block = np.bincount(ids, weights=nonzero.ravel())
    sizes = np.bincount(ids)
    mixed = np.count_nonzero((per_block > 0) & (per_block < sizes))
    assert mixed == 0, f"{mixed} blocks are partly zero"
    zero = int(np.count_nonzero(per_block == 0))
    assert zero == expected_pruned_blocks(sizes.size, p), (zero, sizes.size, p)


def assert_close(actual, expected, rtol: float = 1e-5):
    """max |actual - expected| <= rtol * max |expected|, on outputs that vary across inputs.

    Relative to the output's scale, not element-wise: with oneDNN (AVX-512 hosts) a conv's
    accumulation order follows the channel order, so near-zero logits differ in their last digits by
    more than an element-wise rtol allows while the model is unchanged. The export and TVM
    verifications measure the same way (``export.verify.compare_outputs``).
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.abs(expected).max()
    assert expected.shape[0] < 2 or expected.std(axis=0).mean() > 1e-3 * scale, \
        "outputs do not vary across inputs: the comparison proves nothing"
    error = np.abs(actual - expected).max()
    assert error <= rtol * scale, f"max |difference| {error:.3g} > {rtol:g} x max |expected| {scale:.3g}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def calibrate_pruned(pruned, x, seed: int = 0):
    """Recalibrate BatchNorm of a pruned model whose masks are computed (pruning at p = 0.5 shrinks
    activations; calibrated statistics keep its logits clearly varying across inputs)."""
    for wrapper in onexn_tf.pruning_wrappers(pruned):
        wrapper.pruning_step.assign(max(1, int(wrapper.pruning_step.numpy())))  # past the one-shot step
    calibrate_batchnorm(pruned, x, seed=seed)
    return pruned


def gratings_folder(tmp_path_factory, *, train: int, val: int, name: str = "data"):
    """The demo's 4-class gratings (40 px) as a split image folder, for the training tests."""
    from training.synthetic import write_dataset

    root = tmp_path_factory.mktemp(name)
    write_dataset(root, classes=4, size=40, train=train, val=val)
    return root


def sigint_default() -> None:
    """``preexec_fn`` for a child a test stops with SIGINT: a non-interactive shell starts ``cmd &`` with
    SIGINT ignored (`make test &`, CI runners), the child inherits that, and Python then never raises
    KeyboardInterrupt in it; back to the default, the child gets its Ctrl-C as in a terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)

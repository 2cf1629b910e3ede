"""prune_1xn end to end: wrap, fit with tfmot callbacks, strip, and check kernels with numpy."""
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import onexn_tf
from onexn_tf import masks, models, rearrange
from onexn_tf._keras import keras, tf
from conftest import (assert_close, assert_exact_1xn, compile_sgd, expected_pruned_blocks, small_model,
                      synthetic_batch, tiny_model)

# Every architecture at N=4 through the compiled train step (the real path); V1/V2 at other N run
# eagerly: the same TF mask code without ~10 s of tracing each.
CASES = [(arch, 4, False) for arch in models.ARCHITECTURES] + [
    (arch, n, True) for arch in ("mobilenet_v1", "mobilenet_v2") for n in (2, 8, 16, 32)]


def kernels(model):
    return {layer.name: layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")}


@pytest.mark.parametrize("arch, n, eager", CASES)
def test_prune_fit_strip_gives_exact_1xn(arch, n, eager):
    model = small_model(arch)
    original = kernels(model)
    policy = {4: "groups", 16: "reference"}.get(n, "none")
    pruned = onexn_tf.prune_1xn(model, n=n, sparsity=0.5, rearrange=policy)
    selected = set(models.prunable_layers(model))
    orders = rearrange.policy_permutations(model, selected, policy)
    assert {w.layer.name for w in onexn_tf.pruning_wrappers(pruned)} == selected

    x, y = synthetic_batch(pruned, 12, arch=arch)
    compile_sgd(pruned, run_eagerly=eager).fit(x, y, batch_size=4, epochs=1, verbose=0,
                                               callbacks=[onexn_tf.UpdatePruningStep()])
    assert all(int(w.pruning_step.numpy()) == 3 for w in onexn_tf.pruning_wrappers(pruned))

    perms = onexn_tf.permutations(pruned)
    # One-shot: the mask was computed at step 1 from the weights before any update.
    for name, mask in onexn_tf.layer_masks(pruned).items():
        want = masks.compute_mask(original[name], 0.5, n=n, perm=orders.get(name))
        np.testing.assert_array_equal(mask, want.mask, err_msg=name)
        np.testing.assert_array_equal(perms[name], want.perm, err_msg=name)
    if policy != "none":
        assert any(not np.array_equal(p, np.arange(p.size)) for p in perms.values())

    stripped = onexn_tf.strip(pruned)
    assert not onexn_tf.pruning_wrappers(stripped)
    assert [layer.name for layer in stripped.layers] == [layer.name for layer in model.layers]
    for name, kernel in kernels(stripped).items():
        if name in selected:
            assert_exact_1xn(kernel, n, 0.5, perm=perms[name])
        else:
            assert np.count_nonzero(kernel == 0) == 0, f"unselected layer {name} has zeros"

    logits = stripped(x, training=False).numpy()
    assert logits.std(axis=0).mean() > 1e-3, "logits do not vary across inputs: the comparison proves nothing"
    assert_close(logits, pruned(x, training=False).numpy(), rtol=1e-5)


def test_clone_copies_weights_and_shares_nothing():
    model = small_model("mobilenet_v2")
    pruned = onexn_tf.prune_1xn(model, n=4, sparsity=0.5)
    for layer in model.layers:
        if layer.weights:
            clone = next(l for l in pruned.layers if getattr(l, "layer", l).name == layer.name)
            for a, b in zip(layer.get_weights(), clone.get_weights()):
                np.testing.assert_array_equal(a, b)
            assert all(va is not vb for va in layer.weights for vb in getattr(clone, "layer", clone).weights)
    x, _ = synthetic_batch(model, 4, arch="mobilenet_v2")
    assert_close(pruned(x, training=False), model(x, training=False), rtol=1e-6)


def test_full_prunes_classifier_too():
    model = small_model("mobilenet_v3_small")
    pruned = onexn_tf.prune_1xn(model, n=4, sparsity=0.5, full=True)
    names = {w.layer.name for w in onexn_tf.pruning_wrappers(pruned)}
    assert {"Conv_2", "Logits"} <= names and len(names) == 42


def test_layer_filter_by_names_and_callable():
    model = tiny_model()
    pruned = onexn_tf.prune_1xn(model, layer_filter=["pw2", "fc"])
    assert [w.layer.name for w in onexn_tf.pruning_wrappers(pruned)] == ["pw2", "fc"]
    pruned = onexn_tf.prune_1xn(model, layer_filter=lambda layer: layer.name == "pw1")
    assert [w.layer.name for w in onexn_tf.pruning_wrappers(pruned)] == ["pw1"]


def test_constant_sparsity_schedule_updates_every_frequency_steps():
    model = onexn_tf.prune_1xn(tiny_model(), n=4,
                               pruning_schedule=onexn_tf.ConstantSparsity(0.5, begin_step=0, frequency=2))
    x, y = synthetic_batch(model, 8)
    compile_sgd(model)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])
    assert all(m.min() == 1 for m in onexn_tf.layer_masks(model).values()), "step 1 is not a pruning step"
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])
    for wrapper in onexn_tf.pruning_wrappers(model):
        assert int(wrapper.pruning_step.numpy()) == 2
        assert_exact_1xn(wrapper.pruning_vars[0][1].numpy(), 4, 0.5)


def test_polynomial_decay_reaches_each_step_sparsity_with_nested_blocks():
    schedule = onexn_tf.PolynomialDecay(0.0, 0.75, begin_step=1, end_step=4, power=1, frequency=1)
    model = onexn_tf.prune_1xn(tiny_model(), n=4, pruning_schedule=schedule, rearrange="groups")
    x, y = synthetic_batch(model, 8)
    compile_sgd(model, lr=0.01)
    previous = None
    for step in range(1, 6):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])
        target = float(schedule(tf.constant(min(step, 4), tf.int64))[1])
        wrapper = onexn_tf.pruning_wrappers(model)[0]
        mask = wrapper.pruning_vars[0][1].numpy()
        perm = onexn_tf.permutations(model)["pw1"]
        counts = masks.block_counts(mask, wrapper.spec, perm)
        assert counts.mixed_blocks == 0
        assert counts.zero_blocks == masks.num_pruned(counts.num_blocks, target)
        if previous is not None:
            assert np.all(mask <= previous), "a block pruned earlier came back"
        previous = mask
    assert counts.zero_blocks == expected_pruned_blocks(counts.num_blocks, 0.75)


@pytest.mark.parametrize("optimizer", ["sgd_wd", "adam"])
def test_pruned_weights_get_no_update_that_changes_the_output(optimizer):
    model = onexn_tf.prune_1xn(tiny_model(), n=4, sparsity=0.5, rearrange="groups", full=True)
    onexn_tf.update_masks(model)
    opt = (keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-2) if optimizer == "sgd_wd"
           else keras.optimizers.Adam(0.05))
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = synthetic_batch(model, 16)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])
    with tf.GradientTape() as tape:
        loss = model.compiled_loss(tf.constant(y), model(x, training=True))
    wrappers = onexn_tf.pruning_wrappers(model)
    grads = tape.gradient(loss, [w.layer.kernel for w in wrappers])
    for wrapper, grad in zip(wrappers, grads):
        pruned = wrapper.pruning_vars[0][1].numpy() == 0
        assert np.all(grad.numpy()[pruned] == 0) and np.any(grad.numpy()[~pruned] != 0)
    masks_before = onexn_tf.layer_masks(model)
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])
    for wrapper in wrappers:
        mask = wrapper.pruning_vars[0][1].numpy()
        np.testing.assert_array_equal(mask, masks_before[wrapper.layer.name])
        assert np.all(wrapper.layer.kernel.numpy()[mask == 0] == 0)


def test_tfmot_strip_pruning_and_summaries_work_unchanged(tmp_path):
    model = onexn_tf.prune_1xn(tiny_model(), n=4, sparsity=0.5)
    x, y = synthetic_batch(model, 8)
    compile_sgd(model).fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[
        onexn_tf.UpdatePruningStep(), onexn_tf.PruningSummaries(log_dir=str(tmp_path))])
    ours = kernels(onexn_tf.strip(model))
    stock = kernels(tfmot.sparsity.keras.strip_pruning(model))
    for name in ours:
        np.testing.assert_array_equal(ours[name], stock[name])
    values = {}
    for event_file in tmp_path.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                if value.tag.endswith("mask:0/sparsity"):
                    values[value.tag] = float(tf.make_ndarray(value.tensor))
    sparsities = values
    assert len(sparsities) == 2 and all(v == pytest.approx(0.5) for v in sparsities.values()), values


def test_single_layer_and_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = onexn_tf.prune_1xn(keras.layers.Dense(16, name="d"), n=4, sparsity=0.5)
        assert isinstance(layer, onexn_tf.Prune1xN)
        model = keras.Sequential([keras.Input((12,)), layer, keras.layers.Dense(3, dtype="float32")])
        x = np.random.default_rng(0).normal(size=(8, 12)).astype("float32")
        y = np.arange(8) % 3
        compile_sgd(model).fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])
        assert layer.layer.compute_dtype == "float16" and layer(x).dtype == tf.float16
        assert layer.pruning_vars[0][1].dtype == tf.float32  # masks stay float32
        assert_exact_1xn(layer.pruning_vars[0][1].numpy(), 4, 0.5)
        assert_exact_1xn(onexn_tf.strip(model).layers[0].kernel.numpy(), 4, 0.5)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_missing_update_pruning_step_callback_is_reported():
    model = compile_sgd(onexn_tf.prune_1xn(tiny_model(), n=4, sparsity=0.5))
    x, y = synthetic_batch(model, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="UpdatePruningStep"):
        model.fit(x, y, verbose=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n=0 is not allowed: N must be a positive integer"),
    (dict(n=1.5), "n=1.5 is not allowed"),
    (dict(sparsity=1.0), r"sparsity=1.0 is not allowed: it must be a number in \[0, 1\)"),
    (dict(sparsity=-0.5), "sparsity=-0.5 is not allowed"),
    (dict(criterion="magnitude"), "criterion='magnitude' is not allowed: choose one of 'block_l1'"),
    (dict(partial="x"), "partial='x' is not allowed"),
    (dict(sparsity=0.5, pruning_schedule=onexn_tf.ConstantSparsity(0.5, 0)), "either sparsity or pruning_schedule"),
    (dict(pruning_schedule=0.5), "pruning_schedule=0.5 is not allowed: pass a tfmot PruningSchedule"),
    (dict(layer_filter=["relu1"]), "layer 'relu1' \\(ReLU\\) has nothing prunable"),
    (dict(layer_filter=["nope"]), "layer_filter names layers that are not in model 'tiny': \\['nope'\\]"),
    (dict(layer_filter=lambda layer: False), "no prunable layer selected"),
    (dict(partial="wrap", n=5, layer_filter=["pw1"]), "partial='wrap' needs C_in\\*C_out divisible by N"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        onexn_tf.prune_1xn(tiny_model(), **kwargs)


def test_bad_targets():
    with pytest.raises(ValueError, match="has nothing prunable"):
        onexn_tf.prune_1xn(keras.layers.ReLU())
    with pytest.raises(ValueError, match="DepthwiseConv2D\\) is not prunable"):
        onexn_tf.prune_1xn(small_model("mobilenet_v1"), layer_filter=["conv_dw_1"])

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed model"):
        onexn_tf.prune_1xn(Sub())
    pruned = onexn_tf.prune_1xn(tiny_model())
    with pytest.raises(ValueError, match="already pruned"):
        onexn_tf.prune_1xn(pruned)
    with pytest.raises(ValueError, match="no 1×N pruning wrappers"):
        onexn_tf.update_masks(tiny_model())

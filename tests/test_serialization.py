"""h5, Keras SavedModel, .keras and TF checkpoints round-trip masks, permutations and steps exactly."""
import numpy as np
import pytest

import onexn_tf
from onexn_tf._keras import keras, tf
from conftest import assert_close, compile_sgd, small_model, synthetic_batch, tiny_model


def pruning_state(model):
    return {w.layer.name: (w.pruning_vars[0][1].numpy(), w.permutation.numpy(), int(w.pruning_step.numpy()),
                           w.layer.kernel.numpy(), w.spec, w.pruning_schedule.get_config())
            for w in onexn_tf.pruning_wrappers(model)}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for name in a:
        mask_a, perm_a, step_a, kernel_a, spec_a, sched_a = a[name]
        mask_b, perm_b, step_b, kernel_b, spec_b, sched_b = b[name]
        np.testing.assert_array_equal(mask_a, mask_b)
        np.testing.assert_array_equal(perm_a, perm_b)
        np.testing.assert_array_equal(kernel_a, kernel_b)
        assert (step_a, spec_a, sched_a) == (step_b, spec_b, sched_b)


def fit_a_little(model, arch=None):
    x, y = synthetic_batch(model, 8, arch=arch)
    compile_sgd(model).fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])
    return model, x, y


@pytest.fixture(scope="module")
def trained():
    """A rearranged 1×4 V2 (classifier included) after a few fit steps, plus its batch."""
    return fit_a_little(onexn_tf.prune_1xn(small_model("mobilenet_v2"), n=4, sparsity=0.5, rearrange="groups",
                                           full=True), "mobilenet_v2")


@pytest.mark.parametrize("fmt", ["h5", "keras", "savedmodel"])
def test_model_file_round_trip(tmp_path, fmt):
    # The tiny model (rearranged conv + Dense wrappers): a MobileNet SavedModel alone takes a minute.
    model, x, y = fit_a_little(onexn_tf.prune_1xn(tiny_model(), n=4, sparsity=0.5, rearrange="groups", full=True))
    path = tmp_path / {"h5": "m.h5", "keras": "m.keras", "savedmodel": "m_savedmodel"}[fmt]
    model.save(path, **({"save_format": "tf"} if fmt == "savedmodel" else {}))
    loaded = keras.models.load_model(path)  # no custom_objects: the classes are registered
    assert all(type(w) is onexn_tf.Prune1xN for w in onexn_tf.pruning_wrappers(loaded))
    assert_same_state(pruning_state(model), pruning_state(loaded))
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), model(x, training=False).numpy())
    # Training resumes: the one-shot mask (step 1) is not recomputed, the step keeps counting.
    loaded.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])
    for before, after in zip(onexn_tf.pruning_wrappers(model), onexn_tf.pruning_wrappers(loaded)):
        assert int(after.pruning_step.numpy()) == int(before.pruning_step.numpy()) + 2
        np.testing.assert_array_equal(after.pruning_vars[0][1].numpy(), before.pruning_vars[0][1].numpy())


def test_checkpoint_round_trip(trained, tmp_path):
    model, x, _ = trained
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    fresh = onexn_tf.prune_1xn(small_model("mobilenet_v2"), n=4, sparsity=0.5, rearrange="groups", full=True)
    fresh(x[:1])  # build
    tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched()
    assert_same_state(pruning_state(model), pruning_state(fresh))
    np.testing.assert_array_equal(fresh(x, training=False).numpy(), model(x, training=False).numpy())


def test_save_weights_round_trip(trained, tmp_path):
    model, x, _ = trained
    model.save_weights(str(tmp_path / "w.h5"))
    fresh = onexn_tf.prune_1xn(small_model("mobilenet_v2"), n=4, sparsity=0.5, rearrange="groups", full=True)
    fresh.load_weights(str(tmp_path / "w.h5"))
    assert_same_state(pruning_state(model), pruning_state(fresh))


def test_stripped_model_saves_as_a_plain_keras_model(trained, tmp_path):
    model, x, _ = trained
    stripped = onexn_tf.strip(model)
    stripped.save(tmp_path / "s.h5")
    with keras.utils.custom_object_scope({}):
        loaded = keras.models.load_model(tmp_path / "s.h5")
    assert not onexn_tf.pruning_wrappers(loaded)
    assert_close(loaded(x, training=False).numpy(), model(x, training=False).numpy(), rtol=1e-5)

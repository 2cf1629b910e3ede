"""Channel groups, rearrangement policies, physical permutation and the permutation record."""
import json

import numpy as np
import pytest

import onexn_tf
from onexn_tf import channels, rearrange
from onexn_tf._keras import keras
from conftest import assert_close, assert_exact_1xn, calibrate_pruned, small_model, synthetic_batch, tiny_model


def kernel(model, name):
    return model.get_layer(name).kernel.numpy()


@pytest.mark.parametrize("policy", rearrange.POLICIES)
@pytest.mark.parametrize("arch", onexn_tf.models.ARCHITECTURES)
def test_permuted_model_equals_original_and_blocks_are_contiguous(arch, policy, tmp_path):
    x, _ = synthetic_batch(small_model(arch), 16, seed=3, arch=arch)
    pruned = onexn_tf.prune_1xn(small_model(arch), n=4, sparsity=0.5, rearrange=policy)
    onexn_tf.update_masks(pruned)
    calibrate_pruned(pruned, x)
    perms = onexn_tf.permutations(pruned)
    original = onexn_tf.strip(pruned)
    deployed, record = onexn_tf.deployable(pruned)

    ref = original(x, training=False).numpy()
    out = deployed(x, training=False).numpy()
    assert ref.std(axis=0).mean() > 0.05 * np.abs(ref).max(), "logits barely vary: the comparison proves nothing"
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()

    for name in perms:  # every pruned kernel: exact 1×4, kept blocks contiguous in natural order
        assert_exact_1xn(kernel(deployed, name), 4, 0.5)
    permuted = [g for g in record["groups"] if g["permuted"]]
    assert bool(permuted) == (policy != "none")
    # The record explains every kernel: new output/input channel j is original channel perm[j].
    expected = {layer.name: layer.kernel.numpy() for layer in original.layers if hasattr(layer, "kernel")}
    for group in permuted:
        for name in group["producers"]:
            expected[name] = np.take(expected[name], group["perm"], axis=-1)
        for name in group["consumers"]:
            expected[name] = np.take(expected[name], group["perm"], axis=expected[name].ndim - 2)
    for name, want in expected.items():
        np.testing.assert_array_equal(kernel(deployed, name), want, err_msg=name)

    rearrange.write_record(tmp_path / "perm.json", record)
    assert json.loads((tmp_path / "perm.json").read_text())["groups"] == json.loads(json.dumps(record["groups"]))


def test_v2_residual_stages_are_tied_groups():
    cmap = channels.analyze(small_model("mobilenet_v2"))
    tied = [g.producers for g in cmap.groups if len(g.producers) > 1]
    stages = [(1, 2), (3, 4, 5), (6, 7, 8, 9), (10, 11, 12), (13, 14, 15)]
    assert tied == [[f"block_{i}_project" for i in stage] for stage in stages]
    for name in ("expanded_conv_project", "block_16_project"):  # single-block stages: no residual add
        assert cmap.group_of(name).producers == [name] and not cmap.group_of(name).ties
    expand = cmap.group_of("block_5_expand")
    assert expand.per_channel == ["block_5_expand_BN", "block_5_depthwise", "block_5_depthwise_BN"]
    assert expand.consumers == ["block_5_project"] and not expand.is_pinned
    assert cmap.group_of("predictions").pinned == ["model output"]


def test_v3_se_excitation_conv_is_tied_to_its_expand_conv():
    cmap = channels.analyze(small_model("mobilenet_v3_large"))
    group = cmap.group_of("expanded_conv_4/expand")
    assert group.producers == ["expanded_conv_4/expand", "expanded_conv_4/squeeze_excite/Conv_1"]
    assert group.ties == ["expanded_conv_4/squeeze_excite/Mul"]
    assert {"expanded_conv_4/squeeze_excite/Conv", "expanded_conv_4/project"} <= set(group.consumers)
    assert "expanded_conv_4/expand" in cmap.leads
    assert "expanded_conv_4/squeeze_excite/Conv_1" not in cmap.leads


def _is_identity(perm):
    return np.array_equal(perm, np.arange(perm.size))


def test_reference_policy_rearranges_what_the_seed_does():
    v1 = onexn_tf.permutations(onexn_tf.prune_1xn(small_model("mobilenet_v1"), rearrange="reference"))
    assert all(not _is_identity(p) for p in v1.values()) and len(v1) == 13

    v2 = onexn_tf.permutations(onexn_tf.prune_1xn(small_model("mobilenet_v2"), rearrange=True))
    rearranged = {name for name, p in v2.items() if not _is_identity(p)}
    assert rearranged == {f"block_{i}_expand" for i in range(1, 17)} | {"Conv_1"}

    model = small_model("mobilenet_v3_small")
    v3 = onexn_tf.permutations(onexn_tf.prune_1xn(model, rearrange="reference"))
    rearranged = {name for name, p in v3.items() if not _is_identity(p)}
    expands = {name for name in v3 if name.endswith("/expand")}
    excitations_with_expand = {f"{name.split('/')[0]}/squeeze_excite/Conv_1" for name in expands} & set(v3)
    assert rearranged == expands | excitations_with_expand | {"Conv_1"}
    for name in excitations_with_expand:  # blocks in the expand conv's order (tied by the SE Multiply)
        np.testing.assert_array_equal(v3[name], v3[name.split("/")[0] + "/expand"])
    own = rearrange.filter_l1(kernel(model, "expanded_conv_4/expand"))
    np.testing.assert_array_equal(v3["expanded_conv_4/expand"], np.argsort(own, kind="stable"))


def test_groups_policy_orders_residual_streams_by_summed_filter_norms():
    model = small_model("mobilenet_v2")
    perms = onexn_tf.permutations(onexn_tf.prune_1xn(model, rearrange="groups"))
    stage = ["block_3_project", "block_4_project", "block_5_project"]
    norms = sum(rearrange.filter_l1(kernel(model, name)) for name in stage)
    for name in stage:
        np.testing.assert_array_equal(perms[name], np.argsort(norms, kind="stable"))
    assert not _is_identity(perms["block_3_project"])


def test_refuses_permutations_that_break_a_tied_group():
    stripped = small_model("mobilenet_v2")
    perm = np.arange(8)[::-1].copy()
    with pytest.raises(ValueError, match=r"a permutation of \['block_2_project'\] alone would break channel group "
                                         r"\d+ \(8 channels; producers block_1_project, block_2_project, tied by "
                                         r"block_2_add\): give the same permutation for \['block_1_project'\] too"):
        rearrange.permute_channels(stripped, {"block_2_project": perm})
    with pytest.raises(ValueError, match="have different permutations"):
        rearrange.permute_channels(stripped, {"block_1_project": perm, "block_2_project": np.arange(8)})
    with pytest.raises(ValueError, match="cannot be permuted: its channels are model output"):
        rearrange.permute_channels(stripped, {"predictions": np.arange(5)[::-1].copy()})
    with pytest.raises(ValueError, match="produce no channel group"):
        rearrange.permute_channels(stripped, {"block_1_depthwise": perm})
    with pytest.raises(ValueError, match="must be a permutation of 0..7"):
        rearrange.permute_channels(stripped, {"block_1_project": [0, 1], "block_2_project": [0, 1]})
    # The whole stream given one permutation is fine, and keeps the outputs.
    permuted, _ = rearrange.permute_channels(stripped, {"block_1_project": perm, "block_2_project": perm})
    x, _ = synthetic_batch(stripped, 4, arch="mobilenet_v2")
    assert_close(permuted(x, training=False), stripped(x, training=False), rtol=1e-4)


def test_deployable_refuses_layers_of_one_group_pruned_in_different_orders():
    inputs = keras.Input((6, 6, 8))
    a = onexn_tf.prune_1xn(keras.layers.Conv2D(8, 1, name="a"), n=2, rearrange=True)(inputs)
    b = onexn_tf.prune_1xn(keras.layers.Conv2D(8, 1, name="b"), n=2)(inputs)
    out = keras.layers.Conv2D(4, 1, name="head")(keras.layers.Add(name="add")([a, b]))
    model = keras.Model(inputs, out)
    keras.utils.set_random_seed(1)
    model.get_layer("prune_1xn_a").layer.kernel.assign(np.random.default_rng(1).normal(size=(1, 1, 8, 8)))
    onexn_tf.update_masks(model)
    with pytest.raises(ValueError, match=r"its pruned layers \['a', 'b'\] formed blocks in different orders"):
        onexn_tf.deployable(model)


def test_unknown_layers_pin_their_channels():
    inputs = keras.Input((6, 6, 16))
    h = keras.layers.Conv2D(8, 1, name="pw")(inputs)
    h = keras.layers.Lambda(lambda t: t[..., ::-1], name="reverse")(h)
    h = keras.layers.Conv2D(8, 1, name="pw2")(h)
    cmap = channels.analyze(keras.Model(inputs, h))
    assert cmap.group_of("pw").pinned == ["read by reverse (Lambda), which this analysis does not handle"]
    perms = rearrange.policy_permutations(keras.Model(inputs, h), ["pw", "pw2"], "groups")
    assert perms == {}  # pw is pinned by the Lambda, pw2 by the model output


def test_policy_argument_validation():
    assert rearrange.resolve_policy(True) == "reference" and rearrange.resolve_policy(False) == "none"
    with pytest.raises(ValueError, match="rearrange='sorted' is not allowed: choose one of 'none', 'reference', "
                                         "'groups'"):
        onexn_tf.prune_1xn(tiny_model(), rearrange="sorted")

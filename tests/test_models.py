"""Builders and the reference's per-architecture layer selection."""
import pytest

import onexn_tf
from onexn_tf import models
from onexn_tf._keras import keras
from conftest import small_model


@pytest.fixture(scope="module")
def built():
    return {arch: small_model(arch) for arch in models.ARCHITECTURES}


def test_build_passes_alpha_input_shape_classes():
    m = models.build("mobilenet_v2", alpha=0.5, input_shape=(48, 48, 3), classes=7)
    assert m.input_shape == (None, 48, 48, 3) and m.output_shape == (None, 7)
    assert m.get_layer("Conv1").filters == 16  # 32 * 0.5, rounded to a multiple of 8


def test_v1_selects_the_13_pointwise_convs(built):
    m = built["mobilenet_v1"]
    assert models.prunable_layers(m) == [f"conv_pw_{i}" for i in range(1, 14)]
    assert models.prunable_layers(m, full=True)[-1] == "conv_preds"


def test_v2_selects_expand_project_and_final_conv(built):
    names = models.prunable_layers(built["mobilenet_v2"])
    expected = ["expanded_conv_project"] + [f"block_{i}_{kind}" for i in range(1, 17)
                                            for kind in ("expand", "project")] + ["Conv_1"]
    assert names == expected
    assert models.prunable_layers(built["mobilenet_v2"], full=True) == expected + ["predictions"]


@pytest.mark.parametrize("arch, count, se_blocks", [("mobilenet_v3_small", 40, 9), ("mobilenet_v3_large", 46, 8)])
def test_v3_selects_se_convs_and_last_conv_but_head_only_with_full(built, arch, count, se_blocks):
    m = built[arch]
    names = models.prunable_layers(m)
    assert len(names) == count and names[-1] == "Conv_1"
    assert sum("squeeze_excite/Conv" in name for name in names) == 2 * se_blocks
    assert not {"Conv_2", "Logits"} & set(names)
    assert models.prunable_layers(m, full=True) == names + ["Conv_2", "Logits"]


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
def test_never_stem_nor_depthwise(built, arch):
    m = built[arch]
    chosen = {m.get_layer(name) for name in models.prunable_layers(m, full=True)}
    assert not any(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in chosen)
    stem = next(layer for layer in m.layers if isinstance(layer, keras.layers.Conv2D))
    assert stem.kernel_size == (3, 3) and stem not in chosen
    # The reference's counts (its cfg_len): 14, 35, 42, 48 layers with the classifier.
    assert len(chosen) == {"mobilenet_v1": 14, "mobilenet_v2": 35, "mobilenet_v3_small": 42,
                           "mobilenet_v3_large": 48}[arch]
    assert set(models.CLASSIFIER_LAYERS[arch]) <= {layer.name for layer in chosen}


def test_partial_block_layers_lists_c_out_not_divisible(built):
    m = built["mobilenet_v2"]  # alpha 0.35: expanded_conv_project has 8 outputs
    assert ("expanded_conv_project", 8, 8) in models.partial_block_layers(m, 16)
    assert models.partial_block_layers(m, 2, full=False) == []
    assert models.partial_block_layers(m, 2) == [("predictions", 5, 1)]  # 5 classes


@pytest.mark.parametrize("kwargs, match", [
    (dict(arch="resnet50"), "arch='resnet50' is not allowed: choose one of 'mobilenet_v1'"),
    (dict(arch="mobilenet_v1", classes=0), "classes=0 is not allowed"),
    (dict(arch="mobilenet_v1", alpha=-1.0), "alpha=-1.0 is not allowed"),
])
def test_bad_build_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.build(**kwargs)


def test_preprocess_input_maps_pixels():
    import numpy as np
    out = models.preprocess_input("mobilenet_v2")(np.array([0.0, 255.0]))
    np.testing.assert_allclose(out, [-1.0, 1.0])
    assert onexn_tf.models.preprocess_input("mobilenet_v3_small")(np.array([7.0]))[0] == 7.0  # model rescales

"""The TFLite route to Android: XNNPACK-ready architectures, and the checker that replays XNNPACK's
sparse-inference decision on a written .tflite file."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

import onexn_tf
from conftest import SMALL, calibrate_batchnorm, calibrate_pruned, synthetic_batch
from export import exporter, tflite_format, tflite_graph, xnnpack_sparse
from onexn_tf import xnnpack_ready
from onexn_tf._keras import keras

ARCHS = list(SMALL)
SIZE = 64  # at 32 px the last map is 1x1 and the converter drops the mean that ends XNNPACK's cluster


@functools.lru_cache(maxsize=None)
def small_model(arch: str):
    """conftest's small model at 64 px: logits, calibrated BatchNorm."""
    keras.utils.set_random_seed(0)
    model = onexn_tf.models.build(arch, alpha=SMALL[arch][0], input_shape=(SIZE, SIZE, 3), classes=5,
                                  classifier_activation=None)
    calibrate_batchnorm(model, synthetic_batch(model, 16, seed=100, arch=arch)[0])
    return model


@functools.lru_cache(maxsize=None)
def ready_model(arch: str):
    return xnnpack_ready.xnnpack_ready(small_model(arch))


def pruned(model, arch, p, rearrange="groups"):
    """1×4 at rate p, rearranged, BN calibrated (logits that vary), stripped and permuted."""
    wrapped = onexn_tf.prune_1xn(model, n=4, sparsity=p, rearrange=rearrange)
    onexn_tf.update_masks(wrapped)
    return calibrate_pruned(wrapped, synthetic_batch(model, 16, seed=7, arch=arch)[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_xnnpack_ready_keeps_layers_and_weights_and_pads_symmetrically(arch):
    stock, ready = small_model(arch), ready_model(arch)
    weighted = [layer.name for layer in stock.layers if layer.weights]
    assert [layer.name for layer in ready.layers if layer.weights] == weighted
    for name in weighted:
        assert all(np.array_equal(a, b) for a, b in zip(stock.get_layer(name).get_weights(),
                                                          ready.get_layer(name).get_weights()))
    assert ready.output_shape == stock.output_shape
    strided = [layer for layer in ready.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
               and tuple(layer.strides) != (1, 1)]
    assert len(strided) >= 4
    for layer in strided:
        assert layer.padding == "valid"
        pad = layer._inbound_nodes[0].inbound_layers
        k = layer.kernel_size[0] // 2
        assert isinstance(pad, keras.layers.ZeroPadding2D) and tuple(map(tuple, pad.padding)) == ((k, k), (k, k))
    # The same function applied twice changes nothing more; the outputs only shift by the padding.
    again = xnnpack_ready.xnnpack_ready(ready)
    assert len(again.layers) == len(ready.layers)
    x = synthetic_batch(stock, 4, seed=1, arch=arch)[0]
    assert ready(x).shape == stock(x).shape


@pytest.mark.parametrize("arch", ARCHS)
def test_ready_variant_takes_the_sparse_path_and_stock_or_half_pruned_do_not(arch, tmp_path):
    model = pruned(ready_model(arch), arch, 0.75)
    out = tmp_path / "ready"
    report = exporter.export(model, out, options=exporter.Options(formats=("tflite_sparse",),
                                                                  require_xnnpack_sparse=True),
                             progress=lambda *_: None)
    result = report["artifacts"]["tflite_sparse"]
    assert result["passed"] and result["outputs"]["outputs_vary"] and result["outputs"]["max_rel_error"] <= 1e-4
    verdict = result["xnnpack_sparse"]
    assert verdict["accepted"] and verdict["reasons"] == [] and verdict["sparse_hint"]
    assert verdict["zero_fraction"] > 2 / 3 and set(verdict["blocks"].values()) == {4}
    ops = verdict["ops"]
    assert all(op["sparse_path"] for op in ops if op["role"] in ("stem", "depthwise")), ops
    pruned_pointwise = [op for op in ops if op["role"] == "pointwise" and op["zero_fraction"] >= 0.74]
    assert len(pruned_pointwise) == len(onexn_tf.pruning_wrappers(model))
    assert all(op["sparse_path"] and op["block"] == 4 for op in pruned_pointwise)
    sidecar = json.loads((out / "model_sparse.tflite.json").read_text())
    assert sidecar["verification"]["xnnpack_sparse"]["accepted"]

    stock = onexn_tf.strip(pruned(small_model(arch), arch, 0.75))
    tflite_format.write(stock, tmp_path / "stock.tflite", sparse=True)
    rejected = xnnpack_sparse.check(tmp_path / "stock.tflite")
    assert not rejected.accepted
    assert "(stem) cannot run in CHW" in rejected.reasons[0] and "padding" in rejected.reasons[0], rejected.reasons

    half = onexn_tf.strip(pruned(ready_model(arch), arch, 0.5))
    tflite_format.write(half, tmp_path / "half.tflite", sparse=True)
    rejected = xnnpack_sparse.check(tmp_path / "half.tflite")
    assert not rejected.accepted and rejected.zero_fraction == pytest.approx(0.5, abs=0.03)
    assert [r for r in rejected.reasons if "XNNPACK needs more than 2/3" in r] == rejected.reasons, rejected.reasons


def test_require_xnnpack_sparse_fails_the_export_and_leaves_nothing(tmp_path):
    model = pruned(ready_model("mobilenet_v2"), "mobilenet_v2", 0.5)
    out = tmp_path / "out"
    with pytest.raises(exporter.VerificationError, match="XNNPACK sparse path: no .*more than 2/3"):
        exporter.export(model, out, options=exporter.Options(formats=("tflite_sparse",), require_xnnpack_sparse=True),
                        progress=lambda *_: None)
    assert not (out / "model_sparse.tflite").exists() and not (out / "model_sparse.tflite.json").exists()


# --- the checker on hand-built graphs: each rule broken alone gives its own reason ---------------------

def _block_sparse(kernel: np.ndarray, zero_fraction: float) -> np.ndarray:
    """A 1×1 kernel [1, 1, C_in, C_out] with whole 1×4 blocks zeroed, ``zero_fraction`` of them."""
    c_in, c_out = kernel.shape[2:]
    blocks = np.arange(c_in * (c_out // 4)).reshape(c_in, c_out // 4)
    keep = (blocks * 7919) % 100 >= zero_fraction * 100  # a spread-out, deterministic choice
    return kernel * np.repeat(keep, 4, axis=1)[None, None]


def tiny_graph(tmp_path, *, stem_padding="symmetric", stem_channels=3, dw_padding="symmetric", multiplier=1,
               dw_kernel=3, zeros=0.75, sparse=True, extra_output=False, pool_between=False, mean_end=True,
               scalar_mul=False) -> "xnnpack_sparse.Verdict":
    """stem 3×3/2 → depthwise 3×3 → 1×1 → depthwise k/2 → 1×1 → mean → dense, with one rule broken."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    inputs = keras.Input((16, 16, stem_channels))
    x = L.ZeroPadding2D(1)(inputs) if stem_padding == "symmetric" else inputs
    x = L.Conv2D(8, 3, strides=2, padding="valid" if stem_padding == "symmetric" else "same", activation="relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = L.Conv2D(16, 1, activation="relu", name="pw1")(x)
    if pool_between:
        x = L.MaxPooling2D(2)(x)
    if scalar_mul:
        x = L.Lambda(lambda t: t * 0.5)(x)
    pad = dw_kernel // 2
    x = L.ZeroPadding2D(((pad, pad), (pad, pad)) if dw_padding == "symmetric" else ((0, 1), (0, 1)))(x)
    x = L.DepthwiseConv2D(dw_kernel, strides=2, padding="valid", depth_multiplier=multiplier, activation="relu")(x)
    branch = x
    x = L.Conv2D(32, 1, activation="relu", name="pw2")(x)
    x = L.GlobalAveragePooling2D()(x) if mean_end else L.Flatten()(x)
    outputs = [L.Dense(5)(x)] + ([branch] if extra_output else [])
    model = keras.Model(inputs, outputs)
    for name in ("pw1", "pw2"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([_block_sparse(kernel, zeros), bias])
    path = tmp_path / "tiny.tflite"
    tflite_format.write(model, path, sparse=sparse)
    return xnnpack_sparse.check(path)


@pytest.mark.parametrize("broken, expected", [
    ({}, None),
    ({"stem_padding": "same"}, "(stem) cannot run in CHW: a 3x3 stride-2 convolution with TensorFlow SAME padding"),
    ({"stem_channels": 4}, "cannot run in CHW: a 3x3 stride-2 convolution over 4 channels (the stem must have 3)"),
    ({"dw_padding": "asymmetric"}, "(depthwise) cannot run in CHW: a stride-2 depthwise convolution with TensorFlow "
                                   "SAME padding"),
    ({"multiplier": 2}, "(depthwise) cannot run in CHW: depth multiplier 2 (must be 1)"),
    ({"dw_kernel": 7}, "(depthwise) cannot run in CHW: a 7x7 depthwise kernel (must be 3x3 or 5x5)"),
    ({"zeros": 0.5}, "XNNPACK needs more than 2/3"),
    ({"sparse": False}, "no DENSIFY op: the 1x1 weights are stored dense"),
    ({"extra_output": True}, "reads a value that is a model input or output"),
    ({"pool_between": True}, "MAX_POOL_2D has no CHW kernel in XNNPACK"),
    ({"mean_end": False}, "no cluster can form: no MEAN / SUM of a CHW-capable op ends the network"),
    ({"scalar_mul": True}, "MUL of tensors of rank 4 and 0 (both must be rank 4, constants included)"),
])
def test_each_broken_rule_gives_its_own_reason(broken, expected, tmp_path):
    verdict = tiny_graph(tmp_path, **broken)
    if expected is None:
        assert verdict.accepted, verdict.reasons
        assert verdict.blocks == {"pw1": 4, "pw2": 4} and 2 / 3 < verdict.zero_fraction < 0.8
        return
    assert not verdict.accepted
    assert any(expected in reason for reason in verdict.reasons), verdict.reasons
    if broken.get("sparse", True):  # the other rules hold, so no other reason is given
        assert all(expected in reason for reason in verdict.reasons), verdict.reasons


def test_sparse_tensors_decode_to_what_the_interpreter_densifies(tmp_path):
    """The checker reads TFLite sparse tensors itself (any file, no interpreter): same values as the
    interpreter's DENSIFY outputs."""
    model = onexn_tf.strip(pruned(ready_model("mobilenet_v2"), "mobilenet_v2", 0.75))
    path = tmp_path / "m.tflite"
    tflite_format.write(model, path, sparse=True)
    graph = tflite_graph.read(path)
    producers = tflite_graph.producers(graph)
    _, weights = tflite_format.check(path, synthetic_batch(model, 1, arch="mobilenet_v2")[0])
    densified = {int(key.split(":")[0]): value for key, value in weights.items()
                 if producers.get(int(key.split(":")[0])) and producers[int(key.split(":")[0])].op == "DENSIFY"}
    assert len(densified) >= 10
    for index, value in densified.items():
        source = graph.tensors[producers[index].inputs[0]]
        assert source.sparse and np.array_equal(source.value, value)


def test_block_height_follows_xnnpack_90_percent_rule():
    rng = np.random.default_rng(0)
    full4 = np.repeat(rng.uniform(0.5, 1, (4, 8)) * (rng.uniform(size=(4, 8)) > 0.5), 4, axis=0)  # 16 x 8 1x4
    assert xnnpack_sparse.block_height(full4) == 4
    a, b = rng.uniform(size=(4, 8)) > 0.5, rng.uniform(size=(4, 8))
    pairs = np.repeat(np.stack([a, ~a], axis=1).reshape(8, 8), 2, axis=0) * (b.repeat(4, axis=0) + 0.5)
    assert xnnpack_sparse.block_height(pairs) == 2  # every non-zero 4-block half full, every 2-block full
    scattered = rng.uniform(size=(16, 8)) * (rng.uniform(size=(16, 8)) > 0.7)
    assert xnnpack_sparse.block_height(scattered) == 1


def test_a_foreign_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a flatbuffer at all" * 3)
    with pytest.raises(onexn_tf.errors.InvalidArgument, match="cannot be read as a TFLite model"):
        xnnpack_sparse.check(bad)


def test_onexn_train_xnnpack_builds_the_ready_variant_and_records_it(tmp_path):
    """``onexn-train --xnnpack``: the job's model (and every reader's rebuild of it, from config.json)
    is the XNNPACK-ready variant, weights from --pretrained-model loaded unchanged."""
    from onexn_tf import jobs
    from training import train

    args = train.build_parser().parse_args(["--job-dir", str(tmp_path / "job"), "--xnnpack"])
    assert args.xnnpack is True
    source = tmp_path / "dense.keras"
    small_model("mobilenet_v2").save(source)
    settings = jobs.settings_from_config({"arch": "mobilenet_v2", "alpha": SMALL["mobilenet_v2"][0],
                                          "input_size": SIZE, "pretrained_model": str(source), "xnnpack": True})
    model = jobs.load_pretrained(settings, classes=5)
    assert isinstance(model.get_layer("Conv1_pad"), keras.layers.ZeroPadding2D)
    assert model.get_layer("Conv1").padding == "valid"
    assert np.array_equal(model.get_layer("block_16_project").get_weights()[0],
                          small_model("mobilenet_v2").get_layer("block_16_project").get_weights()[0])
    old_job = jobs.settings_from_config({"arch": "mobilenet_v2"})  # a config written before --xnnpack existed
    assert old_job.xnnpack is False

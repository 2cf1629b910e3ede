"""Per-layer pruning rates: prune_1xn with a mapping or a callable, their schedules, save/load, and
the mistakes a per-layer configuration can hold."""
import numpy as np
import pytest

import onexn_tf
from onexn_tf import masks, models
from onexn_tf._keras import keras
from onexn_tf.errors import InvalidArgument
from conftest import assert_exact_1xn, compile_sgd, small_model, synthetic_batch


def rates_for(model) -> dict:
    """A different rate for every other prunable layer (0 for one: left dense)."""
    names = models.prunable_layers(model)
    rates = {name: [0.3, 0.5, 0.7, 0.9][i % 4] for i, name in enumerate(names)}
    rates[names[1]] = 0.0
    return rates


@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2"])
def test_each_layer_is_exactly_1xn_at_its_own_rate_after_fit_and_strip(arch):
    model = small_model(arch)
    rates = rates_for(model)
    pruned = onexn_tf.prune_1xn(model, n=4, sparsity=rates, rearrange="groups")
    wrapped = {w.layer.name: w for w in onexn_tf.pruning_wrappers(pruned)}
    assert set(wrapped) == {name for name, p in rates.items() if p > 0}
    x, y = synthetic_batch(pruned, 8, arch=arch)
    compile_sgd(pruned).fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])
    perms = onexn_tf.permutations(pruned)
    stripped = onexn_tf.strip(pruned)
    for name, p in rates.items():
        kernel = stripped.get_layer(name).kernel.numpy()
        if p == 0:
            assert np.count_nonzero(kernel == 0) == 0, name
        else:
            assert_exact_1xn(kernel, 4, p, perm=perms[name])
    report = {r.layer: r for r in onexn_tf.inspect.report(pruned)}
    assert {name: r.target_sparsity for name, r in report.items()} == {n: p for n, p in rates.items() if p > 0}
    assert all(r.exact for r in report.values())


def test_a_callable_gives_rates_by_layer_and_none_skips():
    model = small_model("mobilenet_v1")

    def rate(layer):
        return None if layer.name == "conv_pw_1" else (0.75 if layer.kernel.shape[-1] >= 64 else 0.25)

    pruned = onexn_tf.prune_1xn(model, n=4, sparsity=rate)
    onexn_tf.update_masks(pruned)
    targets = {r.layer: r.target_sparsity for r in onexn_tf.inspect.report(pruned)}
    assert "conv_pw_1" not in targets and set(targets.values()) == {0.25, 0.75}
    for r in onexn_tf.inspect.report(pruned):
        assert r.exact and r.zero_blocks == masks.num_pruned(r.blocks, r.target_sparsity)


def test_per_layer_gradual_schedules_reach_each_layers_rate():
    model = small_model("mobilenet_v1")
    names = models.prunable_layers(model)[:3]
    schedules = {name: onexn_tf.PolynomialDecay(0.0, p, begin_step=1, end_step=3, frequency=1)
                 for name, p in zip(names, (0.25, 0.5, 0.75))}
    pruned = onexn_tf.prune_1xn(model, n=4, pruning_schedule=schedules)
    x, y = synthetic_batch(pruned, 16, arch="mobilenet_v1")
    compile_sgd(pruned).fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[onexn_tf.UpdatePruningStep()])
    stripped = onexn_tf.strip(pruned)
    for name, p in zip(names, (0.25, 0.5, 0.75)):
        assert_exact_1xn(stripped.get_layer(name).kernel.numpy(), 4, p, perm=onexn_tf.permutations(pruned)[name])


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_save_and_load_keep_every_layers_rate(tmp_path, fmt):
    model = small_model("mobilenet_v2")
    rates = rates_for(model)
    pruned = onexn_tf.prune_1xn(model, n=4, sparsity=rates)
    onexn_tf.update_masks(pruned)
    path = tmp_path / f"m.{fmt}"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    want = {w.layer.name: w.pruning_schedule.get_config() for w in onexn_tf.pruning_wrappers(pruned)}
    assert {w.layer.name: w.pruning_schedule.get_config() for w in onexn_tf.pruning_wrappers(loaded)} == want


@pytest.mark.parametrize("rates, message", [
    ({"conv_pw_1": 0.5, "no_such_layer": 0.5}, "sparsity names layers that are not in model"),
    ({"conv_pw_1": 1.0}, "sparsity['conv_pw_1']=1.0 is not allowed: it must be a number in [0, 1)"),
    ({"conv_pw_1": -0.1}, "sparsity['conv_pw_1']=-0.1 is not allowed"),
    ({"conv_dw_1": 0.5}, "layer 'conv_dw_1' (DepthwiseConv2D) is not prunable"),
    ({"conv_pw_1": 0.0}, "no layer of model"),
])
def test_bad_per_layer_rates_are_one_clear_error(rates, message):
    with pytest.raises(InvalidArgument) as error:
        onexn_tf.prune_1xn(small_model("mobilenet_v1"), n=4, sparsity=rates)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_mapping_and_layer_filter_together_are_refused():
    with pytest.raises(InvalidArgument, match="either as sparsity's keys or as layer_filter"):
        onexn_tf.prune_1xn(small_model("mobilenet_v1"), sparsity={"conv_pw_1": 0.5}, layer_filter=["conv_pw_2"])


def test_onexn_train_pr_config_carries_rates_to_results_and_export(tmp_path):
    """``onexn-train --pr-config``: each layer pruned at its rate, the rates in config.json and
    results.json, and the job's export verified against them (sidecar targets per layer)."""
    import json

    from export import exporter
    from training import train
    from training.synthetic import write_dataset

    data = tmp_path / "data"
    write_dataset(data, classes=4, size=32, train=32, val=16)
    model = onexn_tf.models.build("mobilenet_v1", alpha=0.25, input_shape=(32, 32, 3), classes=4)
    rates = rates_for(model)
    config = tmp_path / "rates.json"
    config.write_text(json.dumps(rates))
    job = tmp_path / "job"
    args = train.build_parser().parse_args([
        "--arch", "mobilenet_v1", "--alpha", "0.25", "--input-size", "32", "--dataset", "folder", "--data-dir",
        str(data), "--warmup-epochs", "0", "--epochs", "1", "--train-batch-size", "16", "--verbose", "0",
        "--pr-config", str(config), "--rearrange", "groups", "--job-dir", str(job)])
    results = train.run_job(args)
    assert results["layer_rates"] == rates and results["pr_target"] is None
    assert json.loads((job / "config.json").read_text())["layer_rates"] == rates
    assert {layer["layer"]: layer["target_sparsity"] for layer in results["layers"]} == \
        {name: p for name, p in rates.items() if p > 0}
    assert all(layer["exact"] for layer in results["layers"])
    report = exporter.export(job, tmp_path / "out", options=exporter.Options(formats=("onnx",)),
                             progress=lambda *_: None)
    assert report["artifacts"]["onnx"]["passed"]
    sidecar = json.loads((tmp_path / "out" / "model.onnx.json").read_text())
    assert {layer["layer"]: layer["target_sparsity"] for layer in sidecar["layers"]} == \
        {name: p for name, p in rates.items() if p > 0}
    assert all(layer["exact"] for layer in sidecar["layers"])

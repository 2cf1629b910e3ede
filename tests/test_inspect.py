"""The per-layer report: records, table and JSON, for pruned and stripped models."""
import json

import numpy as np
import pytest

import onexn_tf
from onexn_tf import inspect
from onexn_tf._keras import keras
from conftest import tiny_model


@pytest.fixture(scope="module")
def pruned():
    model = onexn_tf.prune_1xn(tiny_model(), n=4, sparsity=0.5, rearrange="groups", full=True)
    onexn_tf.update_masks(model)
    return model


def test_report_of_pruned_model(pruned):
    records = inspect.report(pruned)
    assert [r.layer for r in records] == ["pw1", "pw2", "fc"]
    pw1 = records[0]
    assert pw1.kernel_shape == [1, 1, 16, 32] and pw1.n == 4 and pw1.target_sparsity == 0.5
    assert (pw1.blocks, pw1.zero_blocks, pw1.expected_zero_blocks) == (128, 64, 64)
    assert pw1.sparsity == 0.5 and pw1.structured and pw1.exact and pw1.permuted
    fc = records[2]  # 24 -> 5 outputs: blocks {0..3}, {4}; B = 24 * 2
    assert fc.partial_channels == 1 and fc.blocks == 48 and fc.zero_blocks == 24


def test_report_of_stripped_model_needs_n_and_uses_permutations(pruned):
    stripped = onexn_tf.strip(pruned)
    with pytest.raises(ValueError, match="n is required"):
        inspect.report(stripped)
    with_perm = inspect.report(stripped, n=4, permutations=onexn_tf.permutations(pruned))
    assert all(r.structured and r.target_sparsity is None for r in with_perm)
    without = inspect.report(stripped, n=4)
    assert not all(r.structured for r in without), "rearranged blocks look scattered in natural order"


def test_report_flags_broken_blocks():
    model = tiny_model()
    kernel = model.get_layer("pw1").kernel.numpy()
    kernel[0, 0, 0, 1] = 0.0
    model.get_layer("pw1").kernel.assign(kernel)
    record = inspect.report(model, n=4, layers={"pw1"})[0]
    assert record.zero_blocks == 0 and not record.structured and not record.exact


def test_table_and_json(pruned):
    records = inspect.report(pruned)
    table = inspect.format_table(records)
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "kernel", "N", "target", "sparsity", "zero/blocks", "1xN", "perm"]
    assert lines[2].split() == ["pw1", "1x1x16x32", "4", "0.500", "0.5000", "64/128", "yes", "yes"]
    data = json.loads(inspect.to_json(records))
    assert data[0]["layer"] == "pw1" and data[0]["exact"] is True and data[0]["zero_blocks"] == 64

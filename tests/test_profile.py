"""The profile's grouping of a build's calls (android_bench.profile): pure bookkeeping on a hand-made sidecar."""
import pytest

from android_bench import profile

SIDECAR = {"kernels": [
    {"name": "k_stem", "role": "conv"},
    {"name": "k_fused", "role": "pointwise+depthwise",
     "parts": [{"name": "p1", "role": "pointwise", "kernel_ms": 0.3}, {"name": "d1", "role": "depthwise", "kernel_ms": 0.1}]},
    {"name": "k_fused_dense", "role": "pointwise+depthwise",
     "parts": [{"name": "p2", "role": "pointwise_dense", "kernel_ms": 1.0}, {"name": "d2", "role": "depthwise", "kernel_ms": 1.0}]},
    {"name": "k_pw", "role": "pointwise"},
    {"name": "k_pool", "role": "pool"},
    {"name": "k_fc", "role": "gemv_dense"},
]}


def test_role_groups_keep_fused_calls_apart():
    groups = profile.role_groups(SIDECAR)
    assert groups == {"k_stem": "stem", "k_fused": profile.FUSED, "k_fused_dense": profile.FUSED, "k_pw": "pointwise",
                      "k_pool": "rest", "k_fc": "classifier",
                      # a pair the knob search kept apart runs as its two parts
                      "p1": "pointwise", "d1": "depthwise", "p2": "pointwise", "d2": "depthwise"}


def test_parts_of_a_pair_kept_apart_count_as_themselves():
    split = profile.apportion_fused({"p1": 0.4, "d1": 0.2}, SIDECAR)
    assert split == {"pointwise": 0.4, "depthwise": 0.2}


def test_fused_calls_are_split_by_their_parts_kernel_times():
    calls = {"k_stem": 0.5, "k_fused": 2.0, "k_fused_dense": 1.0, "k_pw": 0.7, "k_pool": 0.1, "k_fc": 0.2,
             "vm.builtin.alloc_tensor": 0.05, "some_tvm_function": 0.01}
    split = profile.apportion_fused(calls, SIDECAR)
    assert split["pointwise"] == pytest.approx(0.7 + 2.0 * 0.75 + 1.0 * 0.5)
    assert split["depthwise"] == pytest.approx(2.0 * 0.25 + 1.0 * 0.5)
    assert split["stem"] == 0.5 and split["classifier"] == 0.2
    assert split["rest"] == pytest.approx(0.1 + 0.01)  # pooling and a call the sidecar does not know
    assert split[profile.VM_CALLS] == 0.05
    assert sum(split.values()) == pytest.approx(sum(calls.values()))  # nothing lost, nothing counted twice


def test_fused_call_without_part_times_stays_whole():
    sidecar = {"kernels": [{"name": "f", "role": "pointwise+depthwise", "parts": [{"name": "fp", "role": "pointwise"}, {"name": "fd", "role": "depthwise"}]}]}
    assert profile.apportion_fused({"f": 1.5}, sidecar) == {profile.FUSED: 1.5}

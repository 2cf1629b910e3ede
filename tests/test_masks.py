"""Mask math on hand-computed kernels, for every criterion, partial mode and rearrangement."""
import numpy as np
import pytest

from onexn_tf import masks
from onexn_tf._keras import tf
from conftest import expected_pruned_blocks


def dense_kernel(rows):
    """A Dense kernel [C_in, C_out] from explicit rows (one row per input channel)."""
    return np.array(rows, dtype=np.float32)


def test_block_l1_hand_computed():
    # C_in=2, C_out=4, N=2 -> blocks (row, cols 0-1), (row, cols 2-3); L1 = 3, 7 | 1, 11.
    k = dense_kernel([[1, -2, 3, 4], [0.5, -0.5, 5, 6]])
    result = masks.compute_mask(k, 0.5, n=2)
    np.testing.assert_array_equal(result.mask, [[0, 0, 1, 1], [0, 0, 1, 1]])
    assert result.threshold == pytest.approx(3.0)
    result = masks.compute_mask(k, 0.25, n=2)  # floor(4·0.25) = 1 block: the L1=1 one
    np.testing.assert_array_equal(result.mask, [[1, 1, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(result.perm, [0, 1, 2, 3])


def test_block_l1_conv_kernel_sums_all_taps():
    # 3x3 conv, C_in=1, C_out=2, N=1: filter 0 has small centre but big L1 over taps.
    k = np.zeros((3, 3, 1, 2), np.float32)
    k[:, :, 0, 0] = 1.0  # L1 = 9
    k[1, 1, 0, 1] = 5.0  # L1 = 5
    mask = masks.compute_mask(k, 0.5, n=1).mask
    assert (mask[:, :, 0, 0] == 1).all() and (mask[:, :, 0, 1] == 0).all()


def test_partial_inside_is_its_own_smaller_block():
    # C_out=5, N=2: blocks {0,1}, {2,3}, {4} per input channel -> B = 2·3 = 6, floor(6·0.5) = 3.
    k = dense_kernel([[1, 1, 9, 9, 0.8], [2, 2, 7, 7, 3]])
    result = masks.compute_mask(k, 0.5, n=2)
    # Scores (partial block scaled to a full block of its mean): row0: 2, 18, 1.6; row1: 4, 14, 6.
    np.testing.assert_array_equal(result.mask, [[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]])
    counts = masks.block_counts(result.mask, masks.MaskSpec(n=2))
    assert counts == (6, 3, 0)


def test_partial_wrap_reproduces_reference_flattening():
    # C_in=2, C_out=3, N=2 -> flattened [C_in·C_out] = 6 values in 3 blocks wrapping rows.
    k = dense_kernel([[1, 1, 5], [5, 2, 2]])  # blocks: (1,1)=2, (5,5)=10, (2,2)=4
    result = masks.compute_mask(k, 0.34, n=2, partial="wrap")  # floor(3·0.34) = 1
    np.testing.assert_array_equal(result.mask, [[0, 0, 1], [1, 1, 1]])
    result = masks.compute_mask(k, 0.67, n=2, partial="wrap")  # floor(3·0.67) = 2
    np.testing.assert_array_equal(result.mask, [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match="partial='wrap' needs C_in\\*C_out divisible by N"):
        masks.compute_mask(np.ones((3, 3), np.float32), 0.5, n=2, partial="wrap")


def test_rearrangement_sorts_filters_then_scatters_mask_back():
    # Filter L1 norms: c0=10, c1=1, c2=9, c3=2 -> ascending order [1, 3, 2, 0]; N=2 groups {1,3}, {2,0}.
    k = dense_kernel([[5, 0.5, 4.5, 1], [5, 0.5, 4.5, 1]])
    result = masks.compute_mask(k, 0.5, n=2, rearrange=True)
    np.testing.assert_array_equal(result.perm, [1, 3, 2, 0])
    np.testing.assert_array_equal(result.mask, [[1, 0, 1, 0], [1, 0, 1, 0]])
    # Without rearrangement blocks are {0,1}, {2,3}: all four score 5.5 -> ties go to the lowest block
    # indices, which are input channel 0's two blocks.
    plain = masks.compute_mask(k, 0.5, n=2)
    np.testing.assert_array_equal(plain.mask, [[0, 0, 0, 0], [1, 1, 1, 1]])


def test_given_permutation_is_used():
    k = dense_kernel([[1, 2, 3, 4]])
    result = masks.compute_mask(k, 0.5, n=2, perm=[0, 3, 1, 2])  # blocks {0,3}=5, {1,2}=5 -> tie: first
    np.testing.assert_array_equal(result.mask, [[0, 1, 1, 0]])
    with pytest.raises(ValueError, match="permutation of 0..3"):
        masks.compute_mask(k, 0.5, n=2, perm=[0, 0, 1, 2])


def test_weight_criterion_is_unstructured():
    k = dense_kernel([[0.1, -5, 0.3], [4, -0.2, 6]])
    mask = masks.compute_mask(k, 0.5, criterion="weight").mask
    np.testing.assert_array_equal(mask, [[0, 1, 0], [1, 0, 1]])


def test_filter_criterion_prunes_whole_output_filters():
    k = np.ones((1, 1, 3, 4), np.float32) * np.array([3, 1, 4, 2], np.float32)
    mask = masks.compute_mask(k, 0.5, criterion="filter").mask
    np.testing.assert_array_equal(mask[0, 0], np.tile([1, 0, 1, 0], (3, 1)))


def test_block_random_prunes_exactly_floor_bp_distinct_blocks(rng):
    k = rng.normal(size=(1, 1, 16, 24)).astype(np.float32)
    spec = masks.MaskSpec(n=4, criterion="block_random")
    for p in (0.1, 0.33, 0.5, 0.9):
        for seed in range(4):
            mask = masks.compute_mask(k, p, n=4, criterion="block_random", seed=seed).mask
            counts = masks.block_counts(mask, spec)
            assert counts.mixed_blocks == 0
            assert counts.zero_blocks == expected_pruned_blocks(96, p)
    a = masks.compute_mask(k, 0.5, n=4, criterion="block_random", seed=1).mask
    b = masks.compute_mask(k, 0.5, n=4, criterion="block_random", seed=2).mask
    assert not np.array_equal(a, b), "different seeds should choose different blocks"
    np.testing.assert_array_equal(a, masks.compute_mask(k, 0.5, n=4, criterion="block_random", seed=1).mask)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 16, 32])
@pytest.mark.parametrize("c_out", [8, 24, 30, 96])
@pytest.mark.parametrize("rearrange", [False, True])
def test_exact_block_count_and_structure(rng, n, c_out, rearrange):
    k = rng.normal(size=(1, 1, 12, c_out)).astype(np.float32)
    spec = masks.MaskSpec(n=n, rearrange=rearrange)
    groups = -(-c_out // n)
    for p in (0.0, 0.3, 0.5, 0.7, 0.9, 0.999):
        result = masks.compute_mask(k, p, n=n, rearrange=rearrange)
        counts = masks.block_counts(result.mask, spec, result.perm)
        assert counts.num_blocks == 12 * groups
        assert counts.mixed_blocks == 0
        assert counts.zero_blocks == expected_pruned_blocks(12 * groups, p)


def test_sparsity_that_float32_cannot_represent_still_gives_floor_bp():
    k = np.random.default_rng(1).normal(size=(10, 40)).astype(np.float32)  # B = 100 blocks of N=4
    for p in (0.07, 0.29, 0.7, 0.57):
        zero = masks.block_counts(masks.compute_mask(k, p, n=4).mask, masks.MaskSpec(n=4)).zero_blocks
        assert zero == expected_pruned_blocks(100, p)
        zero32 = masks.block_counts(masks.compute_mask(k, np.float32(p), n=4).mask, masks.MaskSpec(n=4)).zero_blocks
        assert zero32 == zero


def test_graph_mode_matches_eager(rng):
    k = rng.normal(size=(1, 1, 8, 20)).astype(np.float32)
    spec = masks.MaskSpec(n=4, rearrange=True)

    @tf.function
    def graph(kernel):
        return masks.compute_mask_tf(kernel, tf.constant(0.6), spec)

    mask, perm, _ = graph(tf.constant(k))
    eager = masks.compute_mask(k, 0.6, n=4, rearrange=True)
    np.testing.assert_array_equal(mask.numpy(), eager.mask)
    np.testing.assert_array_equal(perm.numpy(), eager.perm)


def test_block_counts_detects_broken_structure():
    k = np.ones((1, 1, 2, 8), np.float32)
    k[0, 0, 0, 1] = 0  # one zero inside block {0..3} of input channel 0
    counts = masks.block_counts(k, masks.MaskSpec(n=4))
    assert counts == (4, 0, 1) and not counts.structured


@pytest.mark.parametrize("bad, match", [
    (dict(n=0), "n=0 is not allowed"), (dict(n=2.5), "n=2.5 is not allowed"), (dict(n="4"), "n='4'"),
    (dict(n=True), "n=True"), (dict(criterion="l2"), "criterion='l2' is not allowed: choose one of"),
    (dict(partial="pad"), "partial='pad' is not allowed"), (dict(rearrange="yes"), "rearrange='yes'"),
])
def test_bad_spec_raises_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        masks.compute_mask(np.ones((4, 4), np.float32), 0.5, **bad)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, "half", float("nan"), None])
def test_bad_sparsity_raises_value_error(p):
    with pytest.raises(ValueError, match=r"sparsity=.* is not allowed: it must be a number in \[0, 1\)"):
        masks.compute_mask(np.ones((4, 4), np.float32), p)


def test_bad_kernel_rank():
    with pytest.raises(ValueError, match="not prunable"):
        masks.compute_mask(np.ones((2, 2, 2), np.float32), 0.5)

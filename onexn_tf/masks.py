"""Block scores and masks for 1×N pruning and its baselines: arrays in, arrays out.

Every kernel is looked at in the *canonical view* ``[C_in, C_out, T]`` (T = kh·kw taps; a Dense
kernel ``[in, out]`` has T = 1), which is the reference's ``[C_in, C_out, kh, kw]`` order. A
criterion and a partial-block mode cut that view into *blocks*; a mask keeps or zeroes whole blocks.

Masks are computed with TensorFlow ops (:func:`compute_mask_tf`) so they run inside ``model.fit``
and under ``tf.distribute``; :func:`compute_mask` is its numpy front end. The structure checks
(:func:`block_counts`) are plain numpy over an explicit block-index map (:func:`block_layout`), an
independent statement of the same block definition that the tests hold the TF code to.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import numpy as np

from onexn_tf.errors import InvalidArgument
from onexn_tf._keras import tf

from onexn_tf.options import BLOCK_CRITERIA, CRITERIA, PARTIAL_MODES, check_choice, check_n, check_sparsity  # noqa: F401 (re-exported)

# tfmot's schedules hand the sparsity over as float32, so 0.7 arrives as 0.69999999. The pruned
# block count must still be floor(B·0.7): add the float32 rounding error bound before flooring.
_FLOAT32_REL_ERROR = 2.0 ** -24


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """What one layer's mask looks like: block height N, scoring criterion, partial-block mode."""

    n: int = 4
    criterion: str = "block_l1"
    partial: str = "inside"
    rearrange: bool = False

    def __post_init__(self):
        object.__setattr__(self, "n", check_n(self.n))
        check_choice(self.criterion, CRITERIA, "criterion")
        check_choice(self.partial, PARTIAL_MODES, "partial")
        if not isinstance(self.rearrange, (bool, np.bool_)):
            raise InvalidArgument(f"rearrange={self.rearrange!r} is not allowed: use True or False")
        object.__setattr__(self, "rearrange", bool(self.rearrange))

    @property
    def permutes(self) -> bool:
        """Only block criteria use a filter order; weight and filter pruning are order-free."""
        return self.rearrange and self.criterion in BLOCK_CRITERIA


def kernel_dims(shape) -> tuple[int, int, int]:
    """(C_in, C_out, taps) of a Keras Conv2D ``[kh, kw, C_in, C_out]`` or Dense ``[in, out]`` kernel."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 4:
        return shape[2], shape[3], shape[0] * shape[1]
    raise InvalidArgument(f"kernel shape {shape} is not prunable: expected [in, out] or [kh, kw, C_in, C_out]")


def to_canonical(kernel: np.ndarray) -> np.ndarray:
    """Keras kernel -> ``[C_in, C_out, T]``."""
    kernel = np.asarray(kernel)
    c_in, c_out, taps = kernel_dims(kernel.shape)
    if kernel.ndim == 2:
        return kernel.reshape(c_in, c_out, 1)
    return np.transpose(kernel, (2, 3, 0, 1)).reshape(c_in, c_out, taps)


def from_canonical(array: np.ndarray, shape) -> np.ndarray:
    """``[C_in, C_out, T]`` -> Keras kernel of ``shape`` (inverse of :func:`to_canonical`)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        return np.asarray(array).reshape(shape)
    kh, kw, c_in, c_out = shape
    return np.transpose(np.asarray(array).reshape(c_in, c_out, kh, kw), (2, 3, 0, 1))


def _to_canonical_tf(kernel, shape):
    c_in, c_out, taps = kernel_dims(shape)
    if len(shape) == 2:
        return tf.reshape(kernel, (c_in, c_out, 1))
    return tf.reshape(tf.transpose(kernel, (2, 3, 0, 1)), (c_in, c_out, taps))


def _from_canonical_tf(array, shape):
    if len(shape) == 2:
        return tf.reshape(array, shape)
    kh, kw, c_in, c_out = shape
    return tf.transpose(tf.reshape(array, (c_in, c_out, kh, kw)), (2, 3, 0, 1))


class BlockLayout(NamedTuple):
    """Which block every weight of the canonical view belongs to."""

    ids: np.ndarray  # int32 [C_in, C_out, T]
    num_blocks: int
    sizes: np.ndarray  # weights per block, [num_blocks]


def check_wrap(c_in: int, c_out: int, n: int) -> None:
    """partial='wrap' cuts the flattened [C_in, C_out] array into runs of N: it must divide evenly."""
    if (c_in * c_out) % n:
        raise InvalidArgument(
            f"partial='wrap' needs C_in*C_out divisible by N: {c_in}*{c_out} is not divisible by n={n}; "
            "use partial='inside'")


@functools.lru_cache(maxsize=512)
def _layout(shape: tuple, n: int, criterion: str, partial: str) -> BlockLayout:
    c_in, c_out, taps = kernel_dims(shape)
    if criterion == "weight":
        ids = np.arange(c_in * c_out * taps, dtype=np.int64).reshape(c_in, c_out, taps)
    elif criterion == "filter":
        ids = np.broadcast_to(np.arange(c_out)[None, :, None], (c_in, c_out, taps))
    elif partial == "inside":
        # Blocks never cross input channels; the trailing C_out % N channels form a smaller block.
        groups = -(-c_out // n)
        ids2d = np.arange(c_in)[:, None] * groups + np.arange(c_out)[None, :] // n
        ids = np.broadcast_to(ids2d[:, :, None], (c_in, c_out, taps))
    else:
        # The reference: consecutive runs of N in the flattened [C_in, C_out] order, wrapping across
        # input channels when N does not divide C_out.
        check_wrap(c_in, c_out, n)
        ids2d = (np.arange(c_in * c_out) // n).reshape(c_in, c_out)
        ids = np.broadcast_to(ids2d[:, :, None], (c_in, c_out, taps))
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    ids.setflags(write=False)
    sizes = np.bincount(ids.ravel())
    sizes.setflags(write=False)
    return BlockLayout(ids, int(sizes.size), sizes)


def block_layout(shape, spec: MaskSpec) -> BlockLayout:
    """The block of each canonical weight for ``spec`` (cached; arrays are read-only)."""
    return _layout(tuple(int(d) for d in shape), spec.n, spec.criterion, spec.partial)


def num_pruned(num_blocks: int, sparsity: float) -> int:
    """floor(B·p), robust to ``p`` having passed through float32."""
    value = num_blocks * float(sparsity) + num_blocks * _FLOAT32_REL_ERROR
    return min(num_blocks, int(math.floor(value)))


def _num_pruned_tf(num_blocks: int, sparsity):
    s = tf.cast(sparsity, tf.float64)
    value = tf.math.floor(num_blocks * s + num_blocks * _FLOAT32_REL_ERROR)
    return tf.cast(tf.minimum(value, float(num_blocks)), tf.int32)


def filter_order_tf(kernel):
    """Output channels sorted by ascending filter L1 norm (stable): the rearrangement order."""
    shape = tuple(kernel.shape.as_list())
    norms = tf.reduce_sum(tf.abs(_to_canonical_tf(tf.cast(kernel, tf.float32), shape)), axis=(0, 2))
    return tf.cast(tf.argsort(norms, stable=True), tf.int32)


def _scores_and_expander(magnitude, spec: MaskSpec):
    """Block scores of a canonical ``|kernel|`` and a function mapping per-block keep flags back to
    ``[C_in, C_out, T]``. Reshapes, not index constants, so the training graph stays small."""
    c_in, c_out, taps = magnitude.shape.as_list()
    n = spec.n
    if spec.criterion == "weight":
        return tf.reshape(magnitude, [-1]), lambda keep: tf.reshape(keep, (c_in, c_out, taps))

    def broadcast(keep2d):
        return tf.broadcast_to(keep2d[:, :, None], (c_in, c_out, taps))

    per_channel = tf.reduce_sum(magnitude, axis=2)  # [C_in, C_out]
    if spec.criterion == "filter":
        return tf.reduce_sum(per_channel, axis=0), lambda keep: broadcast(
            tf.broadcast_to(keep[None, :], (c_in, c_out)))
    if spec.partial == "wrap":
        check_wrap(c_in, c_out, n)
        scores = tf.reduce_sum(tf.reshape(per_channel, (-1, n)), axis=1)
        return scores, lambda keep: broadcast(tf.reshape(
            tf.broadcast_to(keep[:, None], (c_in * c_out // n, n)), (c_in, c_out)))
    groups = -(-c_out // n)
    pad = groups * n - c_out
    scores = tf.reduce_sum(tf.reshape(tf.pad(per_channel, [[0, 0], [0, pad]]), (c_in, groups, n)), axis=2)
    if pad:
        # The partial block (C_out % N channels) is scored as a full block of its mean magnitude, so
        # its smaller size alone does not doom it; full blocks keep the plain L1 sum.
        scale = np.ones(groups, np.float32)
        scale[-1] = n / (n - pad)
        scores = scores * scale[None, :]
    return tf.reshape(scores, [-1]), lambda keep: broadcast(tf.reshape(
        tf.broadcast_to(tf.reshape(keep, (c_in, groups, 1)), (c_in, groups, n)), (c_in, groups * n))[:, :c_out])


def compute_mask_tf(kernel, sparsity, spec: MaskSpec, *, perm=None, seed=(0, 0)):
    """Mask of ``kernel`` at rate ``sparsity`` (TensorFlow ops; graph- and strategy-safe).

    Returns ``(mask, perm, threshold)``: the 0/1 mask in the kernel's shape and dtype, the output
    channel order the blocks were formed in (identity unless rearranged or ``perm`` is given), and
    the score of the highest-scoring pruned block (0 when nothing is pruned).
    Exactly floor(B·p) blocks are pruned; ties go to the lower block index.

    Runs as one ``tf.function`` per (shape, spec): the ~120 ops are traced once and shared by all
    layers of that shape, which keeps ``model.fit``'s first-step tracing short.
    """
    if tf.executing_eagerly():  # one-off calls (numpy front end, update_masks): no tracing per shape
        return _compute_mask_impl(tf.convert_to_tensor(kernel), sparsity, spec, tf.constant(seed, tf.int32),
                                  None if perm is None else tf.cast(perm, tf.int32))
    if perm is None:
        return _compute_mask_fn(kernel, tf.cast(sparsity, tf.float32), spec, tf.constant(seed, tf.int32))
    return _compute_mask_fn_perm(kernel, tf.cast(sparsity, tf.float32), spec, tf.constant(seed, tf.int32),
                                 tf.cast(perm, tf.int32))


def _compute_mask_impl(kernel, sparsity, spec: MaskSpec, seed, perm=None):
    shape = tuple(kernel.shape.as_list())
    c_out = kernel_dims(shape)[1]
    magnitude = tf.abs(_to_canonical_tf(tf.cast(kernel, tf.float32), shape))
    if perm is None:
        perm = filter_order_tf(kernel) if spec.permutes else tf.range(c_out, dtype=tf.int32)
    perm = tf.cast(perm, tf.int32)
    ordered = spec.criterion in BLOCK_CRITERIA
    if ordered:
        magnitude = tf.gather(magnitude, perm, axis=1)

    scores, expand = _scores_and_expander(magnitude, spec)
    num_blocks = int(scores.shape[0])
    if spec.criterion == "block_random":
        scores = tf.random.stateless_uniform([num_blocks], seed=tf.cast(seed, tf.int32))

    k = _num_pruned_tf(num_blocks, sparsity)
    order = tf.argsort(scores, stable=True)
    keep = tf.math.invert_permutation(order) >= k
    threshold = tf.where(k > 0, tf.gather(scores, order[tf.maximum(k - 1, 0)]), 0.0)

    mask_c = expand(keep)
    if ordered:
        mask_c = tf.gather(mask_c, tf.math.invert_permutation(perm), axis=1)
    mask = tf.cast(_from_canonical_tf(mask_c, shape), kernel.dtype)
    return mask, perm, threshold


_compute_mask_fn = tf.function(_compute_mask_impl, autograph=False)
_compute_mask_fn_perm = tf.function(_compute_mask_impl, autograph=False)


class MaskResult(NamedTuple):
    mask: np.ndarray
    perm: np.ndarray
    threshold: float


def compute_mask(kernel, sparsity, *, n: int = 4, criterion: str = "block_l1", partial: str = "inside",
                 rearrange: bool = False, perm=None, seed=0) -> MaskResult:
    """numpy front end of :func:`compute_mask_tf` (same code path as training uses)."""
    spec = MaskSpec(n=n, criterion=criterion, partial=partial, rearrange=rearrange)
    sparsity = check_sparsity(sparsity)
    kernel = np.asarray(kernel, dtype=np.float32)
    kernel_dims(kernel.shape)
    if perm is not None:
        perm = check_permutation(perm, kernel_dims(kernel.shape)[1])
    seed = (int(seed), 0) if np.ndim(seed) == 0 else tuple(int(s) for s in seed)
    mask, perm_out, threshold = compute_mask_tf(tf.constant(kernel), sparsity, spec, perm=perm, seed=seed)
    return MaskResult(mask.numpy(), perm_out.numpy(), float(threshold.numpy()))


def check_permutation(perm, size: int) -> np.ndarray:
    perm = np.asarray(perm)
    if perm.shape != (size,) or not np.array_equal(np.sort(perm), np.arange(size)):
        raise InvalidArgument(f"perm={perm.tolist()!r} is not allowed: it must be a permutation of 0..{size - 1}")
    return perm.astype(np.int32)


class BlockCounts(NamedTuple):
    num_blocks: int
    zero_blocks: int
    mixed_blocks: int  # blocks with both zero and non-zero weights: the 1×N structure is broken

    @property
    def structured(self) -> bool:
        return self.mixed_blocks == 0


def block_counts(kernel_or_mask, spec: MaskSpec, perm=None) -> BlockCounts:
    """Count all-zero and mixed blocks of a kernel (or mask), blocks formed in ``perm`` order."""
    array = np.asarray(kernel_or_mask)
    nonzero = to_canonical(array != 0)
    if perm is not None and spec.criterion in BLOCK_CRITERIA:
        nonzero = nonzero[:, np.asarray(perm), :]
    layout = block_layout(array.shape, spec)
    per_block = np.bincount(layout.ids.ravel(), weights=nonzero.ravel(), minlength=layout.num_blocks)
    zero = int(np.count_nonzero(per_block == 0))
    mixed = int(np.count_nonzero((per_block > 0) & (per_block < layout.sizes)))
    return BlockCounts(layout.num_blocks, zero, mixed)
